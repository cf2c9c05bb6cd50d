"""VQA batches on the grain pipeline of pipeline.py: the same global-batch sampler, skip
accounting and checkpointable iterator; datasets as written by vqa_builders (one record per
question).

Train batch (numpy), B = global_batch_size // shard_count, A = max_answers, La = max_answer_tokens:
  image            float32 [B, H, W, 3]  RandomResizedCrop (bicubic), flip, RandAugment, CLIP-normalised
  question_ids     int32   [B, Lq]       BlipTokenizer(pre_question(question)): [CLS] ... [SEP], 0 padding;
  question_mask    int32   [B, Lq]       the model step puts [ENC] in place of [CLS]
  answer_ids       int32   [B, A, La]    each unique answer as [CLS] answer [SEP] (the step puts [DEC]
  answer_mask      int32   [B, A, La]    in place of [CLS]); unused answer slots are all 0
  answer_weight    float32 [B, A]        0 for unused slots
Weights as the original (data/vqa_dataset.py): a VQA answer weighs its count / number of
annotator answers (they sum to 1); a VG answer weighs vg_answer_weight (0.2). Answers equal up to
case are merged (summed): the tokenizer lower-cases, so this is the original's loss exactly, in
fewer slots. Answers are sorted by weight (stable); beyond A the lightest are dropped, and an
answer over La tokens is cut to La keeping [SEP] last: both are logged the first times and
counted on the iterator (answers_dropped: questions that lost answers; answers_truncated).

Flip: "plain" (default, the original) mirrors the image only; "swap" also swaps left/right in
the question and its answers, so relation questions stay true (the synthetic data needs it);
"none" never mirrors. A training question without answers, an empty question or an undecodable
image is skipped before batching and counted in the iterator's `skipped`.

Evaluation (vqa_eval_batches): every question once, in record order, fixed-shape batches (the
last one and this process's shard padded, valid=False); an undecodable image gives valid=False,
a warning, and an entry in the iterator's `skipped`, so evaluation can say what went unanswered.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from blip_jax.data import transforms
from blip_jax.data.decode import decode_rgb
from blip_jax.data.pipeline import (TrainIterator, TrainLoader, _LOG_FIRST, _Tokenizing,
                                    _absl_flags_ready, check_train_options, shuffled_batches, train_image)
from blip_jax.data.sources import RecordSource, Source, normalize_sources
from blip_jax.image import ImageError, normalize
from blip_jax.tokenizer import SEP_ID, BlipTokenizer, pre_question  # pre_question: re-exported

log = logging.getLogger(__name__)


def answer_weights(answers: Sequence[str], dataset: str, vg_weight: float = 0.2) -> list[tuple[str, float]]:
    """(answer, weight) per unique answer, first seen first: VQA count / len(answers), VG vg_weight."""
    if dataset == "vg":
        return [(a, vg_weight) for a in dict.fromkeys(answers)]
    return [(a, n / len(answers)) for a, n in collections.Counter(answers).items()]  # first seen first


class VqaRecordSource(RecordSource):
    """RecordSource over VQA records (vqa_builders' features) instead of image-caption ones."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, local = self.locate(int(index))
        rec = self._sources()[k][local]
        name, split = self.sources[k]
        path, qid = rec["image_path"].decode(), int(rec["question_id"])
        return {"image": rec["image"], "image_id": int(rec["image_id"]) + self._id_offsets[k], "image_path": path,
                "question": rec["question"].decode(), "question_id": qid,
                "answers": [a.decode() for a in rec["answers"]], "dataset": rec["dataset"].decode(),
                "question_type": rec["question_type"].decode(), "answer_type": rec["answer_type"].decode(),
                "where": f"{name}:{split}[{local}] ({path}, question {qid})", "index": self._starts[k] + local,
                "padding": self.shard_index + index * self.shard_count >= self._total}


@dataclasses.dataclass
class _VqaTrainExample(grain.transforms.RandomMap, _Tokenizing):
    image_size: int
    max_question_words: int
    max_question_tokens: int
    max_answers: int
    max_answer_tokens: int
    vg_answer_weight: float
    scale: tuple[float, float]
    randaug: bool
    randaug_ops: tuple[str, ...]
    flip: str
    _logged: int = 0  # per process: warnings about dropped or cut answers

    def _warn(self, msg: str, *args: Any) -> None:
        self._logged += 1
        if self._logged <= _LOG_FIRST or self._logged % 1000 == 0:
            log.warning(msg + " (%d such warnings in this process)", *args, self._logged)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        where = element["where"]
        merged: dict[str, float] = {}  # equal up to case: the same tokens, so one slot
        for a, w in answer_weights(element["answers"], element["dataset"], self.vg_answer_weight):
            merged[a.lower()] = merged.get(a.lower(), 0.0) + w
        question = pre_question(element["question"], self.max_question_words)
        if not merged or not question:
            return {"_skip": f"{where}: {'training question without answers' if question else 'empty question'}"}
        try:
            image, flipped = train_image(element["image"], where, self.image_size, self.scale, self.flip,
                                         self.randaug, self.randaug_ops, rng)
        except ImageError as e:
            return {"_skip": str(e)}
        if flipped and self.flip == "swap":
            question = transforms.swap_left_right(question)
            merged = {transforms.swap_left_right(a): w for a, w in merged.items()}
        answers = sorted(merged.items(), key=lambda aw: -aw[1])  # stable: ties keep first seen
        dropped = len(answers) > self.max_answers
        if dropped:
            self._warn("%s: %d unique answers, keeping the %d heaviest", where, len(answers), self.max_answers)
            answers = answers[:self.max_answers]
        q_ids, q_mask = self.encode(question, self.max_question_tokens)
        a_ids, a_mask, truncated = self._encode_answers([a for a, _ in answers], where)
        weight = np.zeros(self.max_answers, np.float32)
        weight[:len(answers)] = [w for _, w in answers]
        return {"image": image, "question_ids": q_ids, "question_mask": q_mask,
                "answer_ids": a_ids, "answer_mask": a_mask, "answer_weight": weight,
                "_answers_dropped": np.int32(dropped), "_answers_truncated": np.int32(truncated)}

    def _encode_answers(self, answers: list[str], where: str) -> tuple[np.ndarray, np.ndarray, int]:
        """int32 [A, La] ids and mask ([CLS] answer [SEP], over-long answers cut keeping [SEP]),
        and how many answers were cut."""
        if self._tok is None:  # built in each worker process
            self._tok = BlipTokenizer()
        la = self.max_answer_tokens
        ids = np.zeros((self.max_answers, la), np.int32)
        mask = np.zeros_like(ids)
        full, full_mask = self._tok.encode(answers, la + 1)  # one spare column: fills only when too long
        long = full_mask[:, la] == 1
        for i in np.flatnonzero(long):
            self._warn("%s: answer %r is longer than %d tokens, cut", where, answers[i], la)
            full[i, la - 1] = SEP_ID
        ids[:len(answers)], mask[:len(answers)] = full[:, :la], full_mask[:, :la]
        return ids, mask, int(long.sum())


class VqaTrainIterator(TrainIterator):
    """TrainIterator that also counts answers dropped (questions over max_answers) and cut."""

    def __init__(self, it: grain.DataLoaderIterator, describe: str) -> None:
        super().__init__(it, describe)
        self.answers_dropped = self.answers_truncated = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = super().__next__()
        self.answers_dropped += int(batch.pop("_answers_dropped").sum())
        self.answers_truncated += int(batch.pop("_answers_truncated").sum())
        return batch


class VqaTrainLoader(TrainLoader):
    def __iter__(self) -> VqaTrainIterator:
        return VqaTrainIterator(iter(self.loader), repr(self.source))


def make_vqa_train_loader(data_dir: str, sources: Sequence[Source], *, global_batch_size: int, image_size: int,
                          max_question_words: int = 50, max_question_tokens: int = 35, max_answers: int = 10,
                          max_answer_tokens: int = 10, vg_answer_weight: float = 0.2, seed: int = 0,
                          num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
                          worker_count: int = 0, worker_buffer_size: int = 2,
                          scale: tuple[float, float] = (0.5, 1.0), randaug: bool = True,
                          randaug_ops: Sequence[str] = transforms.RANDAUG_OPS, flip: str = "plain",
                          read_threads: int = 4, read_buffer: int = 256) -> TrainLoader:
    """Shuffled (seeded, reshuffled per epoch) VQA training batches for this process's shard, from
    the concatenated (dataset_name, split) sources (BLIP: VQA train + val + VG QA). As
    pipeline.make_train_loader: any process/worker count gives the same global batches, and
    iter(loader).get_state()/set_state() resume on exactly the next batch."""
    check_train_options(global_batch_size, shard_count, flip, scale, randaug_ops)
    if max_answers < 1 or max_answer_tokens < 3:
        raise ValueError(f"max_answers must be >= 1 and max_answer_tokens >= 3 ([CLS] a [SEP]), "
                         f"got {max_answers}, {max_answer_tokens}")
    _absl_flags_ready()
    source = VqaRecordSource(data_dir, normalize_sources(sources, None))
    example = _VqaTrainExample(image_size, max_question_words, max_question_tokens, max_answers, max_answer_tokens,
                               vg_answer_weight, tuple(scale), randaug, tuple(randaug_ops), flip)
    loader, batch = shuffled_batches(source, example, global_batch_size=global_batch_size, seed=seed,
                                     num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
                                     worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                                     read_threads=read_threads, read_buffer=read_buffer)
    return VqaTrainLoader(loader, source, batch, global_batch_size)


# ---- evaluation ---------------------------------------------------------------------------------

@dataclasses.dataclass
class _VqaEvalExample(grain.transforms.Map, _Tokenizing):
    image_size: int
    max_question_words: int
    max_question_tokens: int

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        error, image = "", np.zeros((self.image_size, self.image_size, 3), np.float32)
        try:  # the eval transform of blip_jax.image.preprocess
            img = decode_rgb(element["image"], element["where"]).resize((self.image_size,) * 2, Image.BICUBIC)
            image = normalize(np.asarray(img, np.uint8))
        except ImageError as e:
            error = str(e)
        question = pre_question(element["question"], self.max_question_words)
        ids, mask = self.encode(question, self.max_question_tokens)
        return {"image": image, "question_ids": ids, "question_mask": mask, "question": question,
                "question_id": element["question_id"], "answers": element["answers"],
                "question_type": element["question_type"], "answer_type": element["answer_type"],
                "padding": element["padding"], "error": error}


class VqaEvalBatches:
    """Iterator of evaluation batches; `skipped` lists (question_id, reason) of the questions
    whose image could not be read (valid=False in their batch), once the pass has reached them."""

    # Per-question text columns of a batch ("" on padding rows); video QA adds late_only.
    string_columns: tuple[str, ...] = ("question", "question_type", "answer_type")

    def __init__(self, loader: Iterable[dict[str, Any]], batch_size: int, num_questions: int) -> None:
        self.batch_size, self.num_questions = batch_size, num_questions  # this process's real questions
        self.skipped: list[tuple[int, str]] = []
        self._batches = self._generate(loader)

    def __iter__(self) -> "VqaEvalBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._batches)

    def _generate(self, loader: Iterable[dict[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        rows: list[dict[str, Any]] = []
        for rec in loader:  # record order, also with workers
            if rec["error"] and not rec["padding"]:
                log.warning("VQA evaluation cannot answer question %d: %s", rec["question_id"], rec["error"])
                self.skipped.append((int(rec["question_id"]), rec["error"]))
            rows.append(rec)
            if len(rows) == self.batch_size:
                yield self._collate(rows)
                rows = []
        if rows:
            yield self._collate(rows)

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        n, size = len(rows), self.batch_size
        real = [not r["padding"] for r in rows]

        def stack(key: str) -> np.ndarray:
            x = np.stack([r[key] for r in rows])
            return np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])

        def column(key: str, fill: Any, dtype: Any) -> np.ndarray:
            out = np.empty(size, dtype) if dtype is object else np.full(size, fill, dtype)
            for i, r in enumerate(rows):
                out[i] = r[key] if real[i] else fill
            for i in range(n, size):
                out[i] = fill
            return out

        return {"image": stack("image"), "question_ids": stack("question_ids"),
                "question_mask": stack("question_mask"), "question_id": column("question_id", -1, np.int64),
                "answers": column("answers", [], object),
                **{key: column(key, "", object).astype(str) for key in self.string_columns},
                "valid": np.array([real[i] and not rows[i]["error"] if i < n else False for i in range(size)])}


def vqa_eval_batches(data_dir: str, name: str, split: str, *, batch_size: int, image_size: int,
                     max_question_words: int = 50, max_question_tokens: int = 35, shard_index: int = 0,
                     shard_count: int = 1, worker_count: int = 0) -> VqaEvalBatches:
    """Every question of name:split once, in record order (process k of n: records k, k + n, ...;
    every process gets the same number of batches). Per batch: image float32 [B, S, S, 3] (bicubic
    resize, normalised), question_ids / question_mask int32 [B, Lq], question_id int64 [B] (-1 on
    padding rows), question (str, pre_question-cleaned), answers (object: list of str, [] for
    test), question_type / answer_type (str), valid bool [B] (False: padding or unreadable image)."""
    _absl_flags_ready()
    source = VqaRecordSource(data_dir, [(name, split)], shard_index=shard_index, shard_count=shard_count,
                             drop_remainder=False)
    sampler = grain.samplers.IndexSampler(len(source), shuffle=False, num_epochs=1,
                                          shard_options=grain.sharding.NoSharding())
    loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count,
                              operations=[_VqaEvalExample(image_size, max_question_words, max_question_tokens)],
                              shard_options=grain.sharding.NoSharding())
    real = len(range(shard_index, source._total, shard_count))
    return VqaEvalBatches(loader, batch_size, real)
