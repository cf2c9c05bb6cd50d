"""Annotation files -> image entries: BLIP's JSON list format and Karpathy's split files.

A malformed file is a DataError naming the file and the position (line/column for JSON syntax,
entry index for a wrong structure); an empty caption is not an error here: the builders skip
and report it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from blip_jax.data.report import DataError


@dataclasses.dataclass
class Entry:
    image: str            # path relative to the image root
    captions: list[str]   # raw captions, possibly empty strings (skipped later)
    key: Any              # what identifies the image: its image_id if given, else its path
    where: str            # "file: entry N", for skip reports
    image_id: int | None = None  # a stable integer id when the source has one (COCO id)


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def _captions(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return list(value)
    raise DataError(f"{where}: 'caption' must be a string or a list of strings, got {value!r:.80}")


def parse_blip_json(path: str) -> list[Entry]:
    """BLIP's release format: [{"image": rel_path, "caption": str | [str], "image_id"?: any}, ...]."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{'image', 'caption'}} objects, "
                        f"got a {type(data).__name__}")
    entries = []
    for i, item in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object, got {item!r:.80}")
        missing = [k for k in ("image", "caption") if k not in item]
        if missing:
            raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
        image = item["image"]
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: 'image' must be a non-empty path string, got {image!r:.80}")
        key = item.get("image_id", image)
        if not isinstance(key, (str, int)):
            key = json.dumps(key, sort_keys=True)  # any JSON value identifies an image
        entries.append(Entry(image, _captions(item["caption"], where), key, where))
    return entries


# Karpathy's files put 'restval' (the rest of COCO val2014) into training, as BLIP does.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def parse_karpathy(path: str) -> dict[str, list[Entry]]:
    """Karpathy's dataset_{coco,flickr30k}.json: {"images": [{"filepath"?, "filename", "split",
    "sentences": [{"raw": str}], "cocoid" | "imgid"}]} -> entries per split (train, val, test)."""
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected Karpathy's format, an object with an 'images' list")
    splits: dict[str, list[Entry]] = {"train": [], "val": [], "test": []}
    for i, item in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object, got {item!r:.80}")
        missing = [k for k in ("filename", "split", "sentences") if k not in item]
        if missing:
            raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
        split = KARPATHY_SPLITS.get(item["split"])
        if split is None:
            raise DataError(f"{where}: unknown split {item['split']!r} (expected one of {sorted(KARPATHY_SPLITS)})")
        sentences = item["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(s, dict) and isinstance(s.get("raw"), str)
                                                      for s in sentences):
            raise DataError(f"{where}: 'sentences' must be a list of {{'raw': str}} objects")
        image = os.path.join(item.get("filepath") or "", item["filename"])
        # COCO's own id where there is one (cocoid); Flickr30k has only Karpathy's index (imgid).
        image_id = item.get("cocoid", item.get("imgid"))
        if not isinstance(image_id, int):
            raise DataError(f"{where}: needs an integer 'cocoid' or 'imgid', got {image_id!r:.40}")
        splits[split].append(Entry(image, [s["raw"] for s in sentences], image_id, where, image_id))
    return splits


def split_of(spec: str) -> tuple[str, str]:
    """'val=path.json' -> ('val', 'path.json'); a bare path is the train split."""
    name, sep, path = spec.partition("=")
    if sep and name and os.sep not in name and not os.path.exists(spec):
        return name, path
    return "train", spec


def parse_annotation_specs(specs: Sequence[str]) -> dict[str, list[Entry]]:
    """Several BLIP-format files, each optionally 'split=file'; files of one split are concatenated."""
    splits: dict[str, list[Entry]] = {}
    for spec in specs:
        split, path = split_of(spec)
        splits.setdefault(split, []).extend(parse_blip_json(path))
    return splits
