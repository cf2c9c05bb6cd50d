"""Where a tiny recipe's train step spends its time (issue 16, targets 4 and 7): a jax.profiler
trace of a few steps of each tiny recipe (blip_jax/experiments/tiny.py, as tiny_steps.py builds
them: batch 32, one device), every executed XLA op's time summed over the trace's threads and
split into matrix multiplies (an op whose HLO, or whose fused computation, holds a dot or a
convolution: XLA's own dots and its YNNPACK/oneDNN/XNNPACK fusions) and everything else.

Against the model's matmul FLOPs (common.dot_flops of the step's jaxpr) and the matmul peak
measured in the same process it prints the bound the profile implies: the step with every
matmul at the peak and the rest as measured.

    python benchmarks/profile_step.py [--recipes pretrain,caption,retrieval] [--steps 5]
        [--top 12] [--result profile_step]

Run it pinned to one core (`taskset -c 0`) for the single-thread figures the CI's workers see.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time

import common
import tiny_steps

_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def classify_ops(hlo_text: str) -> tuple[set[str], set[str]]:
    """(matmul ops, container ops) of an optimised HLO module, by instruction name. A matmul op
    is a dot or a convolution, or a fusion / call whose called computation (transitively) holds
    one; a container (while, conditional, call) is traced as an event around the ops of its
    body, which are traced themselves, so its time is not added again."""
    body: dict[str, list[tuple[str, str, list[str]]]] = {}
    current = None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("{")[0]:
            current = head.group(1)
            body[current] = []
            continue
        inst = _INSTRUCTION.match(line)
        if inst and current is not None:
            body[current].append((inst.group(1), inst.group(2), _CALLS.findall(line)))
    memo: dict[str, bool] = {}

    def has_matmul(comp: str) -> bool:
        if comp not in memo:
            memo[comp] = False  # cycles cannot occur in HLO; this only guards the recursion
            memo[comp] = any(op in ("dot", "convolution") or any(has_matmul(c) for c in calls)
                             for _, op, calls in body.get(comp, []))
        return memo[comp]

    insts = [i for comp in body.values() for i in comp]
    containers = {name for name, op, _ in insts if op in ("while", "conditional", "call")}
    matmuls = {name for name, op, calls in insts if name not in containers
               and (op in ("dot", "convolution") or any(has_matmul(c) for c in calls))}
    return matmuls, containers


def op_times(trace_dir: str) -> collections.Counter:
    """Total nanoseconds per XLA op name over every thread of the host plane of a trace."""
    import jax

    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    totals: collections.Counter = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                # Thread-pool and executor bookkeeping events wrap the ops; they are not ops.
                if not event.name.startswith(("ThreadpoolListener", "ThunkExecutor", "end: ")):
                    totals[event.name] += event.duration_ns
    return totals


def profile_recipe(name: str, steps: int, top: int, peak: float) -> dict:
    """One recipe's row: its step's median time, model FLOPs, and the traced ops' seconds per
    step split into matmuls and the rest (`peak`: the measured matmul FLOP/s)."""
    import jax

    one_step, setup, gb, compiled = tiny_steps.recipe_step(name)
    flops = common.dot_flops(jax.make_jaxpr(setup.step_fn.jitted)(setup.state, gb,
                                                                   setup.step_fn.lengths))
    matmuls, containers = classify_ops(compiled.as_text())
    for _ in range(3):
        one_step()
    median, _, _ = common.median_time(one_step, steps)
    trace_dir = tempfile.mkdtemp(prefix="blip_jax_profile_")
    try:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                one_step()
        times = op_times(trace_dir)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    per_step = {k: v / steps / 1e9 for k, v in times.items() if k not in containers}
    matmul_s = sum(v for k, v in per_step.items() if k in matmuls)
    other_s = sum(v for k, v in per_step.items() if k not in matmuls)
    kinds: collections.Counter = collections.Counter()
    for k, v in per_step.items():
        kinds["matmul" if k in matmuls else re.sub(r"\.\d+$", "", k)] += v
    at_peak = flops / peak
    return {
        "recipe": name, "step_seconds_median": median, "model_gflop": flops / 1e9,
        "ops_seconds": matmul_s + other_s, "ops_per_step": len(per_step),
        "matmul_seconds": matmul_s, "matmul_gflops_per_s": flops / matmul_s / 1e9,
        "other_seconds": other_s, "mfu": flops / median / peak,
        "matmuls_at_peak_seconds": at_peak,
        # The step if its matmuls ran at the measured peak and everything else as measured.
        "bound_seconds": at_peak + other_s + max(0.0, median - matmul_s - other_s),
        "top_ops": [(k, v) for k, v in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]],
        "top_kinds": kinds.most_common(top)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(tiny_steps.RECIPES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--peak-n", type=int, default=0)
    p.add_argument("--result", default="profile_step")
    a = p.parse_args()
    import jax

    t0 = time.perf_counter()
    peak = common.matmul_peak("float32", common.peak_size(a.peak_n))
    rows = [profile_recipe(r, a.steps, a.top, peak) for r in a.recipes.split(",")]
    print(f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s ({jax.devices()[0]}, "
          f"{len(os.sched_getaffinity(0))} CPU(s))")
    print("| recipe | step s | GFLOP | MFU | matmul ops s (GFLOP/s) | other ops s | "
          "matmuls at peak s | bound s (speed-up) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['recipe']} | {r['step_seconds_median']:.3f} | {r['model_gflop']:.2f} | "
              f"{100 * r['mfu']:.0f}% | {r['matmul_seconds']:.3f} ({r['matmul_gflops_per_s']:.1f}) | "
              f"{r['other_seconds']:.3f} | {r['matmuls_at_peak_seconds']:.3f} | "
              f"{r['bound_seconds']:.3f} ({r['step_seconds_median'] / r['bound_seconds']:.2f}x) |")
    for r in rows:
        print(f"\n{r['recipe']}: ops by kind, seconds per step (matmul = dots and their fusions)")
        for kind, s in r["top_kinds"]:
            print(f"  {s:.4f}  {kind}")
    path = common.write_result(a.result, {
        "rows": rows, "matmul_peak_flops": peak, "cpus": len(os.sched_getaffinity(0)),
        "device": str(jax.devices()[0]), "seconds": time.perf_counter() - t0,
        "steps": a.steps, "load_average": os.getloadavg()})
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
