"""The grain input pipeline: seeded, sharded, checkpointable training batches and evaluation data.

Train batch (numpy): image float32 [B, H, W, 3] (CLIP-normalised), text_ids / text_mask int32
[B, L] (BlipTokenizer: [CLS] ... [SEP], 0 padding), image_id int32 [B]; B = global_batch_size //
shard_count. Process k reads the k-th slice of every global batch of one seeded stream
(data/sampler.py), so any number of processes assembles the same global batches. The same seed
gives the same batches, whatever the worker_count; the iterator's get_state()/set_state()
resume on exactly the next batch.

Horizontal flip and captions: mirroring makes "left of" false. flip="swap" (default) mirrors and
swaps the words left/right in the caption, so relations stay true (the synthetic data relies on
it; a rare "the right answer" is changed too); flip="plain" mirrors only (BLIP's original);
flip="none" never mirrors.

An image that fails to decode (or a caption that cleans to nothing) is dropped before batching:
a warning names it, and the iterator's `skipped` counts them. A pipeline that produces nothing
is a DataError.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags
from PIL import Image

from blip_jax.data import transforms
from blip_jax.data.sampler import GlobalBatchSampler
from blip_jax.data.decode import decode_rgb
from blip_jax.data.report import DataError
from blip_jax.data.sources import RecordSource, Source, normalize_sources
from blip_jax.image import ImageError, normalize
from blip_jax.tokenizer import BlipTokenizer, pre_caption

log = logging.getLogger(__name__)
FLIP_MODES = ("swap", "plain", "none")
_LOG_FIRST = 100  # skips logged one by one; after that every 1000th, with the running count


def _absl_flags_ready() -> None:
    """grain's worker start reads absl flags: outside an absl app (tests, notebooks) they were
    never parsed, so take their defaults, as absl.app would with no command-line flags."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _Tokenizing:
    """Holds a BlipTokenizer built lazily in each worker process (it is not picklable)."""

    _tok: BlipTokenizer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_tok"}

    def encode(self, text: str, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        if self._tok is None:
            self._tok = BlipTokenizer()
        ids, mask = self._tok.encode([text], max_tokens)
        return ids[0], mask[0]


def train_image(data: bytes, where: str, image_size: int, scale: tuple[float, float], flip: str,
                randaug: bool, randaug_ops: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """The training transform of one encoded image: RandomResizedCrop, horizontal flip with
    probability 0.5 (unless flip="none"), RandAugment, CLIP normalisation. Returns (float32
    [S, S, 3], whether it was flipped: the caller swaps left/right in its text for "swap").
    Raises ImageError for an image that does not decode."""
    img = decode_rgb(data, where, transforms.draft_size(image_size, scale))
    img = transforms.random_resized_crop(img, image_size, scale, rng)
    flipped = flip != "none" and rng.random() < 0.5
    if flipped:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if randaug:
        img = transforms.rand_augment(img, rng, ops=randaug_ops)
    return normalize(np.asarray(img, np.uint8)), flipped


@dataclasses.dataclass
class _TrainExample(grain.transforms.RandomMap, _Tokenizing):
    image_size: int
    max_words: int
    max_tokens: int
    scale: tuple[float, float]
    randaug: bool
    randaug_ops: tuple[str, ...]
    flip: str
    prompt: str = ""

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        where = element["where"]
        try:
            image, flipped = train_image(element["image"], where, self.image_size, self.scale, self.flip,
                                         self.randaug, self.randaug_ops, rng)
        except ImageError as e:
            return {"_skip": str(e)}
        captions = element["captions"]
        text = pre_caption(captions[int(rng.integers(len(captions)))] if captions else "", self.max_words)
        if not text:
            return {"_skip": f"{where}: empty caption"}
        if flipped and self.flip == "swap":
            text = transforms.swap_left_right(text)
        # Captioning fine-tunes prepend the prompt to every target ("a picture of " + caption),
        # as the original does; the LM loss skips its tokens.
        ids, mask = self.encode(self.prompt + text, self.max_tokens)
        return {"image": image, "text_ids": ids, "text_mask": mask,
                "image_id": np.int32(element["image_id"])}


class _SkipBad(grain.transforms.Filter):
    """Drops the examples _TrainExample marked bad, logging them; the next kept example carries
    how many were dropped before it (`_skipped`), which the iterator adds up. Per process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # this many bad in a row: nothing usable is coming, fail loudly
        self._pending = self._run = self._total = 0

    def filter(self, element: dict[str, Any]) -> bool:
        if "_skip" in element:
            self._pending += 1
            self._run += 1
            self._total += 1
            if self._total <= _LOG_FIRST or self._total % 1000 == 0:
                log.warning("skipping %s (%d skipped in this process)", element["_skip"], self._total)
            if self._run >= self.limit:
                raise DataError(f"{self._run} records in a row were unusable, e.g. {element['_skip']}")
            return False
        element["_skipped"] = np.int32(self._pending)
        self._pending = self._run = 0
        return True


class TrainIterator:
    """grain's DataLoaderIterator plus the count of skipped examples; same checkpoint API."""

    def __init__(self, it: grain.DataLoaderIterator, describe: str) -> None:
        self._it, self._describe = it, describe
        self._restored, self._yielded = False, 0
        self.skipped = 0  # examples dropped before the batches this iterator returned

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._it)
        except StopIteration:
            if not self._yielded and not self._restored:
                raise DataError(f"{self._describe} produced no batch: too few usable records for the "
                                f"batch size, or all unusable (see the logged warnings)") from None
            raise
        self._yielded += 1
        skipped = int(batch.pop("_skipped").sum())
        if skipped:
            self.skipped += skipped
        return batch

    def get_state(self) -> bytes:
        return self._it.get_state()

    def set_state(self, state: bytes) -> None:
        self._it.set_state(state)
        self._restored = True


@dataclasses.dataclass
class TrainLoader:
    """Iterable of training batches; `iter()` gives a TrainIterator (get_state/set_state)."""

    loader: grain.DataLoader
    source: RecordSource
    per_host_batch_size: int

    global_batch_size: int

    @property
    def num_records(self) -> int:
        """Training records per epoch (all processes together)."""
        return len(self.source)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.source) // self.global_batch_size

    def __iter__(self) -> TrainIterator:
        return TrainIterator(iter(self.loader), repr(self.source))


def check_train_options(global_batch_size: int, shard_count: int, flip: str,
                        scale: tuple[float, float], randaug_ops: Sequence[str]) -> None:
    """The options every training loader (image-text, VQA, NLVR2) takes, checked up front."""
    if global_batch_size % shard_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by shard_count {shard_count}")
    if flip not in FLIP_MODES:
        raise ValueError(f"flip={flip!r}; expected one of {FLIP_MODES}")
    unknown = set(randaug_ops) - set(transforms.RANDAUG_OPS)
    if unknown:
        raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; known: {transforms.RANDAUG_OPS}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")


def make_train_loader(data_dir: str, dataset_name: str | Sequence[Source], split: str | None = None, *,
                      global_batch_size: int, image_size: int, max_words: int = 30, max_tokens: int = 30,
                      seed: int = 0, num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
                      worker_count: int = 0, worker_buffer_size: int = 2, scale: tuple[float, float] = (0.2, 1.0),
                      randaug: bool = True, randaug_ops: Sequence[str] = transforms.RANDAUG_OPS,
                      flip: str = "swap", prompt: str = "", read_threads: int = 4,
                      read_buffer: int = 256) -> TrainLoader:
    """Shuffled (seeded, reshuffled each epoch) training batches for this process's shard.

    dataset_name + split, or dataset_name = [(name, split), ...] to concatenate several splits
    (e.g. synthetic train_web + train_clean). num_epochs=None repeats forever; batches run across
    epoch ends. For the synthetic data a milder crop (scale=(0.5, 1.0)) keeps most shapes in view.
    `prompt` is prepended to every caption (captioning fine-tunes: "a picture of ").
    """
    check_train_options(global_batch_size, shard_count, flip, scale, randaug_ops)
    _absl_flags_ready()
    # Every process opens all records; the sampler gives each its slice of every global batch.
    source = RecordSource(data_dir, normalize_sources(dataset_name, split))
    example = _TrainExample(image_size, max_words, max_tokens, tuple(scale), randaug, tuple(randaug_ops),
                            flip, prompt)
    loader, batch = shuffled_batches(source, example, global_batch_size=global_batch_size, seed=seed,
                                     num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
                                     worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                                     read_threads=read_threads, read_buffer=read_buffer)
    return TrainLoader(loader, source, batch, global_batch_size)


def shuffled_batches(source: RecordSource, example: grain.transforms.RandomMap, *, global_batch_size: int,
                     seed: int, num_epochs: int | None, shard_index: int, shard_count: int, worker_count: int,
                     worker_buffer_size: int, read_threads: int, read_buffer: int) -> tuple[grain.DataLoader, int]:
    """The grain loader of this process's slice of every seeded global batch of `source`, each
    record through `example` (which marks bad records with "_skip"; they are dropped, logged and
    counted). Returns (loader, per-process batch size)."""
    batch = global_batch_size // shard_count
    sampler = GlobalBatchSampler(len(source), global_batch_size, shard_index=shard_index,
                                 shard_count=shard_count, seed=seed, num_epochs=num_epochs,
                                 worker_count=worker_count)
    ops = [example, _SkipBad(limit=min(len(source), 10_000)), grain.transforms.Batch(batch, drop_remainder=True)]
    loader = grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=worker_count,
                              worker_buffer_size=worker_buffer_size, shard_options=grain.sharding.NoSharding(),
                              read_options=grain.ReadOptions(num_threads=read_threads,
                                                             prefetch_buffer_size=read_buffer))
    return loader, batch


# ---- one pass over every record (CapFilt) -----------------------------------------------------

@dataclasses.dataclass
class _ScanExample(grain.transforms.Map, _Tokenizing):
    image_size: int
    max_words: int
    max_tokens: int

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        valid = not element["padding"]
        try:
            img = decode_rgb(element["image"], element["where"]).resize((self.image_size,) * 2, Image.BICUBIC)
            image = normalize(np.asarray(img, np.uint8))
        except ImageError as e:
            log.warning("scan skips %s", e)
            image, valid = np.zeros((self.image_size, self.image_size, 3), np.float32), False
        caption = pre_caption(element["captions"][0], self.max_words) if element["captions"] else ""
        ids, mask = self.encode(caption, self.max_tokens)
        return {"image": image, "text_ids": ids, "text_mask": mask, "caption": caption,
                "image_id": np.int32(element["image_id"]), "image_path": element["image_path"],
                "index": np.int32(element["index"]), "noise": np.int32(element.get("noise", -1)),
                "valid": np.bool_(valid and bool(caption))}


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["valid"])
    if n == size:
        return batch
    out = {}
    for k, v in batch.items():
        pad = np.zeros((size - n, *v.shape[1:]), v.dtype)  # "" for strings, False for valid
        out[k] = np.concatenate([v, pad])
    return out


class _RecordRanges:
    """grain data source: the records [start, stop) of an unsharded RecordSource for each range,
    ranges one after the other (CapFilt's work units)."""

    def __init__(self, source: RecordSource, ranges: Sequence[tuple[int, int]]) -> None:
        self.source = source
        self.ranges = [(int(a), int(b)) for a, b in ranges]
        if any(not 0 <= a <= b <= source._total for a, b in self.ranges):
            raise ValueError(f"record ranges {self.ranges} outside [0, {source._total}]")
        self._starts = np.cumsum([0, *(b - a for a, b in self.ranges)]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        return f"_RecordRanges({self.source!r}, {self.ranges})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = bisect.bisect_right(self._starts, int(index)) - 1
        return self.source[self.ranges[k][0] + int(index) - self._starts[k]]


def scan_records(data_dir: str, dataset_name: str | Sequence[Source], split: str | None = None, *,
                 batch_size: int, image_size: int, max_words: int = 30, max_tokens: int = 30,
                 shard_index: int = 0, shard_count: int = 1, worker_count: int = 0,
                 ranges: Sequence[tuple[int, int]] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Every record once, in order, with the evaluation transform: what CapFilt scores and
    captions. Fixed-shape batches; every process gets the same number of them (shards and the
    last batch are padded). Per batch: image, text_ids, text_mask (first caption), caption (str),
    image_id, image_path (str), index (record number in the concatenated sources), noise (the
    synthetic label, -1 elsewhere; for scoring only), valid (False: padding, unreadable image or
    empty caption). ranges: read only the record numbers [start, stop) of each range, in the
    given order, instead of the strided shard shard_index / shard_count (only the last batch is
    padded)."""
    _absl_flags_ready()
    if ranges is not None:
        source = _RecordRanges(RecordSource(data_dir, normalize_sources(dataset_name, split)), ranges)
        if not len(source):
            return
    else:
        source = RecordSource(data_dir, normalize_sources(dataset_name, split), shard_index=shard_index,
                              shard_count=shard_count, drop_remainder=False)
    sampler = grain.samplers.IndexSampler(len(source), shuffle=False, num_epochs=1,
                                          shard_options=grain.sharding.NoSharding())
    loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count,
                              operations=[_ScanExample(image_size, max_words, max_tokens),
                                          grain.transforms.Batch(batch_size, drop_remainder=False)],
                              shard_options=grain.sharding.NoSharding())
    for batch in loader:
        yield _pad(batch, batch_size)


# ---- evaluation ---------------------------------------------------------------------------------

@dataclasses.dataclass
class _EvalImage(grain.transforms.Map):
    image_size: int

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        out = {k: element[k] for k in ("index", "captions", "image_id", "image_path", "where")}
        out["error"] = ""
        try:
            img = decode_rgb(element["image"], element["where"])
            # the eval transform of blip_jax.image.preprocess, kept as uint8 until batching
            out["image"] = np.asarray(img.resize((self.image_size,) * 2, Image.BICUBIC), np.uint8)
        except ImageError as e:
            out["error"] = str(e)
        return out


@dataclasses.dataclass
class EvalData:
    """A val/test split for retrieval and captioning: every image once, every reference caption,
    and the mapping between them (the retrieval protocol's text->image ground truth)."""

    images: np.ndarray              # uint8 [num_images, S, S, 3], bicubic-resized
    image_ids: np.ndarray           # int32 [num_images]
    image_paths: list[str]
    texts: list[str]                # pre_caption-cleaned references
    text_ids: np.ndarray            # int32 [num_texts, max_tokens]
    text_mask: np.ndarray
    text_to_image: np.ndarray       # int32 [num_texts]: index into images
    image_to_texts: list[list[int]]
    skipped: list[tuple[str, str]]  # (where, reason) of dropped images and captions

    def image_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Normalised float32 batches of fixed shape; the last is padded, `valid` marks real rows."""
        for start in range(0, len(self.images), batch_size):
            chunk = self.images[start:start + batch_size]
            n = len(chunk)
            pad = np.zeros((batch_size - n, *chunk.shape[1:]), np.uint8)
            yield {"image": normalize(np.concatenate([chunk, pad])),
                   "index": np.arange(start, start + batch_size, dtype=np.int32),
                   "valid": np.arange(batch_size) < n}

    def text_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.texts), batch_size):
            n = min(batch_size, len(self.texts) - start)
            ids = np.zeros((batch_size, self.text_ids.shape[1]), np.int32)
            mask = np.zeros_like(ids)
            ids[:n], mask[:n] = self.text_ids[start:start + n], self.text_mask[start:start + n]
            yield {"text_ids": ids, "text_mask": mask,
                   "index": np.arange(start, start + batch_size, dtype=np.int32),
                   "valid": np.arange(batch_size) < n}


def make_eval_data(data_dir: str, dataset_name: str, split: str, *, image_size: int, max_words: int = 30,
                   max_tokens: int = 35, worker_count: int = 0) -> EvalData:
    """Loads a whole evaluation split into memory (uint8 images). Records of one image_id are
    merged, so a pair-layout split works too. Undecodable images are dropped with their captions,
    and empty captions are dropped; both are logged and listed in `skipped`."""
    _absl_flags_ready()
    source = RecordSource(data_dir, [(dataset_name, split)])
    sampler = grain.samplers.IndexSampler(len(source), shuffle=False, num_epochs=1,
                                          shard_options=grain.sharding.NoSharding())
    loader = grain.DataLoader(data_source=source, sampler=sampler, operations=[_EvalImage(image_size)],
                              worker_count=worker_count, shard_options=grain.sharding.NoSharding())
    skipped: list[tuple[str, str]] = []
    slot: dict[int, int] = {}  # image_id -> index into images
    images, ids, paths, texts, t2i = [], [], [], [], []
    for rec in loader:  # in record order, also with workers
        if rec["error"]:
            skipped.append((rec["where"], rec["error"]))
            log.warning("evaluation skips %s", rec["error"])
            continue
        if rec["image_id"] not in slot:
            slot[rec["image_id"]] = len(images)
            images.append(rec["image"])
            ids.append(rec["image_id"])
            paths.append(rec["image_path"])
        for c in rec["captions"]:
            text = pre_caption(c, max_words)
            if text:
                texts.append(text)
                t2i.append(slot[rec["image_id"]])
            else:
                skipped.append((rec["where"], "empty caption"))
    if not images or not texts:
        raise DataError(f"{dataset_name}:{split} in {data_dir} has no usable image with a caption "
                        f"({len(skipped)} skipped{': ' + skipped[0][1] if skipped else ''})")
    text_ids, text_mask = BlipTokenizer().encode(texts, max_tokens)
    image_to_texts: list[list[int]] = [[] for _ in images]
    for t, i in enumerate(t2i):
        image_to_texts[i].append(t)
    return EvalData(np.stack(images), np.asarray(ids, np.int32), paths, texts, text_ids, text_mask,
                    np.asarray(t2i, np.int32), image_to_texts, skipped)
