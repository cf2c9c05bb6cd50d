"""What the benchmark scripts share: timing, the machine description and the results file.
The scripts run as `python benchmarks/NAME.py`, so this module is importable as `common`."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """(median seconds, every run's seconds, the last output) of `repeats` calls of fn."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def machine_with_torch() -> dict[str, Any]:
    """The machine and library versions of a side-by-side jax / torch run."""
    import jax
    import torch
    import transformers
    return {"torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "devices": str(jax.devices()[0]),
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__}}


def write_result(name: str, out: dict[str, Any]) -> str:
    """Writes benchmarks/results/NAME.json with the exact command; returns its path."""
    script = os.path.basename(sys.argv[0])
    out = {**out, "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:])}
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    return path
