"""Start-up cost of a command: seconds a fresh Python process takes to import what every command
loads (ml_dtypes, jax, the trainer and data layer) and to print a command's flags, medians over
fresh processes pinned to one CPU. Every command, data worker process and test subprocess pays
this before it does any work. Prints a table and writes benchmarks/results/startup.json.

    python benchmarks/startup.py [--repeats 7]
    python benchmarks/startup.py --other-pythonpath /tmp/ml_dtypes_070

With --other-pythonpath, each probe also runs with that directory first on PYTHONPATH (e.g.
another ml_dtypes: `pip install --no-deps --target /tmp/ml_dtypes_070 ml_dtypes==0.7.0`),
alternately with this environment, and the table adds the paired ratio other / this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name, the process's arguments after the interpreter, its exit status: absl's help exits 1)
PROBES = (
    ("import numpy", ["-c", "import numpy"], 0),
    ("import ml_dtypes", ["-c", "import numpy, ml_dtypes"], 0),
    ("import jax", ["-c", "import jax"], 0),
    ("import trainer + data layer", ["-c", "import blip_jax.train.trainer, blip_jax.data.pipeline"], 0),
    ("train --helpshort", ["-m", "blip_jax.train", "--helpshort"], 1),
)


def time_process(args: list[str], status: int, pythonpath: str | None) -> float:
    """Wall seconds of one fresh `python ARGS` (output discarded; raises if it exits otherwise
    than with `status`)."""
    paths = [p for p in (pythonpath, ROOT, os.environ.get("PYTHONPATH")) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    t = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != status:
        raise RuntimeError(f"python {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--other-pythonpath", default=None,
                        help="also time each probe with this directory first on PYTHONPATH")
    parser.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: the first allowed)")
    args = parser.parse_args()
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # the processes inherit it
    rows = []
    for name, probe, status in PROBES:
        this, other = [], []
        for _ in range(args.repeats):  # alternate, so a load change moves both sides alike
            this.append(time_process(probe, status, None))
            if args.other_pythonpath:
                other.append(time_process(probe, status, args.other_pythonpath))
        row = {"probe": name, "seconds": statistics.median(this), "runs": this}
        if other:
            row.update(other_seconds=statistics.median(other), other_runs=other,
                       other_over_this=statistics.median(o / t for o, t in zip(other, this)))
        rows.append(row)

    head = f"{'probe':30s} {'this (s)':>9s}"
    if args.other_pythonpath:
        head += f" {'other (s)':>10s} {'other/this':>10s}"
    print(f"start-up, median of {args.repeats} fresh processes on CPU {cpu}\n{head}")
    for r in rows:
        line = f"{r['probe']:30s} {r['seconds']:9.2f}"
        if "other_seconds" in r:
            line += f" {r['other_seconds']:10.2f} {r['other_over_this']:10.2f}"
        print(line)
    import ml_dtypes
    import numpy
    out = {"rows": rows, "cpu": cpu, "repeats": args.repeats,
           "other_pythonpath": args.other_pythonpath, "load_average": os.getloadavg(),
           "versions": {"ml_dtypes": ml_dtypes.__version__, "numpy": numpy.__version__}}
    print("wrote", common.write_result("startup", out))


if __name__ == "__main__":
    main()
