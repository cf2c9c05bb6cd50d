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

import dataclasses
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

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
            raise self._no_example_error(split)
        self.stats[split] = {"records": n, "images": len(ids), "min_image_id": min(ids), "max_image_id": max(ids)}

    def _no_example_error(self, split: str) -> DataError:
        skipped = [s for s in self.report.items if s.split == split]
        detail = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
        return DataError(f"{self.name} split {split!r} from {self.SOURCE} has no usable example "
                         f"({len(skipped)} skipped{': ' + detail if detail else ''})")


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


BEAM_NAMESPACE = "blip_webdataset"  # the Beam metrics (counters "samples", "skipped") of a Beam build
_SHARD_REPORTS = "webdataset_shard_reports"  # in TFDS's temporary dataset folder during a Beam build
_POSITION_BITS = 32  # Beam record key: shard index << 32 | the sample's position among its shard's samples


def _webdataset_record(shard: str, s: webdataset.Sample) -> dict[str, Any]:
    return {"image": s.image, "image_id": s.image_id, "image_path": f"{os.path.basename(shard)}/{s.key}",
            "captions": [s.caption]}


def _beam_read_shard(item: tuple[int, str], verify: bool, reports_dir: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """One Beam work item: a whole shard -> its (key, record)s. What it skipped (and its id range,
    its index check, or the DataError that stopped it) goes to reports_dir/INDEX.json, written
    once the shard is read to the end (a retried work item writes the same file again), and is
    counted in the Beam metrics. Module level so that Beam pickles it by reference."""
    import apache_beam as beam  # only a Beam build gets here

    index, shard = item
    samples = beam.metrics.Metrics.counter(BEAM_NAMESPACE, "samples")
    skipped_counter = beam.metrics.Metrics.counter(BEAM_NAMESPACE, "skipped")
    result, skipped, n = webdataset.ShardResult(shard), [], 0
    try:
        for s in webdataset.read_shard(shard, verify, result):
            if isinstance(s, webdataset.Skipped):
                skipped.append([s.key, s.reason])
                skipped_counter.inc()
                continue
            samples.inc()
            yield (index << _POSITION_BITS) | n, _webdataset_record(shard, s)
            n += 1
    except DataError as e:  # the driver raises it again, as the in-process build would
        _write_shard_report(reports_dir, index, {"index": index, "shard": shard, "error": str(e)})
        raise
    _write_shard_report(reports_dir, index, {"index": index, **dataclasses.asdict(result), "skipped": skipped})


def _write_shard_report(reports_dir: str, index: int, payload: dict[str, Any]) -> None:
    folder = epath.Path(reports_dir)  # epath: also a bucket path when the workers run elsewhere
    tmp = folder / f"{index:08d}.json.tmp{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(payload))
    tmp.replace(folder / f"{index:08d}.json")


class BlipWebdataset(_ImageTextBuilder, skip_registration=True):
    """Image-text pairs from webdataset tar shards (img2dataset's output): one train record per
    usable sample, image_id = its integer key, image_path = "SHARD.tar/KEY"; see data/webdataset.py.

    Built in-process, or on Apache Beam when download_and_prepare gets a DownloadConfig with a
    beam_runner or beam_options: then each shard is one work item (workers read shards in
    parallel), each record's key is (shard index, position in its shard), so the written dataset
    is the in-process build's, record for record and in the same order; each worker writes what
    its shard skipped to a small JSON file in the dataset's temporary folder, which the driver
    merges into `report` (and `stats`) in shard order after the pipeline, as the in-process build
    fills them.

    Why TFDS's default Beam writer and not nondeterministic_order: in TFDS 4.9.10 a Beam build
    goes through `writer.BeamWriter` (keys -> GroupByKey into output shards -> each shard sorted by
    key and written by the builder's ExampleWriter, i.e. the same
    `ArrayRecordFileAdapter.write_examples` (ArrayRecordWriter, group_size:1) as the in-process
    `writer.Writer`), so array_record comes out directly with no conversion step. The other Beam
    writer, `NoShuffleBeamWriter` (DownloadConfig(nondeterministic_order=True)), writes through
    `FileAdapter.beam_sink`, which the array_record adapter does not implement (only tfrecord's
    does), and it would lose the record order anyway. With disable_shuffling (set in _info) the
    BeamWriter keeps the keys unhashed: output shards hold contiguous key ranges, each sorted."""

    def __init__(self, *, data_dir: str, name: str, shards: str | Sequence[str], verify_images: bool = True) -> None:
        config = _named_config(name)
        self.SOURCE = shards if isinstance(shards, str) else ", ".join(shards)
        self.reader = webdataset.ShardReader(webdataset.expand_shards(shards), verify_images)
        self._beam = False  # set per download_and_prepare, from its DownloadConfig
        self._reports_dir: epath.Path | None = None
        self.beam_counters: dict[str, int] | None = None  # a Beam build's metrics (None: built in-process)
        super().__init__(data_dir=data_dir, config=config)

    def _split_names(self) -> Sequence[str]:
        return ["train"]

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        for shard, s in self.reader:
            if isinstance(s, webdataset.Skipped):  # key "": the shard itself (cut, count off its index)
                self.report.add(f"{shard}/{s.key}" if s.key else shard, s.reason, split)
                continue
            yield _webdataset_record(shard, s)

    def report_extras(self) -> dict[str, Any]:
        extras = {"shards": len(self.reader.shards), "index_checked_shards": self.reader.index_checked}
        if self.beam_counters is not None:
            extras["beam_counters"] = self.beam_counters
        return extras

    # ---- Beam ----

    def _generate_splits(self, dl_manager: tfds.download.DownloadManager,
                         download_config: tfds.download.DownloadConfig) -> Sequence[tfds.core.SplitInfo]:
        self._beam = download_config.beam_runner is not None or download_config.beam_options is not None
        if not self._beam:
            return super()._generate_splits(dl_manager, download_config)
        # data_dir is TFDS's temporary folder here (renamed into place on success, deleted on failure).
        self._reports_dir = epath.Path(self.data_dir) / _SHARD_REPORTS
        self._reports_dir.mkdir(parents=True, exist_ok=True)
        try:
            split_infos = super()._generate_splits(dl_manager, download_config)
        except Exception as e:  # Beam wraps a worker's exception (a RuntimeError with its traceback)
            reports = self._shard_reports()
            errors = [r["error"] for r in reports if "error" in r]
            if errors:
                raise DataError(errors[0]) from e
            if len(reports) == len(self.reader.shards) and not any(r["samples"] for r in reports):
                self._merge_shard_reports(reports, "train")
                raise self._no_example_error("train") from e  # TFDS's writer fails on an empty split
            raise
        reports = self._shard_reports()
        missing = sorted(set(range(len(self.reader.shards))) - {r["index"] for r in reports})
        if missing:
            raise RuntimeError(f"Beam build of {self.SOURCE}: no report from the worker(s) of shard(s) "
                               f"{', '.join(self.reader.shards[i] for i in missing[:5])}")
        self._merge_shard_reports(reports, "train")
        self._reports_dir.rmtree()
        written = sum(info.num_examples for info in split_infos)
        if written != self.stats["train"]["records"]:
            raise RuntimeError(f"Beam build of {self.SOURCE}: {written} records written, the shard reports "
                               f"count {self.stats['train']['records']}")
        return split_infos

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        if not self._beam:
            return super()._split_generators(dl_manager)
        import apache_beam as beam
        # Create spreads its elements over the workers (it reshuffles them), one shard per element.
        return {"train": ("ListShards" >> beam.Create(list(enumerate(self.reader.shards)))
                          | "ReadShard" >> beam.FlatMap(_beam_read_shard, verify=self.reader.verify,
                                                        reports_dir=os.fspath(self._reports_dir)))}

    def _process_pipeline_result(self, pipeline_result: Any) -> None:
        from apache_beam.metrics.metric import MetricsFilter
        counters: dict[str, int] = {}
        try:
            query = pipeline_result.metrics().query(MetricsFilter().with_namespace(BEAM_NAMESPACE))
        except Exception as e:  # noqa: BLE001 - a runner without metrics: the shard reports still count
            logging.getLogger(__name__).warning("no Beam metrics from this runner (%s: %s)", type(e).__name__, e)
            return
        for c in query["counters"]:  # per step; committed where the runner tracks it
            value = c.committed if c.committed is not None else c.attempted
            counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + int(value)
        self.beam_counters = {name: counters.get(name, 0) for name in ("samples", "skipped")}

    def _shard_reports(self) -> list[dict[str, Any]]:
        return sorted((json.loads(p.read_text()) for p in self._reports_dir.glob("*.json")), key=lambda r: r["index"])

    def _merge_shard_reports(self, reports: list[dict[str, Any]], split: str) -> None:
        """The workers' shard reports -> report, stats and the index count, as the in-process build
        fills them (the same items in the same order), after the same cross-shard id check."""
        webdataset.check_ranges([webdataset.ShardResult(**{k: r[k] for k in ("shard", "samples", "min_id", "max_id",
                                                                              "index_checked")}) for r in reports])
        for r in reports:
            for key, reason in r["skipped"]:
                self.report.add(f"{r['shard']}/{key}" if key else r["shard"], reason, split)
        self.reader.index_checked = sum(r["index_checked"] for r in reports)
        with_samples = [r for r in reports if r["samples"]]
        if with_samples:  # ids are unique: within a shard (duplicates skipped) and across (checked above)
            n = sum(r["samples"] for r in with_samples)
            self.stats[split] = {"records": n, "images": n, "min_image_id": min(r["min_id"] for r in with_samples),
                                 "max_image_id": max(r["max_id"] for r in with_samples)}


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
