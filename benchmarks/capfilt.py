"""CapFilt throughput: images per second for captioning + filtering, per device.

    python benchmarks/capfilt.py [--preset base] [--image-size 384] [--per-device-batch 8] [--steps 3]
    python benchmarks/capfilt.py --dtype bfloat16 --per-device-batch 64 512   # on a GPU

Random weights in the fine-tuned layouts the job loads: a captioner with only the text decoder
and a filter with the text encoder and ITC/ITM heads. One step is what the job does per batch
(blip_jax.capfilt.job.Steps): captioner image tokens, nucleus sampling (top_p 0.9, repetition
penalty 1.1, prompt "a picture of ", max 20 tokens), filter image tokens and web-text ITM (step
A); decoding, pre_caption and re-tokenising on the host; synthetic-caption ITM (step B). Random
decoders rarely emit [SEP], so every caption runs the full 20 tokens: the worst case. Input
loading (JPEG decode) is not included. Rows are merged into benchmarks/results/capfilt.json by
(device kind, preset, image size, batch, device count, dtype), so CPU and GPU figures sit
together.

The FLOP bound: the matmul FLOPs of one image (common.dot_flops over the jaxprs of steps A and
B, the decoding loop counted max_length - prompt - 1 times, as it runs when no caption ends
early) against the --dtype matmul peak measured in the same run: images/s per device can not
exceed peak / FLOPs per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

import common
from blip_jax.capfilt import default_config
from blip_jax.capfilt import job
from blip_jax.capfilt.job import Models, Steps
from blip_jax.inference import with_dtype
from blip_jax.models import init_params, preset
from blip_jax.models.blip import Blip

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "capfilt.json")


def flops_per_image(step: Steps, batch: dict, image_tokens: np.ndarray) -> float:
    """Matmul FLOPs of steps A and B for one device's batch, per image (see the docstring)."""
    m, opts = step.models, step.opts
    one = lambda x: np.asarray(x)[0]  # noqa: E731  one device's slice
    a = jax.make_jaxpr(functools.partial(job._step_a, m.captioner, m.filter, opts))(
        m.captioner_params, m.filter_params, *(one(batch[k]) for k in
                                               ("image", "text_ids", "text_mask", "index")))
    trips = opts.max_length - len(opts.prefix) - 1
    b_rows = batch["text_ids"].shape[1] * opts.num_captions
    ids = np.zeros((b_rows, step.max_tokens), np.int32)
    b = jax.make_jaxpr(functools.partial(job._step_b, m.filter, opts.num_captions))(
        m.filter_params, one(image_tokens), ids, np.ones_like(ids))
    return (common.dot_flops(a, while_trips=trips) + common.dot_flops(b)) / batch["image"].shape[1]


def bench(preset_name: str, image_size: int, per_device_batch: int, num_captions: int,
          steps: int, devices: list, dtype: str = "float32") -> dict:
    base = preset(preset_name)
    base = base.replace(vision=dataclasses.replace(base.vision, image_size=image_size))
    cap_cfg = base.replace(text_encoder=False, itc_itm_heads=False)
    fil_cfg = base.replace(text_decoder=False)
    cap_cfg, cap_params = with_dtype(cap_cfg, init_params(cap_cfg, jax.random.key(0)), dtype)
    fil_cfg, fil_params = with_dtype(fil_cfg, init_params(fil_cfg, jax.random.key(1)), dtype)
    models = Models(Blip(cap_cfg), Blip(fil_cfg), cap_params, fil_params)
    config = default_config()
    config.per_device_batch, config.num_captions = per_device_batch, num_captions
    config.dtype = dtype
    step = Steps(models, config, devices)
    d, rng = len(devices), np.random.default_rng(0)
    ids = rng.integers(1000, 3000, (d, per_device_batch, config.max_tokens)).astype(np.int32)
    ids[..., 0], ids[..., -1] = 101, 102
    batch = {"image": rng.normal(size=(d, per_device_batch, image_size, image_size, 3)).astype(np.float32),
             "text_ids": ids, "text_mask": np.ones_like(ids),
             "index": np.arange(d * per_device_batch, dtype=np.int32).reshape(d, per_device_batch)}
    t = time.perf_counter()
    handle = step.dispatch(batch)
    image_tokens = handle[2]
    captions, _, _ = step.finish(handle)  # compiles A and B
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step.finish(step.dispatch(batch))
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    images = d * per_device_batch
    return {"preset": preset_name, "image_size": image_size, "per_device_batch": per_device_batch,
            "devices": d, "num_captions": num_captions, "dtype": dtype,
            "flops_per_image": common.guarded(lambda: flops_per_image(step, batch, image_tokens),
                                              "FLOPs per image"), "max_length": config.max_length,
            "top_p": config.top_p, "device_kind": devices[0].device_kind,
            "platform": devices[0].platform, "first_step_seconds": compile_s,
            "step_seconds_median": median, "step_seconds_all": times,
            "images_per_sec": images / median, "images_per_sec_per_device": images / median / d,
            "example_caption": captions[0][0]}


def save(row: dict) -> None:
    """Merges `row` into RESULTS, replacing a row of the same setting."""
    key = lambda r: (r["device_kind"], r["preset"], r["image_size"], r["per_device_batch"],  # noqa: E731
                     r["devices"], r["num_captions"], r.get("dtype", "float32"))
    rows = []
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            rows = [r for r in json.load(f).get("rows", []) if key(r) != key(row)]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"rows": rows + [row]}, f, indent=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--per-device-batch", type=int, nargs="+", default=[8])
    p.add_argument("--num-captions", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--devices", type=int, default=0, help="local devices to use (0: all)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="both models' computation and weight dtype (capfilt's config.dtype)")
    p.add_argument("--peak-n", type=int, default=0,
                   help="matmul size of the peak measurement (0: 2048 on CPU, 8192 on GPU/TPU)")
    args = p.parse_args()
    devices = jax.local_devices()[: args.devices or None]
    peak_n = common.peak_size(args.peak_n)
    peak = common.matmul_peak(args.dtype, peak_n)
    print(f"{args.dtype} matmul peak ({peak_n}^3, median of 10): {peak / 1e12:.2f} TFLOP/s on "
          f"{devices[0].device_kind}", flush=True)
    for b in args.per_device_batch:
        r = bench(args.preset, args.image_size, b, args.num_captions, args.steps, devices,
                  args.dtype)
        bound = peak / r["flops_per_image"]
        r.update(command="python benchmarks/capfilt.py " + " ".join(sys.argv[1:]),
                 host=platform.platform(), jax=jax.__version__, matmul_peak_flops_per_sec=peak,
                 matmul_peak_n=peak_n, flop_bound_images_per_sec_per_device=bound,
                 fraction_of_flop_bound=r["images_per_sec_per_device"] / bound)
        print(f"{r['preset']} {r['image_size']}px on {r['devices']} x {r['device_kind']}: per-device "
              f"batch {b}, step {r['step_seconds_median']:.3f} s (first {r['first_step_seconds']:.1f} s)"
              f" -> {r['images_per_sec']:.2f} images/s, {r['images_per_sec_per_device']:.2f} per device"
              f" ({args.dtype}; {r['flops_per_image'] / 1e9:.1f} GFLOP/image, FLOP bound "
              f"{bound:.1f}/s per device: {100 * r['fraction_of_flop_bound']:.1f}%)", flush=True)
        save(r)  # after each row: a long run stopped part-way keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
