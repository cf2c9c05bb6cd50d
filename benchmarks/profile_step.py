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

`--vit CONFIG:IMAGE_SIZE:BATCH` (e.g. base:384:4) traces the vision tower's forward instead
(issue 16, target 1: what bounds captioning) and groups its ops by the model operation they came
from (every layer together), each group with its matmul FLOPs counted from the optimised HLO
and their rate against the peak (benchmarks/results/profile_vit.json).

Run it pinned to one core (`taskset -c 0`) for the single-thread figures the CI's workers see.
"""

from __future__ import annotations

import argparse
import collections
import glob
import math
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


def _computations(hlo_text: str) -> dict[str, list[tuple[str, str, list[str], str]]]:
    """Each computation of an HLO module's text -> its instructions as (name, opcode, called
    computations, the instruction's line)."""
    body: dict[str, list[tuple[str, str, list[str], str]]] = {}
    current = None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("{")[0]:
            current = head.group(1)
            body[current] = []
            continue
        inst = _INSTRUCTION.match(line)
        if inst and current is not None:
            body[current].append((inst.group(1), inst.group(2), _CALLS.findall(line), line))
    return body


def classify_ops(hlo_text: str) -> tuple[set[str], set[str]]:
    """(matmul ops, container ops) of an optimised HLO module, by instruction name. A matmul op
    is a dot or a convolution, or a fusion / call whose called computation (transitively) holds
    one; a container (while, conditional, call) is traced as an event around the ops of its
    body, which are traced themselves, so its time is not added again."""
    body = {comp: [(name, op, calls) for name, op, calls, _ in insts]
            for comp, insts in _computations(hlo_text).items()}
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


_SHAPE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[a-z]\w*\[([\d,]*)\]")
_OPERANDS = re.compile(r"\s(?:dot|convolution)\(%?([\w.\-]+),\s*%?([\w.\-]+)\)")
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def op_flops(hlo_text: str) -> dict[str, float]:
    """Matrix-multiply FLOPs (2 per multiply-add) of each instruction of an optimised HLO
    module: a dot's or convolution's own, a fusion's or call's the sum over the computations it
    calls. Shapes come from the instructions' declarations (operands are named, not typed, in
    XLA's text); a convolution counts 2 x output elements x the kernel's elements per output
    feature (feature_group_count 1)."""
    shapes: dict[str, list[int]] = {}
    for line in hlo_text.splitlines():
        m = _SHAPE.match(line)
        if m:
            shapes[m.group(1)] = _dims(m.group(2))

    def own_flops(name: str, op: str, line: str) -> float:
        if op not in ("dot", "convolution"):
            return 0.0
        lhs, rhs = _OPERANDS.search(line).groups()
        out = math.prod(shapes[name])
        if op == "dot":
            contracting = _dims(re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1))
            return 2.0 * out * math.prod(shapes[lhs][d] for d in contracting)
        kernel_labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
        kernel = shapes[rhs]
        return 2.0 * out * math.prod(kernel) / kernel[kernel_labels.index("o")]

    body = {comp: [(name, own_flops(name, op, line), calls) for name, op, calls, line in insts]
            for comp, insts in _computations(hlo_text).items()}
    memo: dict[str, float] = {}

    def computation(comp: str) -> float:
        if comp not in memo:
            memo[comp] = sum(instruction(own, calls) for _, own, calls in body.get(comp, []))
        return memo[comp]

    def instruction(own: float, calls: list[str]) -> float:
        return own + sum(computation(c) for c in calls)

    return {name: instruction(own, calls) for comp in body.values() for name, own, calls in comp}


def source_ops(hlo_text: str) -> dict[str, str]:
    """Instruction name -> the model operation it came from: its op_name metadata without the
    jit/method prefix and with layer numbers replaced by * (block_11/fc1 -> block_*/fc1), so that
    the same operation of every layer falls into one group."""
    out = {}
    for line in hlo_text.splitlines():
        inst, meta = _INSTRUCTION.match(line), _OP_NAME.search(line)
        if inst and meta:
            name = re.sub(r"^.*\)/", "", meta.group(1))  # drop "jit(f)/Module.method/"-style prefixes
            name = name.split("/", 1)[1] if "." in name.split("/", 1)[0] else name
            out[inst.group(1)] = re.sub(r"_\d+(?=/)", "_*", name)
    return out


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


def traced_op_seconds(run, calls: int, containers: set[str]) -> dict[str, float]:
    """Seconds per call of every executed XLA op (containers left out: their ops are traced
    themselves) over a jax.profiler trace of `calls` calls of run()."""
    import jax

    trace_dir = tempfile.mkdtemp(prefix="blip_jax_profile_")
    try:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                run()
        times = op_times(trace_dir)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    return {k: v / calls / 1e9 for k, v in times.items() if k not in containers}


def by_source(per_call: dict[str, float], hlo_text: str, peak: float) -> list[dict]:
    """The traced ops grouped by the model operation they came from (source_ops), costliest
    first: seconds per call, matmul GFLOP (op_flops) and their rate against `peak`."""
    flops, sources = op_flops(hlo_text), source_ops(hlo_text)
    seconds: collections.Counter = collections.Counter()
    flop: collections.Counter = collections.Counter()
    for op, s in per_call.items():
        seconds[sources.get(op, op)] += s
        flop[sources.get(op, op)] += flops.get(op, 0.0)
    return [{"source": k, "seconds": s, "gflop": flop[k] / 1e9,
             "gflops_per_s": flop[k] / 1e9 / s if s > 0 else 0.0,
             "fraction_of_peak": flop[k] / s / peak if s > 0 else 0.0}
            for k, s in seconds.most_common()]


def profile_vit(spec: str, calls: int, top: int, peak: float) -> dict:
    """The vision tower alone (Blip.image_features, the captioning and CapFilt models' first
    program), spec CONFIG:IMAGE_SIZE:BATCH (random init, seed 0; random images): its median
    time, model FLOPs and where the time goes by model operation (by_source)."""
    import jax
    from blip_jax.models import Blip

    config, params, images = common.vision_tower(spec)
    forward = lambda p, x: Blip(config).apply({"params": p}, x, method=Blip.image_features)  # noqa: E731
    compiled = jax.jit(forward).lower(params, images).compile()
    flops = common.dot_flops(jax.make_jaxpr(forward)(params, images))
    run = lambda: compiled(params, images).block_until_ready()  # noqa: E731
    run()
    median, _, _ = common.median_time(run, calls)
    hlo = compiled.as_text()
    _, containers = classify_ops(hlo)
    groups = by_source(traced_op_seconds(run, calls, containers), hlo, peak)
    return {"program": f"vit {spec}", "seconds_median": median, "model_gflop": flops / 1e9,
            "hlo_gflop": sum(op_flops(hlo).get(k, 0.0) for k in _executed(hlo)) / 1e9,
            "mfu": flops / median / peak, "ops_seconds": sum(g["seconds"] for g in groups),
            "by_source": groups[:top] if top else groups}


def _executed(hlo_text: str) -> list[str]:
    """Names of the ENTRY computation's instructions (what runs, once per call, in a program
    without loops)."""
    names, inside = [], False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            inst = _INSTRUCTION.match(line)
            if inst:
                names.append(inst.group(1))
    return names


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
    per_step = traced_op_seconds(one_step, steps, containers)
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


def report_vit(row: dict, peak: float, a: argparse.Namespace, t0: float) -> int:
    import jax

    print(f"{row['program']}: {row['seconds_median']:.3f} s per call, {row['model_gflop']:.1f} "
          f"GFLOP ({row['hlo_gflop']:.1f} in the optimised HLO), {row['model_gflop'] / row['seconds_median']:.1f} "
          f"GFLOP/s = {100 * row['mfu']:.0f}% of the float32 matmul peak {peak / 1e9:.1f} GFLOP/s "
          f"({jax.devices()[0]}, {len(os.sched_getaffinity(0))} CPU(s))")
    print("| model operation (every layer) | s per call | share | GFLOP | GFLOP/s | of peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    for g in row["by_source"]:  # share: of every traced op's time, not only the rows shown
        rate = f"{g['gflops_per_s']:.1f} | {100 * g['fraction_of_peak']:.0f}%" if g["gflop"] else "- | -"
        print(f"| {g['source']} | {g['seconds']:.3f} | {100 * g['seconds'] / row['ops_seconds']:.1f}% | "
              f"{g['gflop']:.1f} | {rate} |")
    path = common.write_result(a.result or "profile_vit", {
        **row, "matmul_peak_flops": peak, "cpus": len(os.sched_getaffinity(0)),
        "device": str(jax.devices()[0]), "seconds": time.perf_counter() - t0, "calls": a.steps,
        "load_average": os.getloadavg()})
    print(f"\n{path}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(tiny_steps.RECIPES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--peak-n", type=int, default=0)
    p.add_argument("--vit", metavar="CONFIG:IMAGE_SIZE:BATCH",
                   help="profile this vision tower's forward instead of the recipes' steps "
                        "(e.g. base:384:4), ops grouped by model operation")
    p.add_argument("--result", default=None,
                   help="benchmarks/results/RESULT.json (default profile_step, or profile_vit)")
    a = p.parse_args()
    import jax

    t0 = time.perf_counter()
    peak = common.matmul_peak("float32", common.peak_size(a.peak_n))
    if a.vit:
        return report_vit(profile_vit(a.vit, a.steps, a.top, peak), peak, a, t0)
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
    path = common.write_result(a.result or "profile_step", {
        "rows": rows, "matmul_peak_flops": peak, "cpus": len(os.sched_getaffinity(0)),
        "device": str(jax.devices()[0]), "seconds": time.perf_counter() - t0,
        "steps": a.steps, "load_average": os.getloadavg()})
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
