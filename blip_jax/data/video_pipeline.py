"""Evaluation inputs for zero-shot video retrieval and video QA, from the one-record-per-video
datasets of video_builders.py: each video decoded once (video.read_frames: `num_frames` frames
by the `sampling` rule, RGB, squash-resized bicubic to image_size), in record order, with grain
worker processes if asked.

Retrieval (make_video_eval_data): the whole split in memory as uint8 frames with the captions,
pre_caption-cleaned (BLIP's video retrieval: max 40 words) and tokenised [CLS]-first as
pipeline.EvalData's. Video QA (videoqa_eval_batches): vqa_pipeline.vqa_eval_batches' batches and
keys, with frames in place of the image and a late_only column. A video that does not decode is
skipped with its captions (questions), logged with a warning and named in `skipped`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from blip_jax.data.pipeline import _Tokenizing, _absl_flags_ready
from blip_jax.data.prepare import load_report
from blip_jax.data.report import DataError
from blip_jax.data.sources import RecordSource
from blip_jax.data.video import SAMPLING_RULES, VideoError, read_frames
from blip_jax.data.vqa_pipeline import VqaEvalBatches
from blip_jax.image import normalize
from blip_jax.tokenizer import BlipTokenizer, pre_caption, pre_question

log = logging.getLogger(__name__)


def _texts(values: Any) -> list[str]:
    return [v.decode() for v in values]


class VideoRecordSource(RecordSource):
    """RecordSource over video_builders' records (one per video) instead of image-caption ones."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, local = self.locate(int(index))
        rec = self._sources()[k][local]
        name, split = self.sources[k]
        path, answers = rec["video_path"].decode(), _texts(rec["answers"])
        ends = np.cumsum(rec["answer_counts"], dtype=np.int64)
        return {"video": rec["video"], "video_id": rec["video_id"].decode(), "video_path": path,
                "captions": _texts(rec["captions"]), "caption_late_only": _texts(rec["caption_late_only"]),
                "questions": _texts(rec["questions"]), "question_ids": np.asarray(rec["question_ids"], np.int64),
                "answers": [answers[a:b] for a, b in zip(ends - rec["answer_counts"], ends)],
                "question_types": _texts(rec["question_types"]), "answer_types": _texts(rec["answer_types"]),
                "question_late_only": _texts(rec["question_late_only"]),
                "where": f"{name}:{split}[{local}] ({path})", "index": self._starts[k] + local,
                "padding": self.shard_index + index * self.shard_count >= self._total}


@dataclasses.dataclass
class _DecodeVideo(grain.transforms.Map):
    """Adds "frames" (uint8 [F, S, S, 3]; zeros when not decoded) and "error" ("" or the
    VideoError's message) to a record of a video that has `need` (captions or questions)."""

    num_frames: int
    image_size: int
    sampling: str
    need: str

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in element.items() if k != "video"}
        out["frames"] = np.zeros((self.num_frames, self.image_size, self.image_size, 3), np.uint8)
        out["error"] = ""
        if element["padding"] or not element[self.need]:
            return out  # nothing would use it: not decoded
        try:
            out["frames"] = read_frames(element["video"], self.num_frames, self.image_size, self.sampling,
                                        where=element["where"])
        except VideoError as e:
            out["error"] = str(e)
        return out


def _check_options(num_frames: int, image_size: int, sampling: str) -> None:
    if sampling not in SAMPLING_RULES:
        raise ValueError(f"frame sampling {sampling!r}: use one of {SAMPLING_RULES} (config.data.frame_sampling)")
    if num_frames < 1 or image_size < 1:
        raise ValueError(f"num_frames and image_size must be >= 1, got {num_frames}, {image_size}")


def _loader(source: RecordSource, op: grain.transforms.Map, worker_count: int) -> grain.DataLoader:
    sampler = grain.samplers.IndexSampler(len(source), shuffle=False, num_epochs=1,
                                          shard_options=grain.sharding.NoSharding())
    return grain.DataLoader(data_source=source, sampler=sampler, operations=[op], worker_count=worker_count,
                            shard_options=grain.sharding.NoSharding())


# ---- retrieval ------------------------------------------------------------------------------------

@dataclasses.dataclass
class VideoEvalData:
    """A video retrieval split: every decodable video once, every caption, and the mapping between
    them (the retrieval protocol's text -> video ground truth), as pipeline.EvalData for images."""

    videos: np.ndarray              # uint8 [V, F, S, S, 3], sampled frames, bicubic-resized
    video_ids: list[str]            # the dataset's names (MSRVTT "video9770")
    texts: list[str]                # pre_caption-cleaned captions
    text_ids: np.ndarray            # int32 [T, max_tokens]: [CLS] ... [SEP], 0 padding
    text_mask: np.ndarray           # int32 [T, max_tokens]
    text_to_video: np.ndarray       # int32 [T]: index into videos
    video_to_texts: list[list[int]]
    skipped: list[tuple[str, str]]  # (video_id, reason) of videos dropped with their captions
    late_only: list[str]            # per text: "yes" / "no" (synthetic: not true of the first frame) or ""


def make_video_eval_data(data_dir: str, name: str, split: str, *, num_frames: int, image_size: int,
                         sampling: str = "uniform", max_words: int = 40, max_tokens: int = 35,
                         worker_count: int = 0) -> VideoEvalData:
    """Loads a video retrieval split into memory (uint8 frames). A video that does not decode, or
    whose captions all clean to nothing (or that has none: a QA dataset's), is dropped with its
    captions; empty captions are dropped; all are logged and listed in `skipped`."""
    _check_options(num_frames, image_size, sampling)
    _absl_flags_ready()
    source = VideoRecordSource(data_dir, [(name, split)])
    loader = _loader(source, _DecodeVideo(num_frames, image_size, sampling, "captions"), worker_count)
    videos = np.empty((len(source), num_frames, image_size, image_size, 3), np.uint8)  # filled in place
    ids: list[str] = []
    texts: list[str] = []
    late: list[str] = []
    t2v: list[int] = []
    skipped: list[tuple[str, str]] = []
    for rec in loader:  # record order, also with workers
        cleaned = [(pre_caption(c, max_words), tag) for c, tag in zip(rec["captions"], rec["caption_late_only"])]
        if not any(text for text, _ in cleaned):
            reason = f"{rec['where']}: {'every caption is empty' if cleaned else 'no caption'}"
        elif rec["error"]:
            reason = rec["error"]
        else:
            reason = ""
            skipped += [(rec["video_id"], f"{rec['where']}: empty caption") for text, _ in cleaned if not text]
        if reason:
            log.warning("video evaluation skips %s", reason)
            skipped.append((rec["video_id"], reason))
            continue
        videos[len(ids)] = rec["frames"]
        for text, tag in cleaned:
            if text:
                texts.append(text)
                late.append(tag)
                t2v.append(len(ids))
        ids.append(rec["video_id"])
    if not ids:
        raise DataError(f"{name}:{split} in {data_dir} has no decodable video with a caption "
                        f"({len(skipped)} skipped{': ' + skipped[0][1] if skipped else ''})")
    text_ids, text_mask = BlipTokenizer().encode(texts, max_tokens)
    video_to_texts: list[list[int]] = [[] for _ in ids]
    for t, v in enumerate(t2v):
        video_to_texts[v].append(t)
    return VideoEvalData(videos[:len(ids)], ids, texts, text_ids, text_mask, np.asarray(t2v, np.int32),
                         video_to_texts, skipped, late)


# ---- video QA -------------------------------------------------------------------------------------

@dataclasses.dataclass
class _VideoQaExample(_DecodeVideo, _Tokenizing):
    max_question_words: int = 50
    max_question_tokens: int = 35

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        out = super().map(element)
        out["questions"] = [pre_question(q, self.max_question_words) for q in element["questions"]]
        encoded = [self.encode(q, self.max_question_tokens) for q in out["questions"]]
        out["question_tokens"] = [ids for ids, _ in encoded]
        out["question_masks"] = [mask for _, mask in encoded]
        return out


class VideoQaEvalBatches(VqaEvalBatches):
    """VqaEvalBatches of video questions: `image` is float32 [B, F, S, S, 3] frames, `late_only` a
    str column ("yes" / "no" / ""); `skipped` lists (question_id, reason naming the video)."""

    string_columns = (*VqaEvalBatches.string_columns, "late_only")


def question_counts(data_dir: str, name: str, split: str) -> list[int]:
    """Questions per record of name:split, from its prepare report (to shard without reading videos)."""
    splits = load_report(data_dir, name)["splits"]
    if split not in splits:
        raise DataError(f"{name} in {data_dir} has no split {split!r}; it has {sorted(splits)}")
    if "question_counts" not in splits[split]:
        raise DataError(f"{name} was not written by blip_jax.data.prepare's video sources (no question_counts "
                        f"in its report): rewrite it with --overwrite")
    return splits[split]["question_counts"]


def _question_rows(loader: grain.DataLoader, counts: list[int], target: int, frames_shape: tuple[int, ...],
                   max_tokens: int) -> Iterator[dict[str, Any]]:
    """Each video record -> one row per question (sharing its normalised frames), then padding
    rows up to `target` rows, so every process yields as many batches."""
    blank = np.zeros(frames_shape, np.float32)
    n = 0
    for rec in loader:
        if rec["padding"]:
            continue
        if len(rec["questions"]) != counts[rec["index"]]:
            raise DataError(f"{rec['where']}: {len(rec['questions'])} questions, its dataset's report says "
                            f"{counts[rec['index']]}: the dataset changed after prepare; rewrite it with --overwrite")
        image = blank if rec["error"] else normalize(rec["frames"])
        for j, question in enumerate(rec["questions"]):
            yield {"image": image, "question_ids": rec["question_tokens"][j], "question_mask": rec["question_masks"][j],
                   "question": question, "question_id": int(rec["question_ids"][j]), "answers": rec["answers"][j],
                   "question_type": rec["question_types"][j], "answer_type": rec["answer_types"][j],
                   "late_only": rec["question_late_only"][j], "padding": False, "error": rec["error"]}
            n += 1
    no_tokens = np.zeros(max_tokens, np.int32)
    for _ in range(target - n):
        yield {"image": blank, "question_ids": no_tokens, "question_mask": no_tokens, "question": "",
               "question_id": -1, "answers": [], "question_type": "", "answer_type": "", "late_only": "",
               "padding": True, "error": ""}


def videoqa_eval_batches(data_dir: str, name: str, split: str, *, batch_size: int, num_frames: int,
                         image_size: int, sampling: str = "uniform", max_question_words: int = 50,
                         max_question_tokens: int = 35, shard_index: int = 0, shard_count: int = 1,
                         worker_count: int = 0) -> VideoQaEvalBatches:
    """Every question of name:split once, in record order (video by video). Process k of n takes
    the videos k, k + n, ... (each video decoded by one process only), padded with invalid rows to
    the largest shard's question count, so every process gets the same number of batches. Per
    batch: image float32 [B, F, S, S, 3] (sampled frames, bicubic resize, CLIP-normalised; zeros
    where invalid), question_ids / question_mask int32 [B, Lq], question_id int64 [B] (-1 on
    padding rows), question (str, pre_question-cleaned), answers (object: list of str), question_type /
    answer_type / late_only (str), valid bool [B] (False: padding or unreadable video)."""
    _check_options(num_frames, image_size, sampling)
    _absl_flags_ready()
    counts = question_counts(data_dir, name, split)
    if not sum(counts):
        raise DataError(f"{name}:{split} in {data_dir} has no questions (a retrieval dataset?)")
    source = VideoRecordSource(data_dir, [(name, split)], shard_index=shard_index, shard_count=shard_count,
                               drop_remainder=False)
    per_shard = [sum(counts[k::shard_count]) for k in range(shard_count)]
    op = _VideoQaExample(num_frames, image_size, sampling, "questions", max_question_words, max_question_tokens)
    rows = _question_rows(_loader(source, op, worker_count), counts, max(per_shard),
                          (num_frames, image_size, image_size, 3), max_question_tokens)
    return VideoQaEvalBatches(rows, batch_size, per_shard[shard_index])
