"""CapFilt throughput: images per second for captioning + filtering, per device.

    python benchmarks/capfilt.py [--preset base] [--image-size 384] [--per-device-batch 8] [--steps 3]

Random weights in the fine-tuned layouts the job loads: a captioner with only the text decoder
and a filter with the text encoder and ITC/ITM heads. One step is what the job does per batch
(blip_jax.capfilt.job.Steps): captioner image tokens, nucleus sampling (top_p 0.9, repetition
penalty 1.1, prompt "a picture of ", max 20 tokens), filter image tokens and web-text ITM (step
A); decoding, pre_caption and re-tokenising on the host; synthetic-caption ITM (step B). Random
decoders rarely emit [SEP], so every caption runs the full 20 tokens: the worst case. Input
loading (JPEG decode) is not included. Rows are merged into benchmarks/results/capfilt.json by
(device kind, preset, image size, batch, device count), so CPU and GPU figures sit together.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

from blip_jax.capfilt import default_config
from blip_jax.capfilt.job import Models, Steps
from blip_jax.models import init_params, preset
from blip_jax.models.blip import Blip

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "capfilt.json")


def bench(preset_name: str, image_size: int, per_device_batch: int, num_captions: int,
          steps: int, devices: list) -> dict:
    base = preset(preset_name)
    base = base.replace(vision=dataclasses.replace(base.vision, image_size=image_size))
    cap_cfg = base.replace(text_encoder=False, itc_itm_heads=False)
    fil_cfg = base.replace(text_decoder=False)
    models = Models(Blip(cap_cfg), Blip(fil_cfg), init_params(cap_cfg, jax.random.key(0)),
                    init_params(fil_cfg, jax.random.key(1)))
    config = default_config()
    config.per_device_batch, config.num_captions = per_device_batch, num_captions
    step = Steps(models, config, devices)
    d, rng = len(devices), np.random.default_rng(0)
    ids = rng.integers(1000, 3000, (d, per_device_batch, config.max_tokens)).astype(np.int32)
    ids[..., 0], ids[..., -1] = 101, 102
    batch = {"image": rng.normal(size=(d, per_device_batch, image_size, image_size, 3)).astype(np.float32),
             "text_ids": ids, "text_mask": np.ones_like(ids),
             "index": np.arange(d * per_device_batch, dtype=np.int32).reshape(d, per_device_batch)}
    t = time.perf_counter()
    captions, _, _ = step.finish(step.dispatch(batch))  # compiles A and B
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step.finish(step.dispatch(batch))
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    images = d * per_device_batch
    return {"preset": preset_name, "image_size": image_size, "per_device_batch": per_device_batch,
            "devices": d, "num_captions": num_captions, "max_length": config.max_length,
            "top_p": config.top_p, "device_kind": devices[0].device_kind,
            "platform": devices[0].platform, "first_step_seconds": compile_s,
            "step_seconds_median": median, "step_seconds_all": times,
            "images_per_sec": images / median, "images_per_sec_per_device": images / median / d,
            "example_caption": captions[0][0]}


def save(row: dict) -> None:
    """Merges `row` into RESULTS, replacing a row of the same setting."""
    key = lambda r: (r["device_kind"], r["preset"], r["image_size"], r["per_device_batch"],  # noqa: E731
                     r["devices"], r["num_captions"])
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
    args = p.parse_args()
    devices = jax.local_devices()[: args.devices or None]
    for b in args.per_device_batch:
        r = bench(args.preset, args.image_size, b, args.num_captions, args.steps, devices)
        r.update(command="python benchmarks/capfilt.py " + " ".join(sys.argv[1:]),
                 host=platform.platform(), jax=jax.__version__)
        print(f"{r['preset']} {r['image_size']}px on {r['devices']} x {r['device_kind']}: per-device "
              f"batch {b}, step {r['step_seconds_median']:.3f} s (first {r['first_step_seconds']:.1f} s)"
              f" -> {r['images_per_sec']:.2f} images/s, {r['images_per_sec_per_device']:.2f} per device",
              flush=True)
        save(r)  # after each row: a long run stopped part-way keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
