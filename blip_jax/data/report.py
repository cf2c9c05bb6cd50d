"""What data preparation and loading skipped, and why: so bad data is never silently lost."""

from __future__ import annotations

import collections
import dataclasses
import json
import os


class DataError(ValueError):
    """Data that cannot be used at all: says which file or dataset and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Skip:
    file: str    # the image or annotation file the item came from
    reason: str  # e.g. "missing image file", "empty caption (entry 12)"
    split: str = ""


class SkipReport:
    """Collects skipped items (file, reason) during a build; printed by the CLI, saved as JSON."""

    def __init__(self) -> None:
        self.items: list[Skip] = []

    def add(self, file: str, reason: str, split: str = "") -> None:
        self.items.append(Skip(str(file), reason, split))

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        """Skips per kind of reason (the text before any '(' detail)."""
        return dict(collections.Counter(s.reason.split(" (")[0] for s in self.items))

    def summary(self, max_lines: int = 20) -> str:
        if not self.items:
            return "skipped nothing"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
        lines = [f"skipped {len(self.items)} item(s): {kinds}"]
        lines += [f"  [{s.split}] {s.file}: {s.reason}" if s.split else f"  {s.file}: {s.reason}"
                  for s in self.items[:max_lines]]
        if len(self.items) > max_lines:
            lines.append(f"  ... and {len(self.items) - max_lines} more (full list in the JSON report)")
        return "\n".join(lines)

    def to_list(self) -> list[dict[str, str]]:
        return [dataclasses.asdict(s) for s in self.items]


def write_json(path: str, payload: dict) -> None:
    """Writes atomically so a crashed run never leaves a half-written report."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
