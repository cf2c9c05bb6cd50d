"""Zero-shot text-video retrieval with an image-text retrieval model, as the paper transfers it
(salesforce/BLIP eval_retrieval_video.py, configs/retrieval_msrvtt.yaml).

A video is F sampled frames, each through the ViT alone. Its ITC feature is the L2-normalised
mean over frames of the projected frame [CLS] features (`Blip.video_embed`); its input to the
image-grounded encoder is every frame's tokens concatenated (F x N tokens, no temporal
embedding: `Blip.video_features`). Scores as image retrieval: each query's top k_test by ITC
similarity re-scored by ITM match logit + similarity, -100 elsewhere.

The re-rank is where the time goes: 8 frames at 384 px are 4,616 image tokens, so projecting
them to cross-attention keys/values (2 x 4616 x 768^2 multiply-adds per layer) costs ~100x the
text side of one pair. The original recomputes them for every (video, text) pair. Here the pairs
of both directions are grouped by video: each video's distinct shortlisted texts (its own top k,
plus every text whose top k holds it; a pair in both lists is scored once) are cut into groups
of `texts_per_group`, and one group is one row of the encoder's image batch, so its keys/values
are computed once for the group's texts (the encoder's grouped cross-attention,
models/bert.py `_grouped_attention`). texts_per_group=1 is the original's per-pair cost.
The groups' batch dimension is sharded over the mesh and split over processes as the image
re-rank's pairs are.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec as P

from blip_jax import parallel
from blip_jax import tokenizer as tok
from blip_jax.evaluation import retrieval
from blip_jax.models.blip import Blip


class PairGroups(NamedTuple):
    """The distinct (video, text) pairs to re-rank, grouped by video.

    video [U] int32: each group's video; texts [U, G] int32: its texts (padding slots repeat the
    group's first text); valid [U, G] bool; pair_keys [P] int64: video * num_texts + text of every
    distinct pair, sorted; pair_slot [P] int64: where pair p sits in the flattened [U * G] groups.
    """

    video: np.ndarray
    texts: np.ndarray
    valid: np.ndarray
    pair_keys: np.ndarray
    pair_slot: np.ndarray


def group_pairs(v2t_idx: np.ndarray, t2v_idx: np.ndarray, num_videos: int, num_texts: int,
                texts_per_group: int) -> PairGroups:
    """Groups the union of both shortlists by video, texts_per_group per group (fewer when no
    video has that many). v2t_idx [V, k_t]: each video's top texts; t2v_idx [T, k_v]: each
    text's top videos."""
    if texts_per_group < 1:
        raise ValueError(f"texts_per_group must be >= 1, got {texts_per_group}")
    videos = np.concatenate([np.repeat(np.arange(num_videos), v2t_idx.shape[1]), t2v_idx.ravel()])
    texts = np.concatenate([v2t_idx.ravel(), np.repeat(np.arange(num_texts), t2v_idx.shape[1])])
    keys = np.unique(videos.astype(np.int64) * num_texts + texts)
    pv, pt = keys // num_texts, keys % num_texts
    counts = np.bincount(pv, minlength=num_videos)
    g = min(texts_per_group, int(counts.max()))  # no group wider than the most any video needs
    groups = -(-counts // g)
    first_group = np.cumsum(groups) - groups
    first_pair = np.cumsum(counts) - counts
    pos = np.arange(len(keys)) - first_pair[pv]
    unit, slot = first_group[pv] + pos // g, pos % g
    num_units = int(groups.sum())
    out_texts = np.zeros((num_units, g), np.int32)
    valid = np.zeros((num_units, g), bool)
    out_texts[unit, slot] = pt
    valid[unit, slot] = True
    out_texts = np.where(valid, out_texts, out_texts[:, :1])
    return PairGroups(np.repeat(np.arange(num_videos, dtype=np.int32), groups), out_texts, valid,
                      keys, unit.astype(np.int64) * g + slot)


def _lookup(groups: PairGroups, match: np.ndarray, videos: np.ndarray, texts: np.ndarray,
            num_texts: int) -> np.ndarray:
    """ITM match logits of the pairs (videos[i], texts[i]) (all among the grouped pairs)."""
    keys = videos.astype(np.int64) * num_texts + texts
    return match[groups.pair_slot[np.searchsorted(groups.pair_keys, keys)]]


@functools.lru_cache(maxsize=None)
def _itm_program(model: Blip, mesh: Mesh):
    rep = parallel.replicated(mesh)
    rows = lambda ndim: parallel.batch_sharding(mesh, ndim)  # noqa: E731

    def step(params, video_tokens, video_index, ids, mask):
        # [u] groups -> [u, F*N, Dv] tokens; the u * G text rows attend to their group's row.
        tokens = jax.lax.with_sharding_constraint(video_tokens[video_index], rows(3))
        return model.apply({"params": params}, ids, mask, tokens, method=Blip.itm_logits)[:, 1]

    return jax.jit(step, in_shardings=(rep, rep, rows(1), rows(2), rows(2)),
                   out_shardings=rows(1))


def _group_match(model: Blip, params, video_tokens: jax.Array, groups: PairGroups,
                 enc_ids: np.ndarray, text_mask: np.ndarray, groups_per_shard: int,
                 mesh: Mesh) -> np.ndarray:
    """ITM match logits of every group slot, float32 [U * G], identical on every process (each
    runs a contiguous share of the groups; the shares are gathered)."""
    program = _itm_program(model, mesh)
    g = groups.texts.shape[1]
    count, pid = jax.process_count(), jax.process_index()
    local = groups_per_shard * parallel.batch_shards(mesh) // count
    shares = [retrieval._process_slice(len(groups.video), p, count) for p in range(count)]
    lo, hi = shares[pid]
    steps = -(-max(b - a for a, b in shares) // local)
    spec = P(parallel.BATCH_AXES)
    results = []
    for s in range(steps):  # dispatched asynchronously; read back after the loop
        sl = slice(lo + s * local, min(hi, lo + (s + 1) * local))
        video = retrieval._padded(groups.video[sl], local)
        texts = retrieval._padded(groups.texts[sl], local).ravel()
        batch = parallel.global_batch({"video": video, "ids": enc_ids[texts],
                                       "mask": text_mask[texts]}, mesh)
        results.append(program(params, video_tokens, batch["video"], batch["ids"], batch["mask"]))
    out = [np.asarray(multihost_utils.global_array_to_host_local_array(r, mesh, spec))
           for r in results]
    mine = (np.concatenate(out) if out else np.zeros(0, np.float32))[:(hi - lo) * g]
    every = retrieval._gather_rows(mine.reshape(hi - lo, g), [b - a for a, b in shares])
    return every.reshape(-1).astype(np.float32)


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
    clock = retrieval._Clock(timings)
    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise ValueError(f"videos must be [V, F, H, W, 3], got shape {videos.shape}")
    if k_test < 1:
        raise ValueError(f"k_test must be >= 1, got {k_test}")
    mesh = mesh if mesh is not None else parallel.make_mesh({"data": -1})
    if batch_size * parallel.batch_shards(mesh) % jax.process_count():
        raise ValueError(f"batch_size {batch_size} x {parallel.batch_shards(mesh)} data shards is "
                         f"not divisible by the {jax.process_count()} processes; change batch_size")
    text_ids, text_mask = np.asarray(text_ids, np.int32), np.asarray(text_mask, np.int32)
    n_vid, n_txt = len(videos), len(text_ids)
    if n_vid == 0 or n_txt == 0 or len(text_mask) != n_txt:
        raise ValueError(f"need videos and texts: got {n_vid} videos, {n_txt} text_ids and "
                         f"{len(text_mask)} text_mask rows")
    params = retrieval.replicate_params(params, mesh)
    feats = features or retrieval.visual_text_features(model, params, videos, text_ids, text_mask,
                                                       batch_size, mesh)
    clock("itc_features")
    k_txt, k_vid = min(k_test, n_txt), min(k_test, n_vid)
    sim_v2t, idx_v2t = retrieval._shortlist(feats.image_embeds, feats.text_embeds, k_txt)
    sim_t2v, idx_t2v = retrieval._shortlist(feats.text_embeds, feats.image_embeds, k_vid)
    clock("similarity")

    enc_ids = text_ids.copy()
    enc_ids[:, 0] = tok.ENC_ID  # the image-grounded encoder starts with [ENC]
    groups = group_pairs(idx_v2t, idx_t2v, n_vid, n_txt, texts_per_group)
    group_size = groups.texts.shape[1]
    per_shard = max(1, batch_size // group_size)
    local = per_shard * parallel.batch_shards(mesh)
    if local % jax.process_count():
        raise ValueError(f"{per_shard} groups x {parallel.batch_shards(mesh)} data shards is not "
                         f"divisible by the {jax.process_count()} processes; change batch_size or "
                         f"texts_per_group")
    match = _group_match(model, params, feats.image_tokens, groups, enc_ids, text_mask,
                         per_shard, mesh)
    clock("itm_rerank")
    v2t_match = _lookup(groups, match, np.repeat(np.arange(n_vid), k_txt), idx_v2t.ravel(), n_txt)
    t2v_match = _lookup(groups, match, idx_t2v.ravel(), np.repeat(np.arange(n_txt), k_vid), n_txt)
    scores_v2t = retrieval.combine_scores(n_txt, idx_v2t, sim_v2t, v2t_match.reshape(n_vid, k_txt))
    scores_t2v = retrieval.combine_scores(n_vid, idx_t2v, sim_t2v, t2v_match.reshape(n_txt, k_vid))
    clock("gather")
    return scores_v2t, scores_t2v


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


__all__ = ["PairGroups", "evaluate_video_retrieval", "group_pairs", "video_retrieval_metrics",
           "video_retrieval_scores"]
