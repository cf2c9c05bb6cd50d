"""Train-step throughput and model-FLOPs utilisation (MFU).

    python benchmarks/train_step.py [--configs tiny,base] [--repeats 5]
    python benchmarks/train_step.py --configs nlvr_base --base-batch 2 --repeats 3

For each config: examples/s (median over timed steps), the step's FLOPs from XLA's cost
analysis of the compiled program, achieved FLOP/s, and MFU = achieved / this machine's float32
matmul peak measured in the same run (a large jnp.dot), plus XLA's memory estimate and the
process's peak RSS. Prints a table and writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from blip_jax import parallel
from blip_jax.models import preset
from blip_jax.train import trainer
from blip_jax.train.defaults import base_config


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Median float32 FLOP/s of an n x n matmul on the default device."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def _nlvr_config(batch: int):
    """configs/nlvr.py's model and step (base, 384 px, two-image encoder) at `batch`."""
    c = base_config("base", tie_encoder_decoder=False, itc_itm_heads=False, text_decoder=False,
                    image_pair=True, pair_merge_layer=6)
    c.task = "nlvr"
    c.model.vision.image_size = 384
    c.model.vision.drop_path_rate = 0.1
    c.loss.itc_weight = c.loss.itm_weight = 0.0
    return c


def bench_config(name: str, batch: int, text_len: int, repeats: int) -> dict:
    if name == "nlvr_base":
        c = _nlvr_config(batch)
    else:
        c = base_config(name, tie_encoder_decoder=True)
        c.model = preset(name, tie_encoder_decoder=True).to_dict()
        if name == "base":
            c.model.vision.image_size = 224
        c.loss.queue_size = 4 * batch
    c.batch_size = batch
    c.optim.warmup_steps = 10
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    setup = trainer.build(c, steps_per_epoch=100, mesh=mesh)
    size = c.model.vision.image_size
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 3000, (batch, text_len)).astype(np.int32)
    if c.task == "nlvr":
        batch_np = {"images": rng.normal(size=(batch, 2, size, size, 3)).astype(np.float32),
                    "ids": ids, "mask": np.ones((batch, text_len), np.int32),
                    "label": (np.arange(batch) % 2).astype(np.int32)}
    else:
        batch_np = {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
                    "text_ids": ids, "text_mask": np.ones((batch, text_len), np.int32),
                    "image_id": np.arange(batch, dtype=np.int32)}
    gb = parallel.global_batch(batch_np, mesh)
    compiled = setup.step_fn.lower(setup.state, gb).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
    mem = compiled.memory_analysis()
    state = setup.state
    state, m = compiled(state, gb)
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, m = compiled(state, gb)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step = statistics.median(times)
    return {"config": name, "batch": batch, "image_size": size, "text_len": text_len,
            "step_seconds_median": step, "step_seconds_all": times,
            "examples_per_sec": batch / step, "flops_per_step": flops,
            "achieved_flops_per_sec": flops / step,
            "xla_temp_bytes": getattr(mem, "temp_size_in_bytes", None),
            "xla_argument_bytes": getattr(mem, "argument_size_in_bytes", None)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", default="tiny,base",
                   help="tiny, small, base (pre-training steps), nlvr_base (configs/nlvr.py's "
                        "step at 384 px; results go to nlvr_train_step.json)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--base-batch", type=int, default=2)
    p.add_argument("--tiny-batch", type=int, default=32)
    args = p.parse_args()
    peak = matmul_peak()
    rows = []
    for name in args.configs.split(","):
        batch = args.base_batch if name in ("base", "large", "nlvr_base") else args.tiny_batch
        r = bench_config(name, batch, 30 if name != "tiny" else 24, args.repeats)
        r["mfu"] = r["achieved_flops_per_sec"] / peak
        rows.append(r)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"float32 matmul peak (2048^3, median of 10): {peak / 1e9:.1f} GFLOP/s on "
          f"{jax.devices()[0].platform} ({os.cpu_count()} cores)")
    print(f"{'config':8} {'batch':>5} {'px':>4} {'step s':>8} {'ex/s':>8} {'GFLOP/step':>11} "
          f"{'GFLOP/s':>8} {'MFU':>6} {'XLA temp MB':>11}")
    for r in rows:
        temp = (r["xla_temp_bytes"] or 0) / 2**20
        print(f"{r['config']:8} {r['batch']:>5} {r['image_size']:>4} {r['step_seconds_median']:>8.3f} "
              f"{r['examples_per_sec']:>8.1f} {r['flops_per_step'] / 1e9:>11.2f} "
              f"{r['achieved_flops_per_sec'] / 1e9:>8.1f} {100 * r['mfu']:>5.1f}% {temp:>11.1f}")
    print(f"peak RSS of this process: {peak_rss / 2**30:.2f} GiB")
    out = {"matmul_peak_flops_per_sec": peak, "peak_rss_bytes": peak_rss, "rows": rows,
           "platform": platform.platform(), "devices": str(jax.devices()[0])}
    names = args.configs.split(",")
    common.write_result("nlvr_train_step" if all(n.startswith("nlvr") for n in names)
                        else "train_step", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
