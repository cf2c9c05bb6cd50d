"""NLVR2 batches on the grain pipeline of pipeline.py: the same global-batch sampler, skip
accounting and checkpointable iterator; datasets as written by nlvr_builders (one record per
image pair and sentence).

Train batch (numpy), B = global_batch_size // shard_count, L = max_tokens:
  images  float32 [B, 2, H, W, 3]  each image through its own training transform (RandomResizedCrop
                                   bicubic with `scale`, flip, RandAugment), CLIP-normalised; [:, 0] left
  ids     int32   [B, L]           BlipTokenizer(pre_caption(sentence, max_words)): [CLS] ... [SEP], 0
  mask    int32   [B, L]           padding (the model step puts [ENC] in place of [CLS])
  label   int32   [B]              1 = True
The pair swap, as the original (data/nlvr_dataset.py): with probability 0.5 the two images trade
places and every word "left" of the cleaned sentence becomes "right" and vice versa (whole words
split on ' ', so "left," stays); swap=False turns it off. Flip: "plain" (the original's
RandomHorizontalFlip) mirrors an image alone, "none" never; "swap" (which would swap left/right in
the sentence for a mirrored image) is refused: in NLVR2 left and right name the images, which a
mirror does not move. A sentence over L tokens is cut keeping [SEP] last (logged the first times,
counted in the iterator's `sentences_truncated`). An empty sentence or an image (either) that
does not decode is skipped before batching and counted in the iterator's `skipped`.

Evaluation (nlvr_eval_batches): every example once, in record order, no swap (the original
swaps at evaluation too, by sharing its training dataset class; we do not), fixed-shape batches
(the last one and this process's shard padded, valid=False, label -1); an unreadable image gives
valid=False, a warning and an entry in `skipped`, so evaluation can say what went unclassified.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from blip_jax.data import transforms
from blip_jax.data.decode import decode_rgb
from blip_jax.data.pipeline import (FLIP_MODES, TrainIterator, TrainLoader, _LOG_FIRST, _Tokenizing,
                                    _absl_flags_ready, check_train_options, shuffled_batches, train_image)
from blip_jax.data.sources import RecordSource, Source, normalize_sources
from blip_jax.image import ImageError, normalize
from blip_jax.tokenizer import SEP_ID, pre_caption

log = logging.getLogger(__name__)
NLVR_FLIP_MODES = ("plain", "none")


def swap_left_right_words(sentence: str) -> str:
    """The original's word swap: each word (split on ' ') exactly "left" or "right" becomes the other."""
    return " ".join({"left": "right", "right": "left"}.get(w, w) for w in sentence.split(" "))


class NlvrRecordSource(RecordSource):
    """RecordSource over NLVR records (nlvr_builders' features) instead of image-caption ones."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, local = self.locate(int(index))
        rec = self._sources()[k][local]
        name, split = self.sources[k]
        ident = rec["identifier"].decode()
        return {"image0": rec["image0"], "image1": rec["image1"], "image0_path": rec["image0_path"].decode(),
                "image1_path": rec["image1_path"].decode(), "sentence": rec["sentence"].decode(),
                "label": int(rec["label"]), "identifier": ident,
                "pair_id": int(rec["pair_id"]) + self._id_offsets[k],
                "where": f"{name}:{split}[{local}] ({ident})", "index": self._starts[k] + local,
                "padding": self.shard_index + index * self.shard_count >= self._total}


def _check_flip(flip: str) -> None:
    if flip == "swap":
        raise ValueError("flip='swap' would swap left/right in the sentence whenever one image is mirrored, but "
                         "NLVR2's left and right name the two images, which a mirror does not move: use "
                         "flip='plain' (the original) or 'none'; the pair swap (swap=True, config.data.nlvr_swap) "
                         "is the left/right augmentation")
    if flip not in FLIP_MODES:
        raise ValueError(f"flip={flip!r}; expected one of {NLVR_FLIP_MODES}")


class _SentenceEncoding(_Tokenizing):
    """[CLS] sentence [SEP] in max_tokens, and whether it had to be cut; warns the first times."""

    max_tokens: int
    _logged: int = 0  # per process

    def encode_sentence(self, sentence: str, where: str) -> tuple[np.ndarray, np.ndarray, bool]:
        length = self.max_tokens
        ids, mask = self.encode(sentence, length + 1)  # one spare column: fills only when too long
        cut = bool(mask[length])
        if cut:
            ids[length - 1] = SEP_ID
            self._logged += 1
            if self._logged <= _LOG_FIRST or self._logged % 1000 == 0:
                log.warning("%s: sentence %r is longer than %d tokens, cut (%d such warnings in this process)",
                            where, sentence, length, self._logged)
        return ids[:length], mask[:length], cut


@dataclasses.dataclass
class _NlvrTrainExample(grain.transforms.RandomMap, _SentenceEncoding):
    image_size: int
    max_words: int
    max_tokens: int
    scale: tuple[float, float]
    randaug: bool
    randaug_ops: tuple[str, ...]
    flip: str
    swap: bool

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        where = element["where"]
        sentence = pre_caption(element["sentence"], self.max_words)
        if not sentence:
            return {"_skip": f"{where}: empty sentence"}
        images = []
        for i in (0, 1):  # as the original: image 0's transform, image 1's, then the swap coin
            try:
                image, _ = train_image(element[f"image{i}"], f"{where} image{i} {element[f'image{i}_path']}",
                                       self.image_size, self.scale, self.flip, self.randaug, self.randaug_ops, rng)
            except ImageError as e:
                return {"_skip": str(e)}
            images.append(image)
        if self.swap and rng.random() < 0.5:
            images.reverse()
            sentence = swap_left_right_words(sentence)
        ids, mask, cut = self.encode_sentence(sentence, where)
        return {"images": np.stack(images), "ids": ids, "mask": mask, "label": np.int32(element["label"]),
                "_truncated": np.int32(cut)}


class NlvrTrainIterator(TrainIterator):
    """TrainIterator that also counts the sentences cut to max_tokens."""

    def __init__(self, it: grain.DataLoaderIterator, describe: str) -> None:
        super().__init__(it, describe)
        self.sentences_truncated = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = super().__next__()
        self.sentences_truncated += int(batch.pop("_truncated").sum())
        return batch


class NlvrTrainLoader(TrainLoader):
    def __iter__(self) -> NlvrTrainIterator:
        return NlvrTrainIterator(iter(self.loader), repr(self.source))


def make_nlvr_train_loader(data_dir: str, sources: Sequence[Source], *, global_batch_size: int, image_size: int,
                           max_words: int = 40, max_tokens: int = 64, seed: int = 0, num_epochs: int | None = None,
                           shard_index: int = 0, shard_count: int = 1, worker_count: int = 0,
                           worker_buffer_size: int = 2, scale: tuple[float, float] = (0.5, 1.0),
                           randaug: bool = True, randaug_ops: Sequence[str] = transforms.RANDAUG_OPS,
                           flip: str = "plain", swap: bool = True, read_threads: int = 4,
                           read_buffer: int = 256) -> NlvrTrainLoader:
    """Shuffled (seeded, reshuffled per epoch) NLVR2 training batches for this process's shard,
    from the concatenated (dataset_name, split) sources. As pipeline.make_train_loader: any
    process/worker count gives the same global batches, and iter(loader).get_state()/set_state()
    resume on exactly the next batch. Defaults as the original: pre_caption(sentence, 40), crop
    scale (0.5, 1), flip, RandAugment, the pair swap."""
    _check_flip(flip)
    check_train_options(global_batch_size, shard_count, flip, scale, randaug_ops)
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be >= 3 ([CLS] word [SEP]), got {max_tokens}")
    _absl_flags_ready()
    source = NlvrRecordSource(data_dir, normalize_sources(sources, None))
    example = _NlvrTrainExample(image_size, max_words, max_tokens, tuple(scale), randaug, tuple(randaug_ops), flip,
                                swap)
    loader, batch = shuffled_batches(source, example, global_batch_size=global_batch_size, seed=seed,
                                     num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
                                     worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                                     read_threads=read_threads, read_buffer=read_buffer)
    return NlvrTrainLoader(loader, source, batch, global_batch_size)


# ---- evaluation ---------------------------------------------------------------------------------

@dataclasses.dataclass
class _NlvrEvalExample(grain.transforms.Map, _SentenceEncoding):
    image_size: int
    max_words: int
    max_tokens: int

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        error, images = "", np.zeros((2, self.image_size, self.image_size, 3), np.float32)
        try:  # the eval transform of blip_jax.image.preprocess, per image
            for i in (0, 1):
                where = f"{element['where']} image{i} {element[f'image{i}_path']}"
                img = decode_rgb(element[f"image{i}"], where).resize((self.image_size,) * 2, Image.BICUBIC)
                images[i] = normalize(np.asarray(img, np.uint8))
        except ImageError as e:
            error = str(e)
        sentence = pre_caption(element["sentence"], self.max_words)
        ids, mask, _ = self.encode_sentence(sentence, element["where"])
        return {"images": images, "ids": ids, "mask": mask, "label": element["label"],
                "identifier": element["identifier"], "sentence": sentence, "padding": element["padding"],
                "error": error}


class NlvrEvalBatches:
    """Iterator of evaluation batches; `skipped` lists (identifier, reason) of the examples whose
    images could not be read (valid=False in their batch), once the pass has reached them;
    `num_examples` is this process's real examples."""

    def __init__(self, loader: grain.DataLoader, batch_size: int, num_examples: int) -> None:
        self.batch_size, self.num_examples = batch_size, num_examples
        self.skipped: list[tuple[str, str]] = []
        self._batches = self._generate(loader)

    def __iter__(self) -> "NlvrEvalBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._batches)

    def _generate(self, loader: grain.DataLoader) -> Iterator[dict[str, np.ndarray]]:
        rows: list[dict[str, Any]] = []
        for rec in loader:  # record order, also with workers
            if not rec["padding"] and (rec["error"] or not rec["sentence"]):
                reason = rec["error"] or f"{rec['identifier']}: empty sentence"
                log.warning("NLVR evaluation cannot classify %s: %s", rec["identifier"], reason)
                self.skipped.append((str(rec["identifier"]), reason))
            rows.append(rec)
            if len(rows) == self.batch_size:
                yield self._collate(rows)
                rows = []
        if rows:
            yield self._collate(rows)

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        n, size = len(rows), self.batch_size
        real = [not r["padding"] for r in rows] + [False] * (size - n)

        def stack(key: str) -> np.ndarray:
            x = np.stack([r[key] for r in rows])
            return np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])

        def column(key: str, fill: Any, dtype: Any) -> np.ndarray:
            return np.array([rows[i][key] if real[i] else fill for i in range(size)], dtype)

        return {"images": stack("images"), "ids": stack("ids"), "mask": stack("mask"),
                "label": column("label", -1, np.int32), "identifier": column("identifier", "", object).astype(str),
                "sentence": column("sentence", "", object).astype(str),
                "valid": np.array([real[i] and not rows[i]["error"] and bool(rows[i]["sentence"])
                                   for i in range(size)], bool)}


def nlvr_eval_batches(data_dir: str, name: str, split: str, *, batch_size: int, image_size: int,
                      max_words: int = 40, max_tokens: int = 64, shard_index: int = 0, shard_count: int = 1,
                      worker_count: int = 0) -> NlvrEvalBatches:
    """Every example of name:split once, in record order, never swapped (process k of n: records
    k, k + n, ...; every process gets the same number of batches). Per batch: images float32
    [B, 2, S, S, 3] (bicubic resize to S, normalised; [:, 0] left), ids / mask int32 [B, L],
    label int32 [B] (-1 on padding rows), identifier and sentence (str, pre_caption-cleaned),
    valid bool [B] (False: padding, an unreadable image or an empty sentence)."""
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be >= 3 ([CLS] word [SEP]), got {max_tokens}")
    _absl_flags_ready()
    source = NlvrRecordSource(data_dir, [(name, split)], shard_index=shard_index, shard_count=shard_count,
                              drop_remainder=False)
    sampler = grain.samplers.IndexSampler(len(source), shuffle=False, num_epochs=1,
                                          shard_options=grain.sharding.NoSharding())
    loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count,
                              operations=[_NlvrEvalExample(image_size, max_words, max_tokens)],
                              shard_options=grain.sharding.NoSharding())
    real = len(range(shard_index, source._total, shard_count))
    return NlvrEvalBatches(loader, batch_size, real)
