"""The vision tower's inference forward (Blip.image_features, captioning's and CapFilt's first
program) with and without its two CPU choices, side by side in one process:

  - `whole` vs `chunked`: attention over all heads at once vs a few heads at a time
    (VisionConfig.attention_chunk_mib: 0 vs the default), float32;
  - `bf16-out` vs `bf16`: bfloat16 products with bfloat16 results (XLA's plain bfloat16 dot)
    vs float32 results rounded once (layers.f32_accumulating_dot, what `--dtype bfloat16`
    computes on CPU), both with chunked attention.

    python benchmarks/vit_forward.py [--spec base:384:8] [--repeats 5] [--result vit_forward]

Every repeat calls each variant in turn (interleaved: a load change hits all alike); medians.
Random init (seed 0) and random images; the float32 variants' outputs are compared (max |diff|).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from contextlib import nullcontext
from unittest import mock

import jax
import numpy as np

import common
from blip_jax.inference import with_dtype
from blip_jax.models import Blip, layers


def variants(spec: str):
    """{name: (jitted forward, params)} and the images, spec CONFIG:IMAGE_SIZE:BATCH."""
    config, params, images = common.vision_tower(spec)
    whole = config.replace(vision=dataclasses.replace(config.vision, attention_chunk_mib=0))

    def compiled(cfg, dtype, bf16_out=False):
        cfg, p = with_dtype(cfg, params, dtype)
        fn = lambda p, x: Blip(cfg).apply({"params": p}, x, method=Blip.image_features)  # noqa: E731
        # Traced (and so fixed) here: bf16-out stands for the dense layers before
        # f32_accumulating_dot, XLA's plain bfloat16 dot.
        with mock.patch.object(layers, "cpu_bf16", lambda dtype: False) if bf16_out else nullcontext():
            exe = jax.jit(fn).lower(p, images).compile()
        return exe, p

    out = {"whole": compiled(whole, "float32"), "chunked": compiled(config, "float32"),
           "bf16-out": compiled(config, "bfloat16", bf16_out=True), "bf16": compiled(config, "bfloat16")}
    return out, images


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="base:384:8", help="CONFIG:IMAGE_SIZE:BATCH")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--result", default="vit_forward", help="benchmarks/results/RESULT.json")
    args = p.parse_args()
    fns, images = variants(args.spec)
    outputs = {k: np.asarray(exe(prm, images), np.float32) for k, (exe, prm) in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, (exe, prm) in fns.items():
            t = time.perf_counter()
            exe(prm, images).block_until_ready()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = common.matmul_peak("float32")
    print(f"vision tower {args.spec}, {jax.devices()[0]}, medians of {args.repeats} (interleaved); "
          f"float32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print("| variant | s | speedup |\n| --- | --- | --- |")
    pairs = {"whole": "whole", "chunked": "whole", "bf16-out": "chunked", "bf16": "bf16-out"}
    for k, s in med.items():
        print(f"| {k} | {s:.3f} | {med[pairs[k]] / s:.2f}x vs {pairs[k]} |")
    diff = float(np.max(np.abs(outputs["chunked"] - outputs["whole"])))
    print(f"float32 max |chunked - whole| = {diff:.3g}")
    path = common.write_result(args.result, {
        "spec": args.spec, "seconds_median": med, "seconds": times, "max_abs_diff_f32": diff,
        "matmul_peak_flops": peak, "machine": common.machine_with_torch()})
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
