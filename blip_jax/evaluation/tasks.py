"""Runs a config's evaluation on a model: the link between a training config and the
evaluation protocols (retrieval, captioning). Used by the trainer's periodic evaluation and by
`python -m blip_jax.evaluate`.

- task "retrieval" / "pretrain": TR/IR R@1/5/10 on config.data.eval_source. With
  config.eval.itm_rerank the paper's protocol (ITC for all pairs, ITM re-rank of each query's
  top config.eval.k_test); without it ITC cosine alone (the cheap check during pre-training).
- task "caption": captions for every image of the split (beam search or nucleus sampling as
  config.eval says, prompt config.loss.prompt stripped) scored against all references with the
  COCO caption metrics.
- task "vqa": every question of the split answered (config.eval.vqa_inference: rank over the
  dataset's answer list, or generate), the results written in the VQA server's format, and VQA
  accuracy where the split has annotator answers (blip_jax/evaluation/vqa.py). The split is
  streamed, not loaded: `load_eval_data` returns a `StreamedSplit` naming it.
- task "nlvr": every (image pair, sentence) of the split classified; accuracy, and consistency
  where identifiers are NLVR2's (blip_jax/evaluation/nlvr.py). Streamed like vqa.
- task "video_retrieval" (zero-shot, a retrieval model): TR/VR R@1/5/10 and median rank over
  config.data.num_frames frames per video (blip_jax/evaluation/video_retrieval.py); the videos
  are decoded into memory like the image split.
- task "videoqa" (zero-shot, a VQA model): as vqa with each question's video frames' tokens
  concatenated as the image input. Streamed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from blip_jax import decoding, tokenizer as tok
from blip_jax.data import pipeline
from blip_jax.evaluation import retrieval
from blip_jax.image import normalize
from blip_jax.models.blip import Blip

TASKS = ("pretrain", "retrieval", "caption", "vqa", "nlvr", "video_retrieval", "videoqa")
STREAMED_TASKS = ("vqa", "nlvr", "videoqa")  # evaluated batch by batch from the records
EVAL_ONLY_TASKS = ("video_retrieval", "videoqa")  # zero-shot transfer: nothing to train


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
    """A VQA, NLVR2 or video QA split to stream through evaluation (read batch by batch)."""

    data_dir: str
    dataset_name: str
    split: str


def load_eval_data(config: ml_collections.ConfigDict, data_dir: str, dataset_name: str,
                   split: str) -> pipeline.EvalData | StreamedSplit | Any:
    """The split as EvalData, cut to its first config.eval.max_images images (0 = all); for
    task video_retrieval a VideoEvalData cut the same way (videos); for the streamed tasks a
    StreamedSplit (config.eval.max_images then caps the examples)."""
    if config.task in STREAMED_TASKS:
        return StreamedSplit(data_dir, dataset_name, split)
    if config.task == "video_retrieval":
        from blip_jax.data import video_pipeline  # PyAV loads only for the video tasks
        videos = video_pipeline.make_video_eval_data(
            data_dir, dataset_name, split, num_frames=config.data.num_frames,
            image_size=config.model.vision.image_size, sampling=config.data.frame_sampling,
            max_words=config.data.max_words, max_tokens=config.data.max_tokens)
        return first_videos(videos, config.eval.max_images)
    data = pipeline.make_eval_data(data_dir, dataset_name, split,
                                   image_size=config.model.vision.image_size,
                                   max_words=config.data.max_words,
                                   max_tokens=config.data.max_tokens)
    return first_images(data, config.eval.max_images)


def first_images(data: pipeline.EvalData, n: int) -> pipeline.EvalData:
    """The first n images with their texts (n <= 0 or >= all: unchanged)."""
    return _first(data, n, ("images", "image_ids", "image_paths"), "text_to_image", "image_to_texts")


def first_videos(data: Any, n: int) -> Any:
    """The first n videos of a VideoEvalData with their texts (n <= 0 or >= all: unchanged)."""
    return _first(data, n, ("videos", "video_ids"), "text_to_video", "video_to_texts",
                  per_text=("late_only",))


def _first(data: Any, n: int, items: tuple[str, ...], text_to_item: str, item_to_texts: str,
           per_text: tuple[str, ...] = ()) -> Any:
    if n <= 0 or n >= len(getattr(data, items[0])):
        return data
    keep = np.flatnonzero(getattr(data, text_to_item) < n)
    remap = {int(t): i for i, t in enumerate(keep)}
    return dataclasses.replace(
        data, **{f: getattr(data, f)[:n] for f in items},
        **{f: [getattr(data, f)[t] for t in keep] for f in per_text},
        texts=[data.texts[t] for t in keep], text_ids=data.text_ids[keep],
        text_mask=data.text_mask[keep], **{text_to_item: getattr(data, text_to_item)[keep]},
        **{item_to_texts: [[remap[t] for t in ts] for ts in getattr(data, item_to_texts)[:n]]})


def evaluate(config: ml_collections.ConfigDict, model: Blip, params: Any,
             data: pipeline.EvalData | StreamedSplit, *, mesh=None,
             output_dir: Optional[str] = None) -> dict:
    """The metrics of config.task on `data` (see the module doc). `output_dir`: where the
    caption task writes its generated captions (COCO results JSON) and the vqa task its
    answers (VQA server JSON), the nlvr task its predictions."""
    if config.task not in TASKS:
        raise ValueError(f"config.task={config.task!r}: use one of {TASKS}")
    if config.task in ("vqa", "videoqa"):
        from blip_jax.evaluation import vqa  # the VQA data stack loads only for these tasks
        return vqa.evaluate_vqa(config, model, params, data.data_dir, data.dataset_name,
                                data.split, output_dir)
    if config.task == "nlvr":
        from blip_jax.evaluation import nlvr
        return nlvr.evaluate_nlvr(config, model, params, data.data_dir, data.dataset_name,
                                  data.split, output_dir)
    if config.task == "caption":
        return evaluate_captioning(config, model, params, data, output_dir=output_dir)
    if config.task == "video_retrieval":
        from blip_jax.evaluation import video_retrieval
        return video_retrieval.evaluate_video_retrieval(
            model, params, data.videos, data.text_ids, data.text_mask, data.text_to_video,
            data.video_to_texts, k_test=config.eval.k_test, batch_size=config.eval.batch_size,
            texts_per_group=config.eval.texts_per_group, mesh=mesh,
            text_groups={"late_only": np.asarray(data.late_only) == "yes",
                         "not_late_only": np.asarray(data.late_only) == "no"})
    return evaluate_retrieval(config, model, params, data, mesh=mesh)


def evaluate_retrieval(config: ml_collections.ConfigDict, model: Blip, params: Any,
                       data: pipeline.EvalData, *, mesh=None) -> dict:
    images = normalize(data.images)
    if not config.eval.itm_rerank:
        return retrieval.zero_shot_itc_recall(model, params, images, data.text_ids,
                                              data.text_mask, data.text_to_image,
                                              data.image_to_texts, config.eval.batch_size)
    return retrieval.evaluate_retrieval(model, params, images, data.text_ids, data.text_mask,
                                        data.text_to_image, data.image_to_texts,
                                        k_test=config.eval.k_test,
                                        batch_size=config.eval.batch_size,
                                        texts_per_group=config.eval.texts_per_group, mesh=mesh)


def decode_options(config: ml_collections.ConfigDict) -> dict:
    """generate() options from config.eval: beam search unless eval.top_p > 0."""
    e = config.eval
    opts = dict(max_length=e.max_length, min_length=e.min_length,
                repetition_penalty=e.repetition_penalty)
    if e.top_p > 0:
        return dict(method="nucleus", top_p=e.top_p, **opts)
    if e.num_beams > 1:
        return dict(method="beam", num_beams=e.num_beams,
                    length_norm=e.get("length_norm", "original"), **opts)
    return dict(method="greedy", **opts)


@functools.partial(jax.jit, static_argnums=0)
def _image_tokens(model: Blip, params: Any, images: jax.Array) -> jax.Array:
    """Compiled once per model and shape (periodic evaluations reuse it)."""
    return model.apply({"params": params}, images, method=Blip.image_features)


def generate_captions(model: Blip, params: Any, images: np.ndarray, *, prompt: str,
                      batch_size: int, seed: int = 0, **options) -> list[str]:
    """Captions for uint8 images [N, S, S, 3], prompt stripped. Fixed-shape batches (the last
    one padded: one compiled program); with several processes each decodes its own slice and
    the token arrays are gathered, so every process returns all N captions."""
    tokenizer = tok.BlipTokenizer()
    prefix = decoding.prompt_ids(tokenizer, prompt)
    n = len(images)
    per_process = -(-n // jax.process_count())
    lo = min(n, jax.process_index() * per_process)
    mine = images[lo:lo + per_process]
    rows = []
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        batch = np.zeros((batch_size, *images.shape[1:]), np.uint8)
        batch[:len(chunk)] = chunk
        context = _image_tokens(model, params, jnp.asarray(normalize(batch)))
        rng = jax.random.fold_in(jax.random.key(seed), jax.process_index() * per_process + start)
        tokens = decoding.generate(model, params, context, jnp.asarray(prefix), rng=rng, **options)
        rows.append(np.asarray(tokens)[:len(chunk)])
    width = options.get("max_length", 20)
    local = np.concatenate(rows) if rows else np.zeros((0, width), np.int32)
    local = np.concatenate([local, np.zeros((per_process - len(local), width), np.int32)])
    if jax.process_count() > 1:
        local = np.asarray(multihost_utils.process_allgather(local, tiled=True))
    return decoding.strip_and_decode(tokenizer, local[:n], len(prefix))


def evaluate_captioning(config: ml_collections.ConfigDict, model: Blip, params: Any,
                        data: pipeline.EvalData, *, output_dir: Optional[str] = None) -> dict:
    from blip_jax.evaluation import captioning  # pycocoevalcap loads only for this task

    captions = generate_captions(model, params, data.images, prompt=config.loss.prompt,
                                 batch_size=config.eval.batch_size, seed=config.seed,
                                 **decode_options(config))
    ids = [int(i) for i in data.image_ids]
    predictions = dict(zip(ids, captions))
    references = {i: [data.texts[t] for t in ts] for i, ts in zip(ids, data.image_to_texts)}
    metrics = captioning.caption_metrics(predictions, references, spice=config.eval.spice)
    if output_dir and jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        captioning.write_results(os.path.join(output_dir, "captions.json"), predictions)
    return metrics


def write_json(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


__all__ = ["EVAL_ONLY_TASKS", "TASKS", "decode_options", "evaluate", "evaluate_captioning", "evaluate_retrieval",
           "first_images", "first_videos", "generate_captions", "load_eval_data", "write_json"]
