"""TFDS builders for image-text data, stored as array_record (read back by `tfds.data_source`
without TensorFlow), images kept as their original encoded bytes.

Record layout, the same for every builder: splits whose name starts with "train" hold one record
per (image, caption) pair; the other splits (val, test) one record per image with all its
reference captions. Features: image (bytes), image_id (int, stable, unique within the dataset),
image_path (relative to the image root; webdataset shards: SHARD.tar/KEY), captions (list of
str); the synthetic builder adds noise (label), clean_caption and scene (JSON).

Missing or undecodable images and empty captions are skipped and listed in `self.report`; a
split left with no record is a DataError.

The builders take their inputs as constructor arguments, so they are not registered with TFDS:
`tfds.data_source(name, data_dir=...)` reads a written dataset from its files alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from blip_jax.data import synthetic, webdataset
from blip_jax.data.annotations import Entry, parse_annotation_specs, parse_karpathy
from blip_jax.data.decode import read_checked
from blip_jax.data.report import DataError, SkipReport
from blip_jax.image import ImageError
from blip_jax.tokenizer import pre_caption

VERSION = tfds.core.Version("1.0.0")


def is_pair_split(split: str) -> bool:
    return split.startswith("train")


def _base_features() -> dict[str, Any]:
    return {
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes, as in the source
        "image_id": np.int64,
        "image_path": tfds.features.Text(),
        "captions": tfds.features.Sequence(tfds.features.Text()),
    }


class _ImageTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared generation: per-split statistics, skip report, the empty-split check."""

    VERSION = VERSION
    SOURCE = ""  # what the user passed, for error messages

    def __init__(self, *, data_dir: str, config: tfds.core.BuilderConfig | None = None) -> None:
        self.report = SkipReport()
        self.stats: dict[str, dict[str, int]] = {}
        super().__init__(data_dir=data_dir, config=config, file_format="array_record")

    def _features(self) -> dict[str, Any]:
        return _base_features()

    def _info(self) -> tfds.core.DatasetInfo:
        # disable_shuffling: records stay in generation order, so a record index means something.
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                     features=tfds.features.FeaturesDict(self._features()),
                                     disable_shuffling=True)

    def _split_names(self) -> Sequence[str]:
        raise NotImplementedError

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # local files only
        return {split: self._generate_examples(split) for split in self._split_names()}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        n, ids = 0, set()
        for example in self._examples(split):
            ids.add(int(example["image_id"]))
            yield n, example
            n += 1
        if n == 0:
            skipped = [s for s in self.report.items if s.split == split]
            detail = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
            raise DataError(f"{self.name} split {split!r} from {self.SOURCE} has no usable example "
                            f"({len(skipped)} skipped{': ' + detail if detail else ''})")
        self.stats[split] = {"records": n, "images": len(ids), "min_image_id": min(ids), "max_image_id": max(ids)}


class _AnnotatedBuilder(_ImageTextBuilder, skip_registration=True):
    """Builders over annotation entries plus an image folder."""

    def __init__(self, *, data_dir: str, image_root: str, splits: Mapping[str, list[Entry]],
                 config: tfds.core.BuilderConfig | None = None, verify_images: bool = True) -> None:
        if not os.path.isdir(image_root):
            raise DataError(f"image root {image_root!r} is not a directory")
        self._image_root, self._verify = image_root, verify_images
        self._entries = dict(splits)
        # Dense ids by first appearance (splits in name order) where the source has no integer id.
        self._ids: dict[Any, int] = {}
        for split in sorted(self._entries):
            for e in self._entries[split]:
                if e.image_id is None:
                    self._ids.setdefault(e.key, len(self._ids))
        super().__init__(data_dir=data_dir, config=config)

    def _split_names(self) -> Sequence[str]:
        return list(self._entries)

    def _image_id(self, e: Entry) -> int:
        return e.image_id if e.image_id is not None else self._ids[e.key]

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        # (entry, its non-empty captions) per record: each pair on train splits; on eval splits
        # the entries naming one image merged, so an image's references are all in one record.
        items: dict[Any, tuple[Entry, list[str]]] = {}
        for n, e in enumerate(self._entries[split]):
            path = os.path.join(self._image_root, e.image)
            captions = []
            for k, c in enumerate(e.captions):
                if pre_caption(c):
                    captions.append(c)
                else:
                    self.report.add(path, f"empty caption ({e.where}, caption {k})", split)
            if captions:
                key = n if is_pair_split(split) else e.key
                items.setdefault(key, (e, []))[1].extend(captions)
        bad: set[str] = set()  # each bad image is reported once
        cached = ("", b"")     # pair splits list an image's captions together: read it once
        for e, captions in items.values():
            path = os.path.join(self._image_root, e.image)
            if path in bad:
                continue
            if cached[0] != path:
                try:
                    cached = (path, read_checked(path, self._verify))
                except ImageError as err:
                    bad.add(path)
                    self.report.add(path, f"{str(err).removeprefix(path + ': ')} ({e.where})", split)
                    continue
            for group in ([c] for c in captions) if is_pair_split(split) else [captions]:
                yield self._record(e, cached[1], group)

    def _record(self, e: Entry, data: bytes, captions: list[str]) -> dict[str, Any]:
        return {"image": data, "image_id": self._image_id(e), "image_path": e.image, "captions": captions}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _named_config(name: str) -> tfds.core.BuilderConfig:
    """The config of a builder named by the user (written as <builder>/<name>)."""
    if not _NAME.match(name):
        raise DataError(f"dataset name {name!r}: use letters, digits, '_', '.', '-'")
    return tfds.core.BuilderConfig(name=name, version=VERSION)


class BlipPairs(_AnnotatedBuilder, skip_registration=True):
    """Image-text pairs in BLIP's annotation format (also the released CapFilt JSONs)."""

    def __init__(self, *, data_dir: str, name: str, annotations: Sequence[str], image_root: str,
                 verify_images: bool = True) -> None:
        config = _named_config(name)
        self.SOURCE = ", ".join(annotations)
        super().__init__(data_dir=data_dir, image_root=image_root, splits=parse_annotation_specs(annotations),
                         config=config, verify_images=verify_images)


class BlipWebdataset(_ImageTextBuilder, skip_registration=True):
    """Image-text pairs from webdataset tar shards (img2dataset's output): one train record per
    usable sample, image_id = its integer key, image_path = "SHARD.tar/KEY"; see data/webdataset.py."""

    def __init__(self, *, data_dir: str, name: str, shards: str | Sequence[str], verify_images: bool = True) -> None:
        config = _named_config(name)
        self.SOURCE = shards if isinstance(shards, str) else ", ".join(shards)
        self.reader = webdataset.ShardReader(webdataset.expand_shards(shards), verify_images)
        super().__init__(data_dir=data_dir, config=config)

    def _split_names(self) -> Sequence[str]:
        return ["train"]

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        for shard, s in self.reader:
            if isinstance(s, webdataset.Skipped):  # key "": the shard itself (cut, count off its index)
                self.report.add(f"{shard}/{s.key}" if s.key else shard, s.reason, split)
                continue
            yield {"image": s.image, "image_id": s.image_id, "image_path": f"{os.path.basename(shard)}/{s.key}",
                   "captions": [s.caption]}

    def report_extras(self) -> dict[str, Any]:
        return {"shards": len(self.reader.shards), "index_checked_shards": self.reader.index_checked}


class _Karpathy(_AnnotatedBuilder, skip_registration=True):
    def __init__(self, *, data_dir: str, annotations: str, image_root: str, verify_images: bool = True) -> None:
        self.SOURCE = annotations
        super().__init__(data_dir=data_dir, image_root=image_root, splits=parse_karpathy(annotations),
                         verify_images=verify_images)


class BlipCocoKarpathy(_Karpathy, skip_registration=True):
    """COCO with Karpathy's splits (dataset_coco.json; train includes restval), ids = COCO ids."""


class BlipFlickrKarpathy(_Karpathy, skip_registration=True):
    """Flickr30k with Karpathy's splits (dataset_flickr30k.json), ids = Karpathy's imgid."""


class BlipSynthetic(_ImageTextBuilder, skip_registration=True):
    """Rendered shape scenes with true captions; train_web has labelled caption noise."""

    def __init__(self, *, data_dir: str, cfg: synthetic.SyntheticConfig) -> None:
        self.cfg = cfg
        self.SOURCE = f"synthetic config {cfg}"
        self.noise_counts: dict[str, int] = {}
        super().__init__(data_dir=data_dir, config=tfds.core.BuilderConfig(name=cfg.name, version=VERSION))

    def _features(self) -> dict[str, Any]:
        return {**_base_features(),
                "noise": tfds.features.ClassLabel(names=synthetic.WEB_TEXT_KINDS),  # text kind: scores CapFilt
                "clean_caption": tfds.features.Text(),
                "scene": tfds.features.Text()}

    def _split_names(self) -> Sequence[str]:
        return list(synthetic.SPLIT_CODES)

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        for ex in synthetic.generate(self.cfg, split):
            if split == "train_web":
                kind = synthetic.WEB_TEXT_KINDS[ex.noise]
                self.noise_counts[kind] = self.noise_counts.get(kind, 0) + 1
            data = ex.image_bytes()
            base = {"image": data, "image_id": ex.image_id, "image_path": ex.image_path, "noise": ex.noise,
                    "clean_caption": ex.clean_caption, "scene": ex.scene.to_json()}
            for captions in ([c] for c in ex.captions) if is_pair_split(split) else [ex.captions]:
                yield {**base, "captions": captions}
