"""The bootstrapped dataset as webdataset tar shards, laid out as img2dataset lays out its output,
for other tools and for `python -m blip_jax.data.prepare --source webdataset`.

One shard per unit of records (output.UnitPlan): DIR/UUUUU.tar holds the kept pairs of the records
of unit UUUUU, so the shards are the same whatever the number of processes that computed the
units or wrote the shards. Each process writes the shards of its share of the units (every
count-th), each to a temporary name then renamed; a shard that exists is complete and is not
written again. A unit with no kept pair has no shard (an empty tar reads as a broken one), so
name the shards with a glob ('DIR/*.tar') or take the list in the manifest.

One sample per kept (image, text) pair, as the TFDS output holds one record per pair and
pre-training reads one pair per record: an image whose web text and one synthetic caption were
kept is two samples with the same image bytes. Members, in sorted name order (keys ascending):
  KEY.jpg | .png | .webp  the source record's image bytes as stored, not re-encoded (the
                          extension follows the bytes' format)
  KEY.txt                 the kept text (cleaned by pre_caption, as the TFDS output holds it)
  KEY.json                {"key", "caption", "source": "web" | "synthetic", "score" (the filter's
                          ITM match probability), "index" (record number in the concatenated
                          sources), "image_id", "image_path" (as in the source), and all the
                          image's texts with which were kept: "web": {"caption", "score", "kept"}
                          and "synthetic": [{"caption", "score", "kept"}, ...]}
KEY = record index * (1 + num_captions) + slot (slot 0: the web text, s: synthetic caption s),
zero-padded to one width (9 digits or more, as img2dataset's keys): decimal, unique, ascending in
a shard, the shards' ranges disjoint, as blip_jax.data.webdataset expects of img2dataset's keys,
and key // (1 + num_captions) is the record index. That reader takes the key as the image id,
which is so a pair id (pre-training does not use image ids); the source's is "image_id" in the json.

The manifest DIR/capfilt_webdataset.json names the CapFilt workdir the shards come from (shards of
another run in the folder are an error) and, once all are written, the shards and sample counts.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from blip_jax.capfilt import output
from blip_jax.capfilt.defaults import CapFiltConfigError

DEFAULT_DIR = "webdataset"  # under the workdir, when config.webdataset_dir is ''
MANIFEST = "capfilt_webdataset.json"
MIN_KEY_DIGITS = 9  # img2dataset's default key width
MAX_KEY = 2**31 - 1  # blip_jax.data.webdataset reads keys as int32 image ids


def check_keys(total: int, per_image: int) -> None:
    """The largest key must be an int32, as the project's webdataset reader requires."""
    if total * per_image - 1 > MAX_KEY:
        raise CapFiltConfigError(
            f"output_format webdataset: {total} records x {per_image} texts give keys past {MAX_KEY}, "
            f"which blip_jax.data.webdataset cannot read; split the sources into several CapFilt runs")


def key_width(total: int, per_image: int) -> int:
    return max(MIN_KEY_DIGITS, len(str(total * per_image - 1)))


def sample_key(index: int, slot: int, per_image: int, width: int) -> str:
    return str(index * per_image + slot).zfill(width)


def shard_name(unit: int, num_units: int) -> str:
    return f"{unit:0{max(5, len(str(num_units - 1)))}d}.tar"


def image_extension(data: bytes) -> str:
    """The extension img2dataset would give these encoded bytes ("jpg" when unrecognised)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def unit_members(records: Sequence[Mapping[str, Any]], image: Callable[[int], bytes],
                 per_image: int, width: int) -> list[tuple[str, bytes]]:
    """(member name, bytes) of the kept pairs of one unit's records, in sorted name order."""
    members = []
    for r in records:
        texts = ([("web", 0, r["web"])] if r["web"] is not None else []) + \
                [("synthetic", s + 1, t) for s, t in enumerate(r["synthetic"])]
        kept = [(source, slot, t) for source, slot, t in texts if t["kept"]]
        if not kept:
            continue
        data = image(r["index"])
        ext = image_extension(data)
        for source, slot, t in kept:
            key = sample_key(r["index"], slot, per_image, width)
            meta = {"key": key, "caption": t["caption"], "source": source, "score": t["score"],
                    "index": r["index"], "image_id": r["image_id"], "image_path": r["image_path"],
                    "web": r["web"], "synthetic": r["synthetic"]}
            members += [(f"{key}.{ext}", data),
                        (f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8")),
                        (f"{key}.txt", t["caption"].encode("utf-8"))]
    members.sort(key=lambda m: m[0])
    return members


def write_tar(path: str, members: Iterable[tuple[str, bytes]]) -> None:
    """A plain ustar archive with fixed metadata (mtime 0, mode 0644, owner 0), written to a
    temporary sibling, fsynced and renamed over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shards(out_dir: str, workdir: str, plan: output.UnitPlan, units: Iterable[int],
                 image: Callable[[int], bytes], per_image: int) -> int:
    """Writes the shard of each of `units` that is not in out_dir yet (from its result file; the
    image bytes by record index from `image`); first deletes what a killed writer left of these
    units' shards. Returns the number of shards written."""
    os.makedirs(out_dir, exist_ok=True)
    units = list(units)
    names = {u: shard_name(u, plan.num_units) for u in units}
    present = set(os.listdir(out_dir))
    for name in present:
        base, sep, _ = name.partition(".tar.tmp")
        if sep and base.isdigit() and int(base) in names and names[int(base)] == base + ".tar":
            os.remove(os.path.join(out_dir, name))
    width, written = key_width(plan.total, per_image), 0
    for u in units:
        if names[u] in present:
            continue
        members = unit_members(plan.read(workdir, u), image, per_image, width)
        if members:  # no kept pair: no shard (an empty tar reads as a broken one)
            write_tar(os.path.join(out_dir, names[u]), members)
            written += 1
    return written


def check_origin(out_dir: str, workdir: str) -> None:
    """Shards of another CapFilt run in out_dir would be taken for this run's: an error."""
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        previous = output.read_json(path).get("origin")
        if previous != workdir:
            raise ValueError(f"{out_dir} holds webdataset shards of another CapFilt run ({previous}); "
                             f"set config.webdataset_dir to another folder or delete that one")
    else:
        os.makedirs(out_dir, exist_ok=True)
        output.write_json_atomic(path, {"origin": workdir})  # every process writes the same content


def describe(out_dir: str, plan: output.UnitPlan,
             pairs: Sequence[tuple[int, str, str, float]]) -> dict[str, Any]:
    """{"dir", "shards": [names], "samples"} of the shards the kept pairs make."""
    units = sorted({index // plan.per_unit for index, *_ in pairs})
    return {"dir": out_dir, "shards": [shard_name(u, plan.num_units) for u in units],
            "samples": len(pairs)}


def write_manifest(out_dir: str, workdir: str, description: Mapping[str, Any], per_image: int) -> None:
    missing = [n for n in description["shards"] if not os.path.exists(os.path.join(out_dir, n))]
    if missing:
        raise RuntimeError(f"webdataset shards {missing[:5]} missing in {out_dir}")
    output.write_json_atomic(os.path.join(out_dir, MANIFEST), {
        "origin": workdir, "shards": description["shards"], "samples": description["samples"],
        "texts_per_image": per_image,
        "key": f"record index * {per_image} + slot (0: web text, s: synthetic caption s)"})
