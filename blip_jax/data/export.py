"""Image files out of a written dataset, so BLIP-format annotations can point at them.

CapFilt's output is such a file: kept web captions and synthetic captions per image path. For
data whose images live only inside a TFDS dataset (the synthetic data), export them first, then
`prepare --source json --annotations capfilt.json --image_root OUT_DIR`.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from blip_jax.data.prepare import dataset_dir
from blip_jax.data.report import DataError


def export_images(data_dir: str, dataset_name: str, split: str, out_dir: str) -> int:
    """Writes every distinct image of the split to out_dir/<image_path> (its stored bytes,
    unchanged); returns how many files it wrote."""
    dataset_dir(data_dir, dataset_name)  # a clear error if it was never written
    source = tfds.data_source(dataset_name, split=split, data_dir=data_dir)
    root = os.path.realpath(out_dir)
    written: set[str] = set()
    for i in range(len(source)):
        rec = source[i]
        rel = rec["image_path"].decode()
        path = os.path.realpath(os.path.join(root, rel))
        if not path.startswith(root + os.sep):
            raise DataError(f"{dataset_name}:{split}[{i}]: image path {rel!r} leaves {out_dir}")
        if path in written:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(rec["image"])
        written.add(path)
    return len(written)
