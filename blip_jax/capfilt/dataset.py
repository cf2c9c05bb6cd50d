"""The bootstrapped dataset as TFDS (array_record): one record per kept (image, text) pair.

Same layout as every training split of blip_jax.data.builders (image bytes copied from the source
record, image_id, image_path, captions=[text]) plus `source` ("web" | "synthetic") and `score`
(the filter's ITM match probability), so `make_train_loader(data_dir, [(name, "train")], ...)`
reads it and it mixes with the source dataset's other splits (e.g. synthetic train_clean).
"""

from __future__ import annotations

import os
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from blip_jax.data import builders, prepare
from blip_jax.data.report import DataError
from blip_jax.data.sources import RecordSource, Source

SPLIT = "train"


class BlipCapfilt(builders._ImageTextBuilder, skip_registration=True):
    """CapFilt output: kept web and synthetic texts of each image with their filter scores."""

    def __init__(self, *, data_dir: str, name: str, pairs: Sequence[tuple[int, str, str, float]],
                 source_data_dir: str, sources: Sequence[Source], origin: str) -> None:
        """pairs: (record index in the concatenated sources, text, "web"|"synthetic", score)."""
        if not builders._NAME.match(name):
            raise DataError(f"output_name {name!r}: use letters, digits, '_', '.', '-'")
        self.SOURCE = origin
        self._pairs = list(pairs)
        self._records = RecordSource(source_data_dir, sources)
        super().__init__(data_dir=data_dir,
                         config=tfds.core.BuilderConfig(name=name, version=builders.VERSION))

    def _features(self) -> dict[str, Any]:
        return {**builders._base_features(), "source": tfds.features.Text(), "score": np.float32}

    def _split_names(self) -> Sequence[str]:
        return [SPLIT]

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        cached: tuple[int, dict[str, Any] | None] = (-1, None)  # an image's texts are adjacent
        for index, text, source, score in self._pairs:
            if cached[0] != index:
                cached = (index, self._records[index])
            rec = cached[1]
            yield {"image": rec["image"], "image_id": rec["image_id"], "image_path": rec["image_path"],
                   "captions": [text], "source": source, "score": np.float32(score)}


def write_dataset(*, data_dir: str, name: str, pairs: Sequence[tuple[int, str, str, float]],
                  source_data_dir: str, sources: Sequence[Source], origin: str) -> str:
    """Writes (or rewrites, when it came from the same `origin`) the dataset; returns its TFDS
    name for `tfds.data_source(name, data_dir=data_dir)` and the loaders."""
    builder = BlipCapfilt(data_dir=data_dir, name=name, pairs=pairs, source_data_dir=source_data_dir,
                          sources=sources, origin=origin)
    report_path = os.path.join(builder.data_dir, prepare.REPORT_FILE)
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as f:
            previous = json.load(f).get("source")
        if previous != origin:
            raise DataError(f"{builder.data_dir} already holds a CapFilt dataset from another run "
                            f"({previous}); choose another output_name or delete that folder")
    return prepare.build(builder, overwrite=True)["dataset"]
