"""CapFilt results on disk: per-unit result files (the unit of work and of resumption), the
release-format JSONs and the summary.

The records of the concatenated sources are divided into units of `records_per_shard`
consecutive records: unit u holds the records [u * records_per_shard, (u + 1) *
records_per_shard), whatever the number of processes (hosts). A unit's results are one JSON file
`results/unit-UUUUUU.json`, written to a temporary name and renamed: a file that exists is
complete (it is the unit's done marker), and a stopped job redoes only the units whose file is
missing. Each run lists the units without a file and divides them among its processes (see
`assign`), so a run may resume one with another number of processes: no unit is computed twice
into the results, none is lost.

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
class UnitPlan:
    """How the records group into units and where each unit's result file is."""

    total: int     # records in all sources together
    per_unit: int  # records_per_shard

    @property
    def num_units(self) -> int:
        return -(-self.total // self.per_unit)

    def bounds(self, unit: int) -> tuple[int, int]:
        """The unit's record numbers [start, stop)."""
        start = unit * self.per_unit
        return start, min(start + self.per_unit, self.total)

    def size(self, unit: int) -> int:
        start, end = self.bounds(unit)
        return end - start

    def directory(self, workdir: str) -> str:
        return os.path.join(workdir, RESULTS_DIR)

    def path(self, workdir: str, unit: int) -> str:
        return os.path.join(self.directory(workdir), f"unit-{unit:06d}.json")

    def legacy_path(self, workdir: str, unit: int) -> str:
        """Where a single-process run of the earlier per-process layout wrote this unit (its shard
        k held the records of unit k): read as done, never written."""
        return os.path.join(self.directory(workdir), _LEGACY_DIR, f"shard-{unit:06d}.json")

    def remove_partial(self, workdir: str) -> None:
        """Deletes temporary files a killed writer left behind (never a finished unit). Only
        while no process writes (process 0, before the units are divided)."""
        folder = self.directory(workdir)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if ".json.tmp" in name:
                os.remove(os.path.join(folder, name))

    def done(self, workdir: str) -> set[int]:
        """Units whose result file exists (one listing of the folder, not a stat per unit)."""
        names = set(os.listdir(self.directory(workdir))) if os.path.isdir(self.directory(workdir)) else set()
        done = {u for u in range(self.num_units) if f"unit-{u:06d}.json" in names}
        if _LEGACY_DIR in names:
            legacy = set(os.listdir(os.path.join(self.directory(workdir), _LEGACY_DIR)))
            done |= {u for u in range(self.num_units) if f"shard-{u:06d}.json" in legacy}
        return done

    def todo(self, workdir: str) -> list[int]:
        """Units without a result file, ascending."""
        done = self.done(workdir)
        return [u for u in range(self.num_units) if u not in done]

    def read(self, workdir: str, unit: int) -> list[dict[str, Any]]:
        path = self.path(workdir, unit)
        if not os.path.exists(path) and os.path.exists(self.legacy_path(workdir, unit)):
            path = self.legacy_path(workdir, unit)
        if not os.path.exists(path):
            raise FileNotFoundError(f"CapFilt result {path} is missing: the job is not finished "
                                    f"(rerun it with the same workdir to complete it)")
        return read_json(path)["records"]

    def write(self, workdir: str, unit: int, records: Sequence[Mapping[str, Any]]) -> None:
        start, end = self.bounds(unit)
        if [r["index"] for r in records] != list(range(start, end)):
            raise RuntimeError(f"unit {unit} is records {start}..{end - 1}; got "
                               f"{[r['index'] for r in records][:8]}...")
        os.makedirs(self.directory(workdir), exist_ok=True)
        write_json_atomic(self.path(workdir, unit), {"unit": unit, "records": list(records)})


_LEGACY_DIR = "process00000-of-00001"


def assign(todo: Sequence[int], process: int, count: int) -> list[int]:
    """The units process `process` of `count` computes: every count-th of the units still to do
    (one list for all processes: process 0's, see job.run), so a resumed run spreads the rest
    evenly whatever the process count of the runs before it."""
    return list(todo[process::count])


def check_layout(workdir: str) -> None:
    """A workdir of the earlier per-process layout written by several processes cannot resume:
    its shards were strided over the records, not units."""
    folder = os.path.join(workdir, RESULTS_DIR)
    other = sorted(n for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                   if n.startswith("process") and n != _LEGACY_DIR)
    if other:
        raise ValueError(f"{workdir} holds CapFilt results of an earlier multi-process layout "
                         f"({', '.join(other[:3])}): finish it with that version of blip_jax or use a "
                         f"new workdir")


def check_job(workdir: str, fingerprint: Mapping[str, Any]) -> None:
    """Records what the results in `workdir` depend on; a restart with other settings is an error
    (it would mix results of two configurations). The process count is not one of them (a job
    file of the earlier single-process layout names it: 1 is accepted)."""
    path = os.path.join(workdir, JOB_FILE)
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as read back
    if not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(path, fingerprint)  # every process writes the same content
        return
    previous = read_json(path)
    if previous.get("process_count") == 1:
        previous.pop("process_count")
    changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
    if changed:
        detail = "; ".join(f"{k}: {previous.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
        raise ValueError(f"{workdir} holds CapFilt results of other settings ({detail}). Resume with "
                         f"the same settings, or use a new workdir.")


def load_results(workdir: str, total: int, per_unit: int) -> list[dict[str, Any]]:
    """Every unit's results, sorted by record index; checks each record appears exactly once."""
    plan = UnitPlan(total, per_unit)
    records = [r for u in range(plan.num_units) for r in plan.read(workdir, u)]
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
    w = summary.get("webdataset")
    if w:
        lines.append(f"  webdataset: {len(w['shards'])} tar shard(s), {w['samples']} samples in {w['dir']}")
    if summary.get("json"):
        lines.append(f"  release-format JSON: {', '.join(summary['json'])}")
    return "\n".join(lines)
