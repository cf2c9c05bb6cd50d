"""CapFilt results on disk: per-shard result files (the unit of resumption), the release-format
JSONs and the summary.

Process p of n reads the strided shard p of the records (scan_records): its positions
0, 1, ... are records p, p + n, ... of the concatenated sources. Shard k of process p holds
positions [k * records_per_shard, (k + 1) * records_per_shard) and is one JSON file, written
to a temporary name then renamed, so a file that exists is complete and a killed job redoes
only the shards whose file is missing.

One result per input record: {"index", "image_id", "image_path", "noise" (ground-truth label,
-1 where unknown), "valid" (False: unreadable image or empty caption, nothing kept),
"web": {"caption", "score", "kept"} | None, "synthetic": [{"caption", "score", "kept"}, ...]}.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

RESULTS_DIR = "results"
JOB_FILE = "capfilt_job.json"
SUMMARY_FILE = "summary.json"
WEB_JSON = "capfilt_web.json"
SYNTHETIC_JSON = "capfilt_synthetic.json"


def write_json_atomic(path: str, obj: Any) -> None:
    """Whole file or nothing: write a temporary sibling, fsync, rename over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Which records process `process` of `count` handles and how they group into shards."""

    total: int       # records in all sources together
    process: int
    count: int
    per_shard: int

    @property
    def length(self) -> int:
        """Positions in this process's stream (scan_records pads every process to this)."""
        return -(-self.total // self.count)

    @property
    def num_shards(self) -> int:
        return -(-self.length // self.per_shard)

    def bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.per_shard
        return start, min(start + self.per_shard, self.length)

    def size(self, shard: int) -> int:
        start, end = self.bounds(shard)
        return end - start

    def record_index(self, position: int) -> int | None:
        """Record number at `position` of this stream; None for the padding past the end."""
        g = self.process + position * self.count
        return g if position < self.length and g < self.total else None

    def directory(self, workdir: str) -> str:
        return os.path.join(workdir, RESULTS_DIR, f"process{self.process:05d}-of-{self.count:05d}")

    def path(self, workdir: str, shard: int) -> str:
        return os.path.join(self.directory(workdir), f"shard-{shard:06d}.json")

    def remove_partial(self, workdir: str) -> None:
        """Deletes temporary files a killed writer left behind (never a finished shard)."""
        folder = self.directory(workdir)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if ".json.tmp" in name:
                os.remove(os.path.join(folder, name))

    def done(self, workdir: str) -> set[int]:
        return {k for k in range(self.num_shards) if os.path.exists(self.path(workdir, k))}

    def write(self, workdir: str, shard: int, records: Sequence[Mapping[str, Any]]) -> None:
        os.makedirs(self.directory(workdir), exist_ok=True)
        write_json_atomic(self.path(workdir, shard), {"process": self.process, "count": self.count,
                                                      "shard": shard, "records": list(records)})


def check_job(workdir: str, fingerprint: Mapping[str, Any]) -> None:
    """Records what the results in `workdir` depend on; a restart with other settings is an error
    (it would mix results of two configurations)."""
    path = os.path.join(workdir, JOB_FILE)
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as read back
    if not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(path, fingerprint)  # every process writes the same content
        return
    previous = read_json(path)
    changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
    if changed:
        detail = "; ".join(f"{k}: {previous.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
        raise ValueError(f"{workdir} holds CapFilt results of other settings ({detail}). Resume with "
                         f"the same settings, or use a new workdir.")


def load_results(workdir: str, total: int, count: int, per_shard: int) -> list[dict[str, Any]]:
    """Every process's results, sorted by record index; checks each record appears exactly once."""
    records: list[dict[str, Any]] = []
    for p in range(count):
        plan = ShardPlan(total, p, count, per_shard)
        for k in range(plan.num_shards):
            path = plan.path(workdir, k)
            if not os.path.exists(path):
                raise FileNotFoundError(f"CapFilt result {path} is missing: the job is not finished "
                                        f"(rerun it with the same workdir to complete it)")
            records += read_json(path)["records"]
    records.sort(key=lambda r: r["index"])
    indexes = [r["index"] for r in records]
    if indexes != list(range(total)):
        dup = len(indexes) - len(set(indexes))
        raise ValueError(f"results in {workdir} do not cover the {total} records exactly once "
                         f"({len(indexes)} results, {dup} duplicated)")
    return records


def kept_pairs(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, str, float]]:
    """(record index, text, "web"|"synthetic", score) of every kept text, web text first."""
    pairs = []
    for r in records:
        if r["web"] is not None and r["web"]["kept"]:
            pairs.append((r["index"], r["web"]["caption"], "web", r["web"]["score"]))
        for s in r["synthetic"]:
            if s["kept"]:
                pairs.append((r["index"], s["caption"], "synthetic", s["score"]))
    return pairs


def write_release_json(workdir: str, records: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The original release's format, one file per text source like its "filtered web caption"
    and "filtered synthetic caption" files: [{"image": path, "caption": text}, ...]."""
    web, synthetic = [], []
    for index, text, source, _ in kept_pairs(records):
        entry = {"image": records[index]["image_path"], "caption": text}
        (web if source == "web" else synthetic).append(entry)
    paths = os.path.join(workdir, WEB_JSON), os.path.join(workdir, SYNTHETIC_JSON)
    write_json_atomic(paths[0], web)
    write_json_atomic(paths[1], synthetic)
    return paths


def _pct(a: int, b: int) -> float | None:
    return 100.0 * a / b if b else None


def summarize(records: Sequence[Mapping[str, Any]], noise_names: Sequence[str] = (),
              is_noise: Sequence[bool] | None = None) -> dict[str, Any]:
    """Counts and kept fractions; with ground-truth text-kind labels (>= 0) the filter's
    precision (removed web texts that were noise) and recall (noise web texts removed), overall
    and per kind. is_noise[label] says which labels are noise (default: every label but 0)."""
    noisy_label = (lambda k: bool(is_noise[k])) if is_noise is not None else (lambda k: k > 0)
    valid = [r for r in records if r["valid"]]
    web_kept = sum(r["web"]["kept"] for r in valid)
    synth = [s for r in valid for s in r["synthetic"]]
    synth_kept = sum(s["kept"] for s in synth)
    out: dict[str, Any] = {
        "images_seen": len(records), "images_valid": len(valid),
        "web_texts": len(valid), "web_kept": web_kept, "web_kept_pct": _pct(web_kept, len(valid)),
        "synthetic_texts": len(synth), "synthetic_kept": synth_kept,
        "synthetic_kept_pct": _pct(synth_kept, len(synth)),
        "pairs_kept": web_kept + synth_kept,
    }
    labelled = [r for r in valid if r["noise"] >= 0]
    if labelled:
        removed = [r for r in labelled if not r["web"]["kept"]]
        noisy = [r for r in labelled if noisy_label(r["noise"])]
        hits = sum(noisy_label(r["noise"]) for r in removed)
        out["filter"] = {
            "labelled_web_texts": len(labelled), "noisy": len(noisy), "removed": len(removed),
            "precision": hits / len(removed) if removed else None,
            "recall": hits / len(noisy) if noisy else None,
        }
        by_kind = {}
        for label in sorted({r["noise"] for r in labelled}):
            group = [r for r in labelled if r["noise"] == label]
            name = noise_names[label] if label < len(noise_names) else str(label)
            by_kind[name] = {"count": len(group),
                             "removed_pct": _pct(sum(not r["web"]["kept"] for r in group), len(group))}
        out["filter"]["by_noise_kind"] = by_kind
    return out


def format_summary(summary: Mapping[str, Any]) -> str:
    def pct(v):
        return "n/a" if v is None else f"{v:.1f}%"

    lines = [f"CapFilt: {summary['images_seen']} images seen ({summary['images_valid']} usable)",
             f"  web texts kept:       {summary['web_kept']}/{summary['web_texts']} "
             f"({pct(summary['web_kept_pct'])})",
             f"  synthetic texts kept: {summary['synthetic_kept']}/{summary['synthetic_texts']} "
             f"({pct(summary['synthetic_kept_pct'])})"]
    rate = summary.get("images_per_sec")
    if rate:
        lines.append(f"  throughput: {rate:.2f} images/s in process 0 on {summary['devices']} local "
                     f"device(s) ({rate / summary['devices']:.2f} per device), "
                     f"{summary['processes']} process(es)")
    f = summary.get("filter")
    if f:
        ratio = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        lines.append(f"  filter vs ground-truth noise: precision {ratio(f['precision'])}, recall "
                     f"{ratio(f['recall'])} ({f['removed']} removed, {f['noisy']} noisy of "
                     f"{f['labelled_web_texts']})")
        lines += [f"    {k}: {v['count']} texts, {pct(v['removed_pct'])} removed"
                  for k, v in f["by_noise_kind"].items()]
    if summary.get("dataset"):
        lines.append(f"  dataset: {summary['dataset']} ({summary['pairs_kept']} pairs) in "
                     f"{summary['dataset_dir']}")
    if summary.get("json"):
        lines.append(f"  release-format JSON: {', '.join(summary['json'])}")
    return "\n".join(lines)
