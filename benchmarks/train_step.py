"""Train-step throughput and model-FLOPs utilisation (MFU).

    python benchmarks/train_step.py [--configs tiny,base] [--repeats 5]
    python benchmarks/train_step.py --configs nlvr_base --base-batch 2 --repeats 3
    python benchmarks/train_step.py --lm-chunk-tokens 0,64,128,256 --repeats 7
    python benchmarks/train_step.py --configs base --base-batch 75 --queue-size 57600 \
        --dtype bfloat16 --datasheet-peak-tflops 989 --result train_step_gpu   # on a GPU

With --lm-chunk-tokens the pre-training step is compiled once per value of
config.loss.lm_chunk_tokens (0 = materialised [B, L, vocab] logits) and the variants are timed
side by side: every repeat runs one step of each, in an order rotated per repeat, all on one
train state (the steps have the same state shardings); medians per variant, XLA's FLOPs,
bytes accessed (of a copy with the chunk loop unrolled: XLA counts a loop body once) and
temp memory per variant. Writes benchmarks/results/train_step_lm_chunk.json.

For each config: examples/s (median over timed steps), the step's model FLOPs (every matmul
and convolution of the step's jaxpr: forward, backward, momentum encoders; common.dot_flops)
and XLA's cost analysis of the compiled program, and MFU = model FLOP/s / the matmul peak in
--dtype measured in the same run (a large jnp.dot), with XLA's FLOPs over that peak beside it
and, given --datasheet-peak-tflops, model FLOP/s over the chip's datasheet peak; plus XLA's
memory estimate and the process's peak RSS. Prints a table and writes
benchmarks/results/train_step.json (or --result).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from blip_jax import losses, parallel
from blip_jax.models import preset
from blip_jax.train import optim, trainer
from blip_jax.train.step import jit_train_step, make_train_step
from blip_jax.train.defaults import base_config


def _nlvr_config(batch: int):
    """configs/nlvr.py's model and step (base, 384 px, two-image encoder) at `batch`."""
    c = base_config("base", tie_encoder_decoder=False, itc_itm_heads=False, text_decoder=False,
                    image_pair=True, pair_merge_layer=6)
    c.task = "nlvr"
    c.model.vision.image_size = 384
    c.model.vision.drop_path_rate = 0.1
    c.loss.itc_weight = c.loss.itm_weight = 0.0
    return c


def _setup(name: str, batch: int, text_len: int, dtype: str = "float32", queue_size: int = 0):
    """(config, trainer Setup on one device, the global batch) of a benchmark config; `dtype`
    is the model's computation dtype (params and optimiser state stay float32), `queue_size`
    the ITC queue's length (0: four batches)."""
    if name == "nlvr_base":
        c = _nlvr_config(batch)
    else:
        c = base_config(name, tie_encoder_decoder=True)
        c.model = preset(name, tie_encoder_decoder=True).to_dict()
        if name == "base":
            c.model.vision.image_size = 224
        c.loss.queue_size = queue_size or 4 * batch
    c.model.dtype = dtype
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
    return c, setup, parallel.global_batch(batch_np, mesh)


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    return {"flops_per_step": float(cost.get("flops", float("nan"))),
            "xla_bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
            "xla_temp_bytes": getattr(mem, "temp_size_in_bytes", None),
            "xla_argument_bytes": getattr(mem, "argument_size_in_bytes", None)}


def _unrolled_cost(cost: dict, compile_fn) -> dict:
    """XLA's cost analysis counts a while loop's body once: with the chunked LM loss
    (config.loss.lm_chunk_tokens > 0) the FLOPs and bytes of the whole step come from a copy
    compiled by `compile_fn` with the chunk loop unrolled (not timed); the loop-once figures
    are kept as loop_body_once_*."""
    keys = ("flops_per_step", "xla_bytes_accessed")
    chunked = losses.chunked_lm_loss
    losses.chunked_lm_loss = functools.partial(chunked, unroll=True)
    try:
        unrolled = _cost(compile_fn())
    finally:
        losses.chunked_lm_loss = chunked
    return {**cost, **{"loop_body_once_" + k: cost[k] for k in keys},
            **{k: unrolled[k] for k in keys}}


def bench_config(name: str, batch: int, text_len: int, repeats: int, dtype: str = "float32",
                 queue_size: int = 0, unrolled_cost: bool = True) -> dict:
    t0 = time.perf_counter()
    phase = lambda what: print(f"[{name}] {what}: {time.perf_counter() - t0:.1f} s",  # noqa: E731
                               file=sys.stderr, flush=True)
    c, setup, gb = _setup(name, batch, text_len, dtype, queue_size)
    phase("set up")
    # Model FLOPs (matmuls and convolutions of forward, backward and the momentum encoders, as
    # the program is written): the numerator of MFU, independent of what XLA fuses or recomputes.
    model_flops = common.guarded(lambda: common.dot_flops(jax.make_jaxpr(setup.step_fn.jitted)(
        setup.state, gb, setup.step_fn.lengths)), "model FLOPs")
    size = c.model.vision.image_size
    phase("model FLOPs counted")
    program = setup.step_fn.lower(setup.state, gb).compile()
    phase("compiled")
    cost = _cost(program)
    compiled = lambda s, b: program(s, b, setup.step_fn.lengths)  # noqa: E731
    if (unrolled_cost and c.task != "nlvr" and setup.loss.lm_weight > 0
            and setup.loss.lm_chunk_tokens > 0):
        tx, _ = optim.make_optimizer(c.optim, c.total_steps, 100)  # as trainer.build made it
        fresh = jit_train_step(make_train_step(setup.model, tx, setup.loss, setup.schedule,
                                               setup.mesh), setup.shardings, setup.mesh)
        cost = _unrolled_cost(cost, lambda: fresh.lower(setup.state, gb).compile())
    flops = cost["flops_per_step"]
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
    phase(f"{repeats} steps timed, median {step:.4f} s")
    return {"config": name, "batch": batch, "image_size": size, "text_len": text_len,
            "step_seconds_median": step, "step_seconds_all": times,
            "examples_per_sec": batch / step, "flops_per_step": flops,
            "achieved_flops_per_sec": flops / step, "dtype": dtype,
            "queue_size": c.loss.queue_size, "model_flops_per_step": model_flops,
            "model_flops_per_sec": model_flops / step, **cost}


def bench_lm_chunks(name: str, batch: int, text_len: int, repeats: int,
                    chunks: list[int]) -> list[dict]:
    """The pre-training step of `name` once per config.loss.lm_chunk_tokens value, timed
    interleaved on one shared state (see the module docstring)."""
    c, setup, gb = _setup(name, batch, text_len)
    tx, _ = optim.make_optimizer(c.optim, c.total_steps, 100)  # as trainer.build made it
    def compile_step(n: int):
        lc = dataclasses.replace(setup.loss, lm_chunk_tokens=n)
        fn = jit_train_step(make_train_step(setup.model, tx, lc, setup.schedule, setup.mesh),
                            setup.shardings, setup.mesh)
        return fn.lower(setup.state, gb).compile()

    compiled, costs = [], []
    for n in chunks:
        t = time.perf_counter()
        compiled.append(compile_step(n))
        cost = {**_cost(compiled[-1]), "compile_seconds": time.perf_counter() - t}
        if n > 0:
            cost = _unrolled_cost(cost, lambda: compile_step(n))
        costs.append(cost)
    state = setup.state
    for fn in compiled:  # warm-up: one step each
        state, m = fn(state, gb)
        jax.block_until_ready(m)
    times = [[] for _ in chunks]
    for r in range(repeats):
        for k in range(len(chunks)):
            i = (k + r) % len(chunks)
            t = time.perf_counter()
            state, m = compiled[i](state, gb)
            jax.block_until_ready(m)
            times[i].append(time.perf_counter() - t)
    rows = []
    ref = times[chunks.index(0)] if 0 in chunks else None
    for n, cost, ts in zip(chunks, costs, times):
        step = statistics.median(ts)
        # Within one repeat the variants ran back to back: the ratio of a pair sees the same
        # machine load (other jobs come and go), the median of these ratios is the speed-up.
        paired = (statistics.median(a / b for a, b in zip(ref, ts)) if ref is not None
                  else float("nan"))
        rows.append({"config": name, "lm_chunk_tokens": n, "batch": batch,
                     "image_size": c.model.vision.image_size, "text_len": text_len,
                     "step_seconds_median": step, "step_seconds_min": min(ts),
                     "step_seconds_all": ts, "paired_speedup_vs_materialised": paired,
                     "examples_per_sec": batch / step,
                     "achieved_flops_per_sec": cost["flops_per_step"] / step, **cost})
    return rows


def main_lm_chunks(args, peak: float) -> int:
    chunks = [int(x) for x in args.lm_chunk_tokens.split(",")]
    rows = []
    for name in args.configs.split(","):
        batch = args.base_batch if name in ("base", "large") else args.tiny_batch
        for r in bench_lm_chunks(name, batch, 30 if name != "tiny" else 24, args.repeats, chunks):
            r["mfu"] = r["achieved_flops_per_sec"] / peak
            rows.append(r)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"float32 matmul peak (2048^3, median of 10): {peak / 1e9:.1f} GFLOP/s on "
          f"{jax.devices()[0].platform} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print("vs 0: median over repeats of (materialised step time / this one) in the same repeat; "
          "MFU from the median")
    print(f"{'config':8} {'chunk':>5} {'batch':>5} {'px':>4} {'median s':>8} {'min s':>7} "
          f"{'ex/s':>7} {'vs 0':>5} {'GFLOP/step':>10} {'GB accessed':>11} {'MFU':>6} "
          f"{'XLA temp MB':>11}")
    for r in rows:
        print(f"{r['config']:8} {r['lm_chunk_tokens']:>5} {r['batch']:>5} {r['image_size']:>4} "
              f"{r['step_seconds_median']:>8.3f} {r['step_seconds_min']:>7.3f} "
              f"{r['examples_per_sec']:>7.1f} {r['paired_speedup_vs_materialised']:>5.2f} "
              f"{r['flops_per_step'] / 1e9:>10.2f} {r['xla_bytes_accessed'] / 1e9:>11.2f} "
              f"{100 * r['mfu']:>5.1f}% {(r['xla_temp_bytes'] or 0) / 2**20:>11.1f}")
    print(f"peak RSS of this process: {peak_rss / 2**30:.2f} GiB")
    out = {"matmul_peak_flops_per_sec": peak, "peak_rss_bytes": peak_rss, "rows": rows,
           "load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "devices": str(jax.devices()[0]),
           "jax": jax.__version__}
    common.write_result("train_step_lm_chunk", out)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", default="tiny,base",
                   help="tiny, small, base (pre-training steps), nlvr_base (configs/nlvr.py's "
                        "step at 384 px; results go to nlvr_train_step.json)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--base-batch", type=int, default=2)
    p.add_argument("--tiny-batch", type=int, default=32)
    p.add_argument("--lm-chunk-tokens", default="",
                   help="comma-separated config.loss.lm_chunk_tokens values (e.g. 0,64,128,256): "
                        "time the pre-training step with each, interleaved; results go to "
                        "train_step_lm_chunk.json")
    p.add_argument("--result", default="",
                   help="results file name (default train_step, or nlvr_train_step)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the model's computation dtype (params and optimiser state stay float32); "
                        "the matmul peak is measured in it")
    p.add_argument("--queue-size", type=int, default=0,
                   help="ITC queue length (0: four batches; the original's pretrain.yaml: 57600)")
    p.add_argument("--peak-n", type=int, default=0,
                   help="matmul size of the peak measurement (0: 2048 on CPU, 8192 on GPU/TPU)")
    p.add_argument("--datasheet-peak-tflops", type=float, default=0.0,
                   help="the chip's datasheet dense peak in --dtype, for a second MFU column "
                        "(e.g. 989 for an H100/H200 SXM in bfloat16)")
    p.add_argument("--xla-unrolled-cost", action=argparse.BooleanOptionalAction, default=True,
                   help="XLA's FLOPs of a second copy compiled with the LM chunk loop unrolled "
                        "(--no-xla-unrolled-cost: of the timed program, its loop body once; "
                        "saves a compile; the model FLOPs are exact either way)")
    args = p.parse_args()
    peak_n = common.peak_size(args.peak_n)
    peak = common.matmul_peak(args.dtype, peak_n)
    if args.lm_chunk_tokens:
        return main_lm_chunks(args, peak)
    rows = []
    datasheet = args.datasheet_peak_tflops * 1e12
    for name in args.configs.split(","):
        batch = args.base_batch if name in ("base", "large", "nlvr_base") else args.tiny_batch
        r = bench_config(name, batch, 30 if name != "tiny" else 24, args.repeats, args.dtype,
                         args.queue_size, args.xla_unrolled_cost)
        r["mfu"] = r["achieved_flops_per_sec"] / peak
        r["model_flops_mfu"] = r["model_flops_per_sec"] / peak
        r["model_flops_mfu_datasheet"] = r["model_flops_per_sec"] / datasheet if datasheet else None
        rows.append(r)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{args.dtype} matmul peak ({peak_n}^3, median of 10): {peak / 1e9:.1f} GFLOP/s on "
          f"{jax.devices()[0].device_kind} ({os.cpu_count()} host cores)")
    print("MFU: model FLOPs (matmuls as written, jaxpr) / step time / measured peak; "
          "XLA: XLA's cost analysis of the compiled step / step time / measured peak"
          + (f"; sheet: model FLOPs against {args.datasheet_peak_tflops:g} TFLOP/s" if datasheet
             else ""))
    print(f"{'config':8} {'dtype':>8} {'batch':>5} {'px':>4} {'step s':>8} {'ex/s':>8} "
          f"{'model GF':>9} {'XLA GF':>9} {'MFU':>6} {'XLA':>6} {'sheet':>6} {'temp MB':>9}")
    for r in rows:
        temp = (r["xla_temp_bytes"] or 0) / 2**20
        sheet = r["model_flops_mfu_datasheet"]
        print(f"{r['config']:8} {r['dtype']:>8} {r['batch']:>5} {r['image_size']:>4} "
              f"{r['step_seconds_median']:>8.3f} {r['examples_per_sec']:>8.1f} "
              f"{r['model_flops_per_step'] / 1e9:>9.1f} {r['flops_per_step'] / 1e9:>9.1f} "
              f"{100 * r['model_flops_mfu']:>5.1f}% {100 * r['mfu']:>5.1f}% "
              + (f"{100 * sheet:>5.1f}%" if sheet else f"{'-':>6}") + f" {temp:>9.1f}")
    print(f"peak RSS of this process: {peak_rss / 2**30:.2f} GiB")
    out = {"matmul_peak_flops_per_sec": peak, "matmul_peak_dtype": args.dtype,
           "matmul_peak_n": peak_n, "datasheet_peak_flops_per_sec": datasheet or None,
           "peak_rss_bytes": peak_rss, "rows": rows,
           "platform": platform.platform(), "devices": str(jax.devices()[0]),
           "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__}
    names = args.configs.split(",")
    common.write_result(args.result or ("nlvr_train_step" if all(n.startswith("nlvr") for n in names)
                                        else "train_step"), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
