"""Random access over one or several TFDS splits (concatenated), sharded across processes.

Sharding is strided (process k of n reads records k, k + n, ...) rather than in blocks, so
every process sees the same mix when splits of different kinds are concatenated; every shard
has the same length (the last len % n records are dropped) so hosts stay in step.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from blip_jax.data import worker_lifetime
from blip_jax.data.prepare import dataset_dir, load_report
from blip_jax.data.report import DataError

Source = tuple[str, str]  # (dataset name as written by prepare, split)


def normalize_sources(dataset_name: str | Sequence[Source], split: str | None) -> list[Source]:
    if isinstance(dataset_name, str):
        if split is None:
            raise ValueError("give a split with a dataset name, or a list of (dataset_name, split)")
        return [(dataset_name, split)]
    if split is not None:
        raise ValueError("split must be None when dataset_name is a list of (dataset_name, split)")
    sources = [tuple(s) for s in dataset_name]
    if not sources or any(len(s) != 2 for s in sources):
        raise ValueError(f"expected a non-empty list of (dataset_name, split), got {dataset_name!r}")
    return sources  # type: ignore[return-value]


def _open(data_dir: str, name: str, split: str):
    dataset_dir(data_dir, name)  # a clear error when the dataset was never written
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir)
    except (ValueError, KeyError) as e:
        raise DataError(f"{name} in {data_dir}: cannot read split {split!r} ({e})") from None


class RecordSource:
    """grain RandomAccessDataSource: element i of this shard -> a dict of python values."""

    def __init__(self, data_dir: str, sources: Sequence[Source], *, shard_index: int = 0,
                 shard_count: int = 1, drop_remainder: bool = True) -> None:
        """drop_remainder=False (a pass over every record, e.g. CapFilt): shards are padded to
        equal length with repeats of earlier records, marked padding=True."""
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
        self.data_dir, self.sources = data_dir, list(sources)
        self.shard_index, self.shard_count = shard_index, shard_count
        sizes = [len(_open(data_dir, name, split)) for name, split in self.sources]
        self._starts = list(np.cumsum([0, *sizes]))
        total = self._starts[-1]
        if total == 0:
            raise DataError(f"no records in {self._describe()} under {data_dir}")
        self._total = total
        self._len = total // shard_count if drop_remainder else -(-total // shard_count)
        if self._len == 0:
            raise DataError(f"{total} records in {self._describe()} cannot fill {shard_count} shards")
        self._id_offsets = self._image_id_offsets() if len(self.sources) > 1 else [0]
        self._lock = threading.Lock()
        self._readers: list[Any] | None = None

    def _image_id_offsets(self) -> list[int]:
        """Ids are unique within a dataset (across its splits); each further dataset is shifted
        past the ones before it, so ids stay unique in the mix (retrieval uses them for positives)."""
        offsets: dict[str, int] = {}
        next_free = 0
        for name, _ in self.sources:
            if name not in offsets:
                offsets[name] = next_free
                splits = load_report(self.data_dir, name)["splits"].values()
                next_free += max(s["max_image_id"] for s in splits) + 1
        return [offsets[name] for name, _ in self.sources]

    def _describe(self) -> str:
        return " + ".join(f"{n}:{s}" for n, s in self.sources)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:  # grain checks it when restoring a checkpointed iterator
        return (f"RecordSource({self._describe()}, data_dir={self.data_dir!r}, "
                f"shard={self.shard_index}/{self.shard_count})")

    def __getstate__(self) -> dict[str, Any]:  # worker processes reopen the files themselves
        state = self.__dict__.copy()
        state.pop("_lock"), state.pop("_readers")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock, self._readers = threading.Lock(), None
        # Unpickled in a grain worker: that worker must not outlive a killed trainer.
        worker_lifetime.exit_with_parent()

    def _sources(self) -> list[Any]:
        with self._lock:  # grain reads from several threads
            if self._readers is None:
                self._readers = [_open(self.data_dir, n, s) for n, s in self.sources]
            return self._readers

    def locate(self, index: int) -> tuple[int, int]:
        """Index in this shard -> (source number, record index in that split)."""
        if not 0 <= index < self._len:
            raise IndexError(f"record {index} out of range for {self._len} records")
        g = (self.shard_index + index * self.shard_count) % self._total
        k = bisect.bisect_right(self._starts, g) - 1
        return k, g - self._starts[k]

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, local = self.locate(int(index))
        rec = self._sources()[k][local]
        name, split = self.sources[k]
        path = rec["image_path"].decode()
        out = {"image": rec["image"], "captions": [c.decode() for c in rec["captions"]],
               "image_id": int(rec["image_id"]) + self._id_offsets[k], "image_path": path,
               "where": f"{name}:{split}[{local}] ({path})", "index": self._starts[k] + local,
               "padding": self.shard_index + index * self.shard_count >= self._total}
        if "noise" in rec:
            out["noise"] = int(rec["noise"])
        return out
