"""Input pipeline throughput (images/s), and whether it bounds the tiny config's training step.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--batches 30] [--out benchmarks/results/input_pipeline.json]

Cases:
  224px_full_aug: COCO-sized photo-like JPEGs (640x480, ~q90), RandomResizedCrop(0.2, 1) to 224,
      flip, RandAugment N=2 M=5, tokenisation; 2 worker processes and in-process.
  64px_*: the synthetic data (96 px renders) to the tiny resolution, with full augmentation and
      with the tiny config's settings (crop scale 0.5-1, no RandAugment).
  tiny_step: the tiny config's train step timed on one fixed in-memory batch vs fed by the
      pipeline (2 workers, running beside it on the same cores), interleaved 3 times, medians;
      equal times = not input bound (the workers' CPU use is what remains on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image

from blip_jax.data import prepare
from blip_jax.data.pipeline import make_train_loader

BATCH = 32


def photo_like(rng: np.random.Generator, width: int = 640, height: int = 480) -> bytes:
    """Smooth colour regions plus fine texture, so JPEG size and decode cost are photo-like."""
    layers = []
    for cells, weight in ((4, 90.0), (16, 40.0), (64, 20.0)):
        low = rng.normal(0, weight, (cells * 3 // 4 + 1, cells + 1, 3))
        layers.append(np.asarray(Image.fromarray(np.uint8(np.clip(low + 128, 0, 255))).resize(
            (width, height), Image.BICUBIC), np.float32) - 128)
    pixels = 128 + sum(layers) + rng.normal(0, 8, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(pixels, 0, 255))).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photo_dataset(data_dir: str, n: int = 128) -> str:
    root = os.path.join(data_dir, "photos")
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        with open(os.path.join(root, f"{i}.jpg"), "wb") as f:
            f.write(photo_like(rng))
        entries.append({"image": f"{i}.jpg", "caption": f"a photo of a scene with {i % 7} things in it"})
    ann = os.path.join(data_dir, "photos.json")
    with open(ann, "w") as f:
        json.dump(entries, f)
    prepare.build(prepare.make_builder("json", data_dir, annotations=[ann], image_root=root, name="photos"))
    return "blip_pairs/photos"


def images_per_second(loader, batches: int, warmup: int = 3) -> float:
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and first fills are not throughput
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - t)


def tiny_step(data_dir: str, name: str, steps: int) -> dict:
    """Tiny-config train step: fixed batch vs fed by the pipeline (None if the trainer is absent)."""
    try:
        import jax
        from blip_jax import parallel
        from blip_jax.train import trainer
        spec = importlib.util.spec_from_file_location("tiny", os.path.join("configs", "pretrain_tiny.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    except (ImportError, FileNotFoundError, AttributeError) as e:
        return {"skipped": f"trainer not importable: {e}"}
    config.batch_size = BATCH
    config.loss.queue_size = 16 * BATCH
    setup = trainer.build(config, steps_per_epoch=100)
    loader = make_train_loader(data_dir, [(name, "train_web"), (name, "train_clean")], global_batch_size=BATCH,
                               image_size=config.model.vision.image_size, max_tokens=config.data.max_tokens,
                               scale=tuple(config.data.crop_scale), randaug=config.data.randaugment, worker_count=2)
    it = iter(loader)
    state, fixed = setup.state, next(it)

    def run(get_batch) -> float:
        nonlocal state
        t = time.perf_counter()
        for _ in range(steps):
            state, metrics = setup.step_fn(state, parallel.global_batch(get_batch(), setup.mesh))
        jax.block_until_ready(metrics)
        return (time.perf_counter() - t) / steps

    run(lambda: fixed)  # compile
    times: dict[str, list[float]] = {"fixed": [], "fed": []}
    for _ in range(3):  # interleaved: other load on the shared cores hits both alike
        times["fixed"].append(run(lambda: fixed))
        times["fed"].append(run(lambda: next(it)))
    fixed_s, fed_s = (float(np.median(times[k])) for k in ("fixed", "fed"))
    return {"step_ms_fixed_batch": round(1000 * fixed_s, 1), "step_ms_fed_by_pipeline": round(1000 * fed_s, 1),
            "fed_over_fixed": round(fed_s / fixed_s, 3), "runs_ms": {k: [round(1000 * t) for t in v]
                                                                     for k, v in times.items()},
            "batch_size": BATCH, "image_size": config.model.vision.image_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = p.parse_args()
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "batch_size": BATCH,
                     "batches_timed": args.batches}
    with tempfile.TemporaryDirectory() as data_dir:
        photos = photo_dataset(data_dir)
        synth = prepare.ensure_synthetic(data_dir, num_images=2000)
        cases = {
            "224px_full_aug_2workers": (photos, "train", dict(image_size=224, worker_count=2)),
            "224px_full_aug_in_process": (photos, "train", dict(image_size=224, worker_count=0)),
            "64px_full_aug_2workers": (synth, "train_web", dict(image_size=64, worker_count=2)),
            "64px_tiny_config_2workers": (synth, "train_web", dict(image_size=64, worker_count=2,
                                                                    scale=(0.5, 1.0), randaug=False)),
        }
        for key, (name, split, kw) in cases.items():
            loader = make_train_loader(data_dir, name, split, global_batch_size=BATCH, seed=0, **kw)
            results[key] = {"images_per_s": round(images_per_second(loader, args.batches), 1)}
            print(key, results[key], flush=True)
        results["tiny_step"] = tiny_step(data_dir, synth, args.steps)
        print("tiny_step", results["tiny_step"], flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
