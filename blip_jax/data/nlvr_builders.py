"""TFDS builders for NLVR2 (array_record, images kept as their encoded bytes), one record per
(image pair, sentence).

Features (all builders): image0 / image1 (bytes: the left and the right image), image0_path /
image1_path (text, relative to the image root), sentence (text, raw: pre_caption is applied by
the pipeline), label (int64, 1 = True), identifier (text: NLVR2's `split-set-pair-sentence`
where the source has it, else generated, unique within a split), pair_id (int64: one per
distinct image pair, dense by first appearance, splits in name order; unique within a dataset).
The synthetic builder adds scene0 / scene1 (JSON, synthetic.Scene) and template.

Sources:
- blip_nlvr: BLIP's nlvr_{train,dev,test}.json, each a JSON list of {"images": [left, right],
  "sentence", "label": "True" | "False"}, image paths joined to --image_root as the original
  (data/nlvr_dataset.py) does; BLIP calls dev "val", any split names are accepted. These files
  carry no identifier: an entry's optional "identifier" is used, else "<split>-<n>" (n: its
  position in the split).
- nlvr2: the official json-lines files (train.json, dev.json, test1.json; one object per line
  with "identifier", "sentence", "label" and, in train.json, "directory"). Relied on: the
  NLVR2 README (lil-lab/nlvr, nlvr2/README.md) for the identifier `split-set_id-pair_id-
  sentence_id` and the image names `split-set_id-pair_id-img0.png` (left) / `-img1.png` (right);
  the images as distributed, train's in numbered folders named by "directory" (as read by
  public NLVR2 loaders, e.g. ViLT's and CIRR's paths `train/<directory>/train-...-img0.png`),
  dev's and test1's flat in folders named as the identifier's split. So under --image_root:
  `train/<directory>/<name>` (`train/<name>` without a directory) and `<split>/<name>`, each also
  looked for under `images/` (the layout some copies unpack to).

A missing or undecodable image (left or right) skips the example: each bad file is named in a
warning and in `self.report` once, with how many sentences it took down; an empty sentence is
skipped and reported too. A split left with no record is a DataError, and so is an identifier
repeated within a split (predictions are keyed by it) or a label that is not true/false.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from blip_jax.data import synthetic_nlvr
from blip_jax.data.annotations import _json_objects, json_lines, split_of
from blip_jax.data.builders import VERSION, _ImageTextBuilder, _NAME
from blip_jax.data.decode import read_checked
from blip_jax.data.report import DataError
from blip_jax.image import ImageError
from blip_jax.tokenizer import pre_caption

log = logging.getLogger(__name__)
_NLVR2_ID = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<set>\d+)-(?P<pair>\d+)-(?P<sentence>\d+)$")
_LABELS = {"true": 1, "false": 0}


def nlvr_features() -> dict[str, Any]:
    return {
        "image0": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes, as in the source
        "image1": tfds.features.Tensor(shape=(), dtype=np.object_),
        "image0_path": tfds.features.Text(),
        "image1_path": tfds.features.Text(),
        "sentence": tfds.features.Text(),
        "label": np.int64,
        "identifier": tfds.features.Text(),
        "pair_id": np.int64,
    }


@dataclasses.dataclass
class PairEntry:
    images: tuple[str, str]   # left, right: paths relative to the image root
    sentence: str             # raw; pre_caption is applied by the pipeline
    label: int                # 1 = True
    identifier: str           # "" until the builder names it (BLIP's files have none)
    where: str                # "file: entry N" / "file: line N", for skip reports


def _label(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise DataError(f"{where}: 'label' must be \"True\" or \"False\", got {value!r:.40}")


def _sentence(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: 'sentence' must be a string, got {value!r:.80}")
    return value


def parse_blip_nlvr_json(path: str) -> list[PairEntry]:
    """BLIP's nlvr_*.json: [{"images": [left, right], "sentence": str, "label": "True"|"False",
    "identifier"?: str}, ...]."""
    entries = []
    for where, item in _json_objects(path, ("images", "sentence", "label")):
        images = item["images"]
        if not (isinstance(images, list) and len(images) == 2 and all(isinstance(p, str) and p for p in images)):
            raise DataError(f"{where}: 'images' must be a list of two non-empty paths, got {images!r:.80}")
        identifier = item.get("identifier", "")
        if not isinstance(identifier, str):
            raise DataError(f"{where}: 'identifier' must be a string, got {identifier!r:.40}")
        entries.append(PairEntry((images[0], images[1]), _sentence(item["sentence"], where),
                                 _label(item["label"], where), identifier, where))
    return entries


def nlvr2_image_paths(identifier: str, directory: Any = None) -> tuple[str, str]:
    """The left and right image of an official NLVR2 identifier, relative to the image root:
    "train-10171-0-0" in directory 51 -> ("train/51/train-10171-0-img0.png", ...-img1.png);
    "dev-850-0-1" -> ("dev/dev-850-0-img0.png", ...)."""
    m = _NLVR2_ID.match(identifier)
    if m is None:
        raise ValueError(f"{identifier!r} is not an NLVR2 identifier (split-set-pair-sentence)")
    stem = f"{m['split']}-{m['set']}-{m['pair']}"
    folder = m["split"] if directory is None else f"{m['split']}/{directory}"
    return f"{folder}/{stem}-img0.png", f"{folder}/{stem}-img1.png"


def parse_nlvr2_jsonl(path: str) -> list[PairEntry]:
    """The official NLVR2 files: one JSON object per line with "identifier", "sentence", "label"
    and (train) "directory"; image paths from nlvr2_image_paths."""
    entries = []
    for where, item in json_lines(path, ("identifier", "sentence", "label"),
                                  "NLVR2's files hold one object per line; BLIP's nlvr_*.json "
                                  "are --source blip_nlvr"):
        identifier, directory = item["identifier"], item.get("directory")
        if not isinstance(identifier, str) or not _NLVR2_ID.match(identifier):
            raise DataError(f"{where}: 'identifier' must be NLVR2's split-set-pair-sentence, got {identifier!r:.60}")
        if directory is not None and not isinstance(directory, (int, str)):
            raise DataError(f"{where}: 'directory' must be a number, got {directory!r:.40}")
        entries.append(PairEntry(nlvr2_image_paths(identifier, directory), _sentence(item["sentence"], where),
                                 _label(item["label"], where), identifier, where))
    return entries


def split_files(specs: Sequence[str]) -> dict[str, list[str]]:
    """['train=a.json', 'val=b.json,c.json', 'd.json'] -> {'train': [a, d], 'val': [b, c]}."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        split, paths = split_of(spec)
        out.setdefault(split, []).extend(p for p in paths.split(",") if p)
    return out


class NlvrBuilder(_ImageTextBuilder, skip_registration=True):
    """Shared NLVR generation: features, per-split statistics (labels, pairs), identifier checks."""

    def _features(self) -> dict[str, Any]:
        return nlvr_features()

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        n, pairs, images, labels = 0, set(), set(), collections.Counter()
        seen: dict[str, str] = {}
        for ex in self._examples(split):
            ident = ex["identifier"]
            if ident in seen:
                raise DataError(f"{self.SOURCE}: identifier {ident!r} appears twice in split {split!r} "
                                f"({seen[ident]} and {ex['image0_path']}): predictions are keyed by it")
            seen[ident] = ex["image0_path"]
            pairs.add(int(ex["pair_id"]))
            images.update((ex["image0_path"], ex["image1_path"]))
            labels[int(ex["label"])] += 1
            yield n, ex
            n += 1
        if n == 0:
            skipped = [s for s in self.report.items if s.split == split]
            detail = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
            raise DataError(f"{self.name} split {split!r} from {self.SOURCE} has no usable example "
                            f"({len(skipped)} skipped{': ' + detail if detail else ''})")
        # min/max_image_id: the pair id range (sources.RecordSource keeps concatenated datasets apart)
        self.stats[split] = {"records": n, "images": len(images), "pairs": len(pairs), "true": labels[1],
                             "false": labels[0], "min_image_id": min(pairs), "max_image_id": max(pairs)}

    def report_extras(self) -> dict[str, Any]:
        """Added to prepare_report.json."""
        return {"record_unit": "sentences",
                "labels": {split: {"true": s["true"], "false": s["false"]} for split, s in self.stats.items()}}


class _PairFilesBuilder(NlvrBuilder, skip_registration=True):
    """Builders over pair entries plus an image folder."""

    def __init__(self, *, data_dir: str, splits: Mapping[str, list[PairEntry]], image_root: str,
                 config: tfds.core.BuilderConfig | None = None, verify_images: bool = True) -> None:
        if not os.path.isdir(image_root):
            raise DataError(f"--image_root {image_root!r} is not a directory")
        self._root, self._verify = image_root, verify_images
        self._entries = {split: [e if e.identifier else dataclasses.replace(e, identifier=f"{split}-{i}")
                                 for i, e in enumerate(entries)] for split, entries in splits.items()}
        self._pair_ids: dict[tuple[str, str], int] = {}
        for split in sorted(self._entries):
            for e in self._entries[split]:
                self._pair_ids.setdefault(e.images, len(self._pair_ids))
        super().__init__(data_dir=data_dir, config=config)

    def _split_names(self) -> Sequence[str]:
        return list(self._entries)

    def _path(self, image: str) -> str:
        return os.path.join(self._root, image)

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        bad: dict[str, list[Any]] = {}  # path -> [reason, first sentence's where, sentences]
        cache: dict[str, bytes] = {}    # the last pair's files: its sentences are often consecutive
        for e in self._entries[split]:
            paths = [self._path(p) for p in e.images]
            if not pre_caption(e.sentence):
                self.report.add(paths[0], f"empty sentence ({e.where})", split)
                continue
            data = []
            for path in paths:
                if path in bad:
                    bad[path][2] += 1
                    break
                if path not in cache:
                    try:
                        blob = read_checked(path, self._verify)
                    except ImageError as err:
                        reason = str(err).removeprefix(path + ": ")
                        log.warning("%s: %s (%s): skipping its sentences", path, reason, e.where)
                        bad[path] = [reason, e.where, 1]
                        break
                    cache = {**({k: v for k, v in cache.items() if k in paths}), path: blob}
                data.append(cache[path])
            if len(data) < 2:
                continue
            yield {"image0": data[0], "image1": data[1], "image0_path": e.images[0], "image1_path": e.images[1],
                   "sentence": e.sentence, "label": e.label, "identifier": e.identifier,
                   "pair_id": self._pair_ids[e.images]}
        for path, (reason, where, n) in bad.items():
            self.report.add(path, f"{reason} ({n} sentence{'s' * (n > 1)}, first: {where})", split)


class BlipNlvr(_PairFilesBuilder, skip_registration=True):
    """BLIP's NLVR2 annotation files: nlvr_train.json, nlvr_dev.json (val), nlvr_test.json."""

    def __init__(self, *, data_dir: str, name: str, annotations: Sequence[str], image_root: str,
                 verify_images: bool = True) -> None:
        if not _NAME.match(name):
            raise DataError(f"dataset name {name!r}: use letters, digits, '_', '.', '-'")
        self.SOURCE = ", ".join(annotations)
        splits = {split: [e for path in paths for e in parse_blip_nlvr_json(path)]
                  for split, paths in split_files(annotations).items()}
        super().__init__(data_dir=data_dir, splits=splits, image_root=image_root,
                         config=tfds.core.BuilderConfig(name=name, version=VERSION), verify_images=verify_images)


class BlipNlvr2(_PairFilesBuilder, skip_registration=True):
    """The official NLVR2 json-lines files (train.json, dev.json, test1.json) and image folders."""

    def __init__(self, *, data_dir: str, annotations: Sequence[str], image_root: str,
                 verify_images: bool = True) -> None:
        self.SOURCE = ", ".join(annotations)
        splits = {split: [e for path in paths for e in parse_nlvr2_jsonl(path)]
                  for split, paths in split_files(annotations).items()}
        super().__init__(data_dir=data_dir, splits=splits, image_root=image_root, verify_images=verify_images)

    def _path(self, image: str) -> str:
        path = os.path.join(self._root, image)
        if not os.path.exists(path):
            alternative = os.path.join(self._root, "images", image)
            if os.path.exists(alternative):
                return alternative
        return path


class BlipSyntheticNlvr(NlvrBuilder, skip_registration=True):
    """True/false statements about pairs of rendered shape scenes (blip_jax/data/synthetic_nlvr.py)."""

    def __init__(self, *, data_dir: str, cfg: synthetic_nlvr.SyntheticNlvrConfig) -> None:
        self.cfg = cfg
        self.SOURCE = f"synthetic NLVR config {cfg}"
        self.template_counts: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
            lambda: collections.defaultdict(collections.Counter))
        super().__init__(data_dir=data_dir, config=tfds.core.BuilderConfig(name=cfg.name, version=VERSION))

    def _features(self) -> dict[str, Any]:
        return {**nlvr_features(), "scene0": tfds.features.Text(), "scene1": tfds.features.Text(),
                "template": tfds.features.Text()}

    def _split_names(self) -> Sequence[str]:
        return list(synthetic_nlvr.SPLIT_CODES)

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        for ex in synthetic_nlvr.generate(self.cfg, split):
            (data0, data1), (scene0, scene1) = ex.image_bytes(), (s.to_json() for s in ex.scenes)
            for st in ex.statements:
                self.template_counts[split][st.template]["true" if st.label else "false"] += 1
                yield {"image0": data0, "image1": data1, "image0_path": ex.image_paths[0],
                       "image1_path": ex.image_paths[1], "sentence": st.sentence, "label": int(st.label),
                       "identifier": st.identifier, "pair_id": ex.pair_id, "scene0": scene0, "scene1": scene1,
                       "template": st.template}

    def report_extras(self) -> dict[str, Any]:
        return {**super().report_extras(),
                "templates": {split: {t: dict(c) for t, c in sorted(counts.items())}
                              for split, counts in self.template_counts.items()}}
