"""webdataset tar shards (img2dataset's output for CC3M, CC12M, LAION) -> image-text samples.

A shard is a tar whose members are grouped by key, the member name up to the first dot of its
basename, members of one sample consecutive: KEY.jpg (or .jpeg/.png/.webp), KEY.txt (the
caption), KEY.json (metadata: "key", "url", "caption", "width", "height", "status", ...).
img2dataset also writes, next to NNNNN.tar, NNNNN.parquet (one row per URL it tried, "status"
"success" for those in the tar) and NNNNN_stats.json.

Tars are streamed (tarfile mode "r|*", plain or compressed), nothing is extracted to disk. A
sample that cannot be used is yielded as a `Skipped` with its key and reason; a shard that
breaks off (truncated member, cut archive, corrupt header) ends with a `Skipped` naming the
last complete key: the rest of that shard is lost, reported, and the other shards still read.

Image ids: the sample's key read as an integer. img2dataset's keys are zero-padded decimal
numbers, shard_id * 10**oom_sample_per_shard + position in shard ("000000123"), unique within one
img2dataset run, so an image keeps its id whichever subset of shards is built and whatever the
other shards lose, and the id is the `key` of img2dataset's parquet and json (-> the URL). A key
that is not a decimal number, or past int32 (the trainer's batches carry int32 ids: runs of up to
~214k shards of 10^4), is a DataError; so are ids of two shards that overlap (shards of two
img2dataset runs): prepare each run as its own dataset (the loaders offset each further dataset's
ids).

`ShardReader` reads shards one after the other; a Beam build (builders.BlipWebdataset) reads
each shard in its own work item with `read_shard` and runs the cross-shard check on the
collected `ShardResult`s (`check_ranges`): the same items, the same errors.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from blip_jax.data.decode import decode_rgb
from blip_jax.data.report import DataError
from blip_jax.image import ImageError
from blip_jax.tokenizer import pre_caption

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # what img2dataset's encode_format writes
MAX_IMAGE_ID = 2**31 - 1  # batches carry image_id as int32
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)  # how a cut or corrupt stream fails


@dataclasses.dataclass(frozen=True)
class Sample:
    key: str              # the members' common name, e.g. "000000123"
    image: bytes          # the image member's encoded bytes, as stored
    caption: str          # raw (pre_caption runs in the input pipeline); cleans to non-empty
    meta: dict[str, Any]  # the parsed KEY.json ({} without one)
    image_id: int         # int(key)


@dataclasses.dataclass(frozen=True)
class Skipped:
    key: str     # the sample's key; "" when the whole shard (or its rest) is meant
    reason: str  # kind first, detail in parentheses: "missing image (members: txt, json)"


# ---- shard specs ----------------------------------------------------------------------------

def _split_top(text: str, sep: str = ",") -> list[str]:
    """Splits at `sep` outside braces ("a/{0..9}.tar,b/{1,2}.tar" -> two specs)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            raise DataError(f"shard spec {text!r}: '}}' without its '{{'")
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise DataError(f"shard spec {text!r}: '{{' without its '}}'")
    return [*parts, text[start:]]


def _braces(pattern: str) -> list[str]:
    """braceexpand's rules: {00000..00099} (zero-padded to the wider bound when either bound
    starts with 0; descending too), {a,b,c}, several and nested groups."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[end], 0)
        if depth == 0:
            break
    body, head, tail = pattern[start + 1:end], pattern[:start], pattern[end + 1:]
    m = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if m:
        a, b = m.groups()
        width = max(len(a), len(b)) if a.startswith("0") or b.startswith("0") else 0
        step = 1 if int(b) >= int(a) else -1
        options = [str(n).zfill(width) for n in range(int(a), int(b) + step, step)]
    else:
        options = [o for alt in _split_top(body) for o in _braces(alt)]
    return [x for o in options for x in _braces(head + o + tail)]


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard files named by webdataset / img2dataset specs: 'DIR/{00000..00099}.tar', globs
    ('DIR/*.tar'), several specs in a sequence or one string joined by ',' or '::'. Returns the
    files sorted (record order does not depend on how the spec is written), each once.

    A glob matching no file, or a named file that does not exist (a gap in a brace range), is a
    DataError naming it: a shard is never left out silently."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    patterns = [p.strip() for s in specs for part in s.split("::") for p in _split_top(part) if p.strip()]
    if not patterns:
        raise DataError(f"shard spec {spec!r} names no file; give e.g. 'DIR/{{00000..00099}}.tar'")
    found: set[str] = set()
    for pattern in patterns:
        names = _braces(pattern)
        if any(c in pattern for c in "*?["):
            matched = [f for n in names for f in glob.glob(n) if os.path.isfile(f)]
            if not matched:
                raise DataError(f"shard pattern {pattern!r} matches no file")
            found.update(matched)
            continue
        missing = [n for n in names if not os.path.isfile(n)]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(f"shard spec {pattern!r}: {len(missing)} of {len(names)} files missing: {shown} "
                            f"(narrow the range, or fetch them)")
        found.update(names)
    return sorted(found)


# ---- one shard ------------------------------------------------------------------------------

class _StrictTarInfo(tarfile.TarInfo):
    """tarfile in stream mode treats a header cut short, or garbage where a header belongs, after
    the first member as the end of the archive; a cut shard would lose its rest unreported. Only
    the end-of-archive zero block ends it here; anything else is a ReadError."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EmptyHeaderError:
            raise tarfile.SubsequentHeaderError("empty file" if tarfile_.offset == 0 else
                                                "archive ends without its end-of-archive blocks") from None
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            raise tarfile.SubsequentHeaderError(f"bad member header: {e}") from None


def split_name(name: str) -> tuple[str, str]:
    """Member name -> (key, extension): up to / after the first dot of the basename, as
    webdataset groups them ("dir/000123.jpg" -> ("dir/000123", "jpg")). No dot: extension ""."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def image_id(key: str, where: str) -> int:
    """img2dataset's decimal key as the image id (see the module doc); DataError otherwise."""
    if not re.fullmatch(r"[0-9]+", key):
        raise DataError(f"{where}: key {key!r} is not a decimal number: image ids are img2dataset's integer "
                        f"keys (write the shards with img2dataset, or rename members to numbered keys)")
    n = int(key)
    if n > MAX_IMAGE_ID:
        raise DataError(f"{where}: key {key} is past {MAX_IMAGE_ID}, the largest image id a batch carries "
                        f"(int32): image ids from keys this large are not supported yet")
    return n


def _sample(shard: str, key: str, members: dict[str, bytes], verify: bool) -> Sample | Skipped:
    """One group of members -> the sample, or why it cannot be used."""
    where = f"{shard}/{key}"
    image_ext = next((e for e in IMAGE_EXTS if e in members), None)
    if image_ext is None:
        return Skipped(key, f"missing image (members: {', '.join(sorted(members)) or 'none'})")
    meta: dict[str, Any] = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except UnicodeDecodeError as e:
            return Skipped(key, f"corrupt JSON (not UTF-8, byte {e.start})")
        except json.JSONDecodeError as e:
            return Skipped(key, f"corrupt JSON (line {e.lineno} column {e.colno}: {e.msg})")
        if not isinstance(meta, dict):
            return Skipped(key, f"corrupt JSON (expected an object, got {type(meta).__name__})")
    caption = None
    if "txt" in members:
        try:
            caption = members["txt"].decode("utf-8")
        except UnicodeDecodeError as e:
            return Skipped(key, f"caption not UTF-8 (.txt byte {e.start})")
    if not (caption or "").strip() and isinstance(meta.get("caption"), str):
        caption = meta["caption"]  # img2dataset writes it in both; other writers in one
    if caption is None:
        return Skipped(key, "missing caption (no .txt member, no 'caption' in the .json)")
    if not pre_caption(caption):  # the pipeline would drop it: keep it out of the dataset
        return Skipped(key, f"empty caption ({caption!r:.40})")
    data = members[image_ext]
    try:
        if verify:  # as builders check image files: a 1/8-scale decode reads the whole stream
            decode_rgb(data, where, min_size=(1, 1))
        elif not data:
            raise ImageError(f"{where}: empty image file")
    except ImageError as e:
        return Skipped(key, str(e).removeprefix(where + ": "))
    return Sample(key, data, caption, meta, image_id(key, where))


def iter_samples(shard_path: str, verify: bool = True) -> Iterator[Sample | Skipped]:
    """The shard's samples in tar order: a Sample per usable group of members, a Skipped (key,
    reason) per unusable one, and, when the archive breaks off, a final Skipped("", "truncated
    archive (after key ...)"): what followed is lost. verify=False skips the decode check (the
    pipeline's decode still drops a corrupt image). Only image, txt and json members are read."""
    last, key, members = None, None, {}
    wanted = {*IMAGE_EXTS, "txt", "json"}
    try:
        with tarfile.open(shard_path, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = split_name(member.name)
                if k != key or ext in members:  # a repeated member starts another sample of that key
                    if key is not None:
                        yield _sample(shard_path, key, members, verify)
                        last = key
                    key, members = k, {}
                # Other members are only listed (in a missing-image reason), not read.
                members[ext] = tar.extractfile(member).read() if ext in wanted else b""
    except _READ_ERRORS as e:
        if key is None:  # not even one member header read: not a tar, or empty
            yield Skipped("", f"unreadable archive (the shard is lost: {type(e).__name__}: {e})")
        else:
            after = f"after key {last!r}" if last is not None else "in its first sample"
            yield Skipped("", f"truncated archive ({after}; {key!r} and the rest of the shard lost: "
                              f"{type(e).__name__}: {e})")
        return
    if key is not None:
        yield _sample(shard_path, key, members, verify)


# ---- a dataset of shards --------------------------------------------------------------------

def _index_path(shard_path: str) -> str:
    """DIR/00000.tar -> DIR/00000.parquet, where img2dataset writes a shard's index."""
    return re.sub(r"\.(tar|tar\.gz|tgz|tar\.bz2|tar\.xz)$", "", shard_path) + ".parquet"


def index_count(shard_path: str) -> int | None:
    """Samples img2dataset wrote into this shard by its parquet index (rows with status
    "success"; all rows if it has no status column); None without the index or without pyarrow.
    A parquet that does not read is a DataError naming it."""
    path = _index_path(shard_path)
    if not os.path.isfile(path):
        return None
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return None
    try:
        f = pq.ParquetFile(path)
        if "status" not in f.schema_arrow.names:
            return f.metadata.num_rows
        return sum(s == "success" for s in f.read(columns=["status"]).column("status").to_pylist())
    except Exception as e:  # pyarrow's errors have no common base besides this
        raise DataError(f"{path}: cannot read the parquet index ({type(e).__name__}: {e})") from None


@dataclasses.dataclass
class ShardResult:
    """What `read_shard` found in one shard, once it has been read to the end."""
    shard: str
    samples: int = 0            # usable samples (Sample items) read
    min_id: int | None = None   # their image id range (None without samples)
    max_id: int | None = None
    index_checked: bool = False  # compared with its parquet index


def read_shard(shard: str, verify: bool = True, result: ShardResult | None = None) -> Iterator[Sample | Skipped]:
    """One shard's items, checked within it: a key repeated within the shard is skipped, and its
    sample count is compared with its parquet index where there is one (a difference, or an index
    that does not read, ends the shard with a Skipped with key ""). Fills `result` as it goes;
    the cross-shard id check is the caller's (`check_ranges`)."""
    result = result if result is not None else ShardResult(shard)
    seen: set[int] = set()
    count, truncated = 0, False
    for item in iter_samples(shard, verify):
        if isinstance(item, Sample):
            if item.image_id in seen:
                item = Skipped(item.key, "duplicate key (an earlier sample of this shard has it)")
            else:
                seen.add(item.image_id)
        count += bool(item.key)
        truncated |= not item.key
        yield item
    if seen:
        result.samples, result.min_id, result.max_id = len(seen), min(seen), max(seen)
    try:
        expected = index_count(shard)
    except DataError as e:  # the index only cross-checks: its shard is still good
        yield Skipped("", f"unreadable parquet index ({e})")
        return
    if expected is not None:
        result.index_checked = True
        if expected != count:
            index = os.path.basename(_index_path(shard))
            yield Skipped("", f"sample count differs from the parquet index ({expected} successful "
                              f"rows in {index}, {count} samples read from the tar"
                              f"{', which is truncated' if truncated else ''})")


def check_ranges(results: Sequence[ShardResult]) -> None:
    """The cross-shard check of shards read separately (in shard order): the DataError of
    `ShardReader` if the image ids of two of them overlap."""
    ranges: list[tuple[int, int, str]] = []
    for r in results:
        if r.samples:
            _add_range(ranges, r.min_id, r.max_id, r.shard)


class ShardReader:
    """Samples of several shards (`read_shard` each), checked across them: ids of one shard must
    not overlap another's (key ranges are disjoint within one img2dataset run). `index_checked`
    counts the shards compared with their parquet index."""

    def __init__(self, shards: Sequence[str], verify: bool = True) -> None:
        self.shards, self.verify = list(shards), verify
        self.index_checked = 0

    def __iter__(self) -> Iterator[tuple[str, Sample | Skipped]]:
        ranges: list[tuple[int, int, str]] = []  # (min id, max id, shard) per shard read, sorted, disjoint
        for shard in self.shards:
            result = ShardResult(shard)
            for item in read_shard(shard, self.verify, result):
                yield shard, item
            if result.samples:
                _add_range(ranges, result.min_id, result.max_id, shard)
            self.index_checked += result.index_checked


def _add_range(ranges: list[tuple[int, int, str]], lo: int, hi: int, shard: str) -> None:
    """Inserts a shard's id range into the sorted disjoint `ranges`, or raises the DataError for
    the one it overlaps (only the range starting at or before hi can: the rest start later, and
    those before it end before it starts)."""
    i = bisect.bisect_right(ranges, (hi, float("inf")))
    if i and ranges[i - 1][1] >= lo:
        a, b, other = ranges[i - 1]
        raise DataError(f"image ids of {shard} ({lo}..{hi}) overlap those of {other} ({a}..{b}): shards of two "
                        f"img2dataset runs? prepare each run as its own dataset (training on several datasets "
                        f"offsets their ids)")
    ranges.insert(i, (lo, hi, shard))
