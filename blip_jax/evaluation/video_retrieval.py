"""Zero-shot text-video retrieval with an image-text retrieval model, as the paper transfers it
(salesforce/BLIP eval_retrieval_video.py, configs/retrieval_msrvtt.yaml).

A video is F sampled frames, each through the ViT alone. Its ITC feature is the L2-normalised
mean over frames of the projected frame [CLS] features (`Blip.video_embed`); its input to the
image-grounded encoder is every frame's tokens concatenated (F x N tokens, no temporal
embedding: `Blip.video_features`). Scores as image retrieval: each query's top k_test by ITC
similarity re-scored by ITM match logit + similarity, -100 elsewhere.

The re-rank groups each video's shortlisted texts so that its cross-attention keys/values (8
frames at 384 px: 4,616 tokens, ~100x the text side of a pair) are computed once per group
(`retrieval.retrieval_scores`, `config.eval.texts_per_group`; 1 = per pair as the original).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from jax.sharding import Mesh

from blip_jax.evaluation import retrieval
from blip_jax.models.blip import Blip


def video_retrieval_scores(model: Blip, params, videos: np.ndarray, text_ids: np.ndarray,
                           text_mask: np.ndarray, *, k_test: int, batch_size: int = 32,
                           texts_per_group: int = 16, mesh: Optional[Mesh] = None,
                           timings: Optional[dict[str, float]] = None,
                           features: Optional[retrieval.Features] = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """BLIP's two-stage scores for videos.

    videos: [V, F, H, W, 3] uint8 pixels (normalised chunk by chunk) or normalised float32;
    text_ids/text_mask: int [T, L], [CLS]-first (the ITM pass swaps in [ENC]). k_test: candidates
    re-ranked per query (MSRVTT 128), capped at the candidates. batch_size: videos or texts per
    data shard per feature step, and ITM (video, text) rows per data shard per re-rank step
    (batch_size // texts_per_group groups, at least one). texts_per_group: texts sharing one
    video's cross-attention keys/values (1: recomputed per pair, as the original).
    mesh: default one `data` axis over all devices; every process passes the same inputs.

    Returns (scores_v2t [V, T], scores_t2v [T, V]) float32, identical on every process.
    Device memory: every device holds all video tokens (V x F*N x vision width).
    timings: if given, receives wall seconds of itc_features, similarity, itm_rerank, gather.
    features: `retrieval.visual_text_features` of these inputs on this mesh, computed earlier
    (a benchmark comparing re-rank settings computes them once); None computes them.
    """
    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise ValueError(f"videos must be [V, F, H, W, 3], got shape {videos.shape}")
    return retrieval.retrieval_scores(model, params, videos, text_ids, text_mask, k_test=k_test,
                                      batch_size=batch_size, texts_per_group=texts_per_group,
                                      mesh=mesh, timings=timings, features=features)


def video_retrieval_metrics(scores_v2t: np.ndarray, scores_t2v: np.ndarray,
                            text_to_video: np.ndarray,
                            video_to_texts: Sequence[Sequence[int]]) -> dict[str, float]:
    """The original's itm_eval keys: txt_r1/5/10 and txt_r_mean (video queries), vid_r1/5/10,
    vid_r_mean and vid_mdR (text queries; median 1-based rank), r_mean; plus txt_mdR. Ranks as
    `retrieval.retrieval_ranks` (ties count against the model)."""
    v_rank, t_rank = retrieval.retrieval_ranks(scores_v2t, scores_t2v, text_to_video,
                                               video_to_texts)
    image_keys = retrieval.retrieval_metrics(scores_v2t, scores_t2v, text_to_video, video_to_texts)
    out = {k.replace("img_", "vid_"): v for k, v in image_keys.items()}
    out["vid_mdR"] = float(np.median(t_rank + 1))
    out["txt_mdR"] = float(np.median(v_rank + 1))
    return out


def evaluate_video_retrieval(model: Blip, params, videos: np.ndarray, text_ids: np.ndarray,
                             text_mask: np.ndarray, text_to_video: np.ndarray,
                             video_to_texts: Sequence[Sequence[int]], *, k_test: int,
                             batch_size: int = 32, texts_per_group: int = 16,
                             mesh: Optional[Mesh] = None,
                             text_groups: Optional[dict[str, np.ndarray]] = None
                             ) -> dict[str, float]:
    """`video_retrieval_scores` then `video_retrieval_metrics`; for each non-empty entry of
    text_groups (name -> bool [T]) also the text-query recall of those texts alone, keyed
    "vid_r1/NAME" etc., with "num_texts/NAME"."""
    scores = video_retrieval_scores(model, params, videos, text_ids, text_mask, k_test=k_test,
                                    batch_size=batch_size, texts_per_group=texts_per_group,
                                    mesh=mesh)
    out = video_retrieval_metrics(*scores, text_to_video, video_to_texts)
    _, t_rank = retrieval.retrieval_ranks(*scores, text_to_video, video_to_texts)
    for name, queries in (text_groups or {}).items():
        rank = t_rank[np.asarray(queries, bool)]
        if len(rank):
            out.update({f"vid_r{k}/{name}": 100.0 * float(np.mean(rank < k)) for k in (1, 5, 10)})
            out[f"vid_mdR/{name}"] = float(np.median(rank + 1))
            out[f"num_texts/{name}"] = len(rank)
    return out


__all__ = ["evaluate_video_retrieval", "video_retrieval_metrics", "video_retrieval_scores"]
