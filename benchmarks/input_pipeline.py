"""Input pipeline throughput (images/s per host and per worker), the demand of a pre-training
host, and the CPU cores a host needs to feed it.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--workers 0,1,2] [--repeats 3] [--batches 50]
        [--cases workers,64px_full_aug_2workers,64px_tiny_config_2workers,tiny_step]
        [--out benchmarks/results/input_pipeline.json]

Cases (--cases, all by default):
  workers: COCO-sized photo-like JPEGs (640x480, ~q90), RandomResizedCrop(0.2, 1) to 224, flip,
      RandAugment N=2 M=5, tokenisation (30 tokens), with N worker processes for each N of
      --workers (0 = in-process). --repeats rounds; in each, every N in turn gets a fresh loader
      (started, warmed up, --batches batches timed, its workers stopped before the next N), so load
      from other jobs on shared cores hits every N alike and no idle loader's workers refill their
      buffers during another's window. Reported: median images/s, images/s per worker (N = 0
      counts as one process), images per CPU-second (CPU time of this process and its workers over
      the window: less sensitive to other jobs than wall time) and cores used (their ratio).
      The old keys 224px_full_aug_2workers / 224px_full_aug_in_process are these medians.
  64px_*: the synthetic data (96 px renders) to the tiny resolution, with full augmentation and
      with the tiny config's settings (crop scale 0.5-1, no RandAugment); 2 workers.
  tiny_step: the tiny config's train step timed on one fixed in-memory batch vs fed by the
      pipeline (2 workers, running beside it on the same cores), interleaved 3 times, medians;
      equal times = not input bound (the workers' CPU use is what remains on 2 cores).

Demand (computed, not measured): the examples/s one host must feed at the paper's pre-training
recipe (ViT-B/16, 224 px, 30 tokens) = host peak FLOP/s x assumed MFU / FLOPs per example, the
FLOPs per example being XLA's cost analysis of our jitted base train step
(benchmarks/results/train_step.json, row "base": flops_per_step / batch). Hosts: one 8xA100 node
(8 x 312 TFLOP/s bf16 dense, NVIDIA A100 datasheet) and one TPU v4 host (4 chips x 275 TFLOP/s
bf16, Google Cloud TPU v4 documentation), at MFU 30% and 45% (assumptions: 45% is issue 16's
target; no device step time of a pre-training step has been measured in this project). Cores
needed = demand / the best measured images/s per worker process at 224 px (N >= 1), rounded up;
also demand / the best images per CPU-second among the same N (CPU of workers + main process).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import json
import math
import os
import platform
import re
import sys
import tempfile
import time

import numpy as np
import psutil
from PIL import Image

from blip_jax.data import prepare
from blip_jax.data.pipeline import make_train_loader

BATCH = 32
WORKER_BUFFER = 2  # batches each worker makes ahead (make_train_loader's default)
CASES = ("workers", "64px_full_aug_2workers", "64px_tiny_config_2workers", "tiny_step")
PAPER_BATCH_FALLBACK = 2880
MFUS = (0.30, 0.45)
HOSTS = (
    {"name": "8xA100 node (GPU)", "accelerators": 8, "peak_flops_per_accelerator": 312e12,
     "source": "NVIDIA A100 datasheet: 312 TFLOP/s BF16 Tensor Core, dense (without sparsity)"},
    {"name": "TPU v4 host (4 chips)", "accelerators": 4, "peak_flops_per_accelerator": 275e12,
     "source": "Google Cloud TPU v4 documentation: 275 TFLOP/s peak bf16 per chip; 4 chips per host"},
)


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


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU time of this process and its live children (grain's workers)."""
    total = 0.0
    for q in [proc, *proc.children(recursive=True)]:
        try:
            t = q.cpu_times()
        except psutil.Error:  # a child that exited meanwhile
            continue
        total += t.user + t.system
    return total


def timed_window(it, batches: int) -> tuple[float, float]:
    """(images/s, images per CPU-second) over the next `batches` batches of `it`."""
    proc = psutil.Process()
    c, t = cpu_seconds(proc), time.perf_counter()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - t, cpu_seconds(proc) - c
    return batches * BATCH / wall, batches * BATCH / cpu if cpu > 0 else float("nan")


def images_per_second(loader, batches: int, repeats: int = 1, warmup: int = 3) -> dict:
    """Median images/s of `repeats` consecutive windows of `batches` batches after a warm-up."""
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and first fills are not throughput
        next(it)
    runs = [timed_window(it, batches) for _ in range(repeats)]
    return {"images_per_s": round(float(np.median([r[0] for r in runs])), 1),
            "runs_images_per_s": [round(r[0], 1) for r in runs]}


def close_loader(it) -> None:
    """Stop a loader iterator's worker processes now (not at garbage collection), so they take
    no CPU time from the next window; waits for them to exit."""
    children = psutil.Process().children(recursive=True)
    inner = getattr(getattr(it, "_it", None), "_iterator", None)  # TrainIterator -> grain's iterator
    if inner is not None and hasattr(inner, "close"):
        inner.close()
    del it, inner
    gc.collect()
    psutil.wait_procs([c for c in children if "resource_tracker" not in " ".join(_cmdline(c))], timeout=30)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def worker_sweep(data_dir: str, name: str, workers: list[int], batches: int, repeats: int,
                 warmup: int = 3) -> dict:
    """224 px, full augmentation, for every worker count: --repeats rounds, each a fresh loader
    per worker count in turn (started, warmed up, one timed window, closed), medians."""
    runs: dict[int, list[tuple[float, float]]] = {n: [] for n in workers}
    for r in range(repeats):
        for n in workers:
            loader = make_train_loader(data_dir, name, "train", global_batch_size=BATCH, seed=r, image_size=224,
                                       worker_count=n, worker_buffer_size=WORKER_BUFFER)
            it = iter(loader)
            for _ in range(max(warmup, n + 1)):  # worker start-up and first fills are not throughput
                next(it)
            runs[n].append(timed_window(it, batches))
            close_loader(it)
            del it, loader
            print(f"  round {r + 1}/{repeats}, {n} workers: {runs[n][-1][0]:.1f} images/s", flush=True)
    out = {}
    for n in workers:
        ips = float(np.median([w for w, _ in runs[n]]))
        per_cpu_s = float(np.median([c for _, c in runs[n]]))
        out[str(n)] = {"worker_processes": n, "images_per_s": round(ips, 1),
                       "images_per_s_per_worker": round(ips / max(n, 1), 1),
                       "images_per_cpu_second": round(per_cpu_s, 1),
                       "cores_used": round(ips / per_cpu_s, 2),
                       "runs_images_per_s": [round(w, 1) for w, _ in runs[n]],
                       "runs_images_per_cpu_second": [round(c, 1) for _, c in runs[n]]}
    return out


def read_paper_batch() -> dict:
    """The paper's pre-training batch and hardware as REFERENCE.md states them (if present)."""
    for path in ("/work/shared/REFERENCE.md", os.path.join("..", "shared", "REFERENCE.md")):
        if not os.path.exists(path):
            continue
        text = open(path).read()
        batch = re.search(r"Global batch (\d+) \(ViT-B\)", text)
        nodes = re.search(r"Pre-training ran on (\w+) (\d+)-GPU nodes", text)
        if batch:
            words = {"one": 1, "two": 2, "three": 3, "four": 4}
            return {"global_batch": int(batch.group(1)), "source": os.path.abspath(path),
                    "nodes": words.get(nodes.group(1), nodes.group(1)) if nodes else None,
                    "gpus_per_node": int(nodes.group(2)) if nodes else None,
                    "quote": "; ".join(m.group(0) for m in (batch, nodes) if m)}
    return {"global_batch": PAPER_BATCH_FALLBACK, "source": "not found: REFERENCE.md absent; BLIP paper value",
            "nodes": None, "gpus_per_node": None, "quote": ""}


def demand_table(train_step_json: str, per_worker: float, per_cpu_second: float | None) -> dict:
    """Examples/s a pre-training host must feed (computed from FLOPs and an assumed MFU), and
    the CPU cores that takes at the measured per-worker rate."""
    with open(train_step_json) as f:
        ts = json.load(f)
    base = next(r for r in ts["rows"] if r["config"] == "base")
    flops_per_example = base["flops_per_step"] / base["batch"]
    paper = read_paper_batch()
    per_accel = paper["global_batch"] / (paper["nodes"] * paper["gpus_per_node"]) \
        if paper["nodes"] and paper["gpus_per_node"] else None
    rows = []
    for host in HOSTS:
        peak = host["accelerators"] * host["peak_flops_per_accelerator"]
        per_host_batch = round(per_accel * host["accelerators"]) if per_accel else None
        for mfu in MFUS:
            demand = peak * mfu / flops_per_example
            row = {"host": host["name"], "accelerators": host["accelerators"],
                   "peak_flops_per_accelerator": host["peak_flops_per_accelerator"], "host_peak_flops": peak,
                   "assumed_mfu": mfu, "demand_examples_per_s": round(demand, 1),
                   "per_host_batch": per_host_batch,
                   "implied_step_s": round(per_host_batch / demand, 3) if per_host_batch else None,
                   "cores_needed": math.ceil(demand / per_worker)}
            if per_cpu_second:
                row["cores_needed_from_cpu_time"] = math.ceil(demand / per_cpu_second)
            rows.append(row)
    return {
        "basis": "computed from FLOPs and an assumed MFU (no device step time of a pre-training step "
                 "has been measured in this project: benchmarks/results/*.json hold CPU train steps "
                 "and, from an H100, CapFilt caption inference only)",
        "flops_per_example": flops_per_example,
        "flops_source": f"{train_step_json}, row 'base' (batch {base['batch']}, {base['image_size']} px, "
                        f"text {base['text_len']}): flops_per_step {base['flops_per_step']:.4g} / batch, "
                        "XLA's cost analysis of the jitted train step (forward, backward, momentum "
                        "encoders; model FLOPs)",
        "peak_sources": {h["name"]: h["source"] for h in HOSTS},
        "mfu_note": "assumed, not measured: 45% is issue 16's target, 30% a lower case",
        "paper_batch": paper,
        "paper_hardware_note": "REFERENCE.md gives the paper's ViT-B global batch (2880) and its hardware "
                               "as two 16-GPU nodes (32 GPUs; the GPU model is not named there). The hosts "
                               "below are an 8xA100 node and a TPU v4 host; per-host batch keeps the paper's "
                               "per-accelerator batch.",
        "per_accelerator_batch": per_accel,
        "per_host_batch_note": (f"the paper's global batch {paper['global_batch']} over "
                                f"{paper['nodes']} x {paper['gpus_per_node']} GPUs = {per_accel:g} per "
                                "accelerator; per host = that x accelerators per host (demand in examples/s "
                                "does not depend on it; implied_step_s = per_host_batch / demand)")
                               if per_accel else "per-accelerator batch unknown",
        "cores_basis": f"cores_needed = ceil(demand / {per_worker} images/s per worker, the best measured "
                       "per-worker-process figure at 224 px with full augmentation); cores_needed_from_cpu_time = "
                       f"ceil(demand / {per_cpu_second} images per CPU-second of the process and its workers, the best "
                       "median among the same worker counts)",
        "rows": rows,
    }


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


def print_tables(results: dict) -> None:
    sweep = results.get("224px_full_aug_workers")
    if sweep:
        print("\n224 px, full augmentation (RandomResizedCrop 0.2-1, flip, RandAugment 2/5, 30 tokens), "
              f"batch {BATCH}, medians of {results['repeats']} windows of {results['batches_timed']} batches")
        print(f"{'workers':>8} {'images/s':>9} {'per worker':>11} {'per CPU-s':>10} {'cores used':>10}  "
              "runs (images/s)")
        for r in sweep.values():
            print(f"{r['worker_processes']:>8} {r['images_per_s']:>9.1f} {r['images_per_s_per_worker']:>11.1f} "
                  f"{r['images_per_cpu_second']:>10.1f} {r['cores_used']:>10.2f}  {r['runs_images_per_s']}")
    d = results.get("demand")
    if d:
        print(f"\nDemand per host ({d['flops_per_example'] / 1e9:.1f} GFLOP per example; computed from FLOPs "
              "and an assumed MFU, not measured)")
        print(f"{'host':<28} {'peak PFLOP/s':>12} {'MFU':>4} {'examples/s':>10} {'host batch':>10} "
              f"{'step s':>7} {'cores':>6} {'cores (CPU-s)':>13}")
        for r in d["rows"]:
            print(f"{r['host']:<28} {r['host_peak_flops'] / 1e15:>12.3f} {100 * r['assumed_mfu']:>3.0f}% "
                  f"{r['demand_examples_per_s']:>10.1f} {r['per_host_batch'] or '-':>10} "
                  f"{r['implied_step_s'] or '-':>7} {r['cores_needed']:>6} "
                  f"{r.get('cores_needed_from_cpu_time', '-'):>13}")
        print(d["per_host_batch_note"])
        print(d["cores_basis"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=50, help="batches per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per case (median reported)")
    p.add_argument("--workers", default="0,1,2", help="worker counts for the 224 px case (0 = in-process)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--train-step-json", default="benchmarks/results/train_step.json")
    p.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        p.error(f"unknown --cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    workers = sorted({int(n) for n in args.workers.split(",") if n != ""})
    load_start = os.getloadavg()
    results: dict = {"command": " ".join(["python", *sys.argv]), "platform": platform.platform(),
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "cpu_count": os.cpu_count(),
                     "load_average_start": [round(x, 2) for x in load_start], "batch_size": BATCH,
                     "batches_timed": args.batches, "repeats": args.repeats, "worker_buffer_size": WORKER_BUFFER}
    with tempfile.TemporaryDirectory() as data_dir:
        photos = photo_dataset(data_dir)
        if "workers" in cases:
            sweep = worker_sweep(data_dir, photos, workers, args.batches, args.repeats)
            results["224px_full_aug_workers"] = sweep
            for n, key in ((2, "224px_full_aug_2workers"), (0, "224px_full_aug_in_process")):
                if str(n) in sweep:
                    results[key] = {"images_per_s": sweep[str(n)]["images_per_s"]}
        if any(c.startswith("64px") or c == "tiny_step" for c in cases):
            synth = prepare.ensure_synthetic(data_dir, num_images=2000)
            small = {
                "64px_full_aug_2workers": dict(image_size=64, worker_count=2),
                "64px_tiny_config_2workers": dict(image_size=64, worker_count=2, scale=(0.5, 1.0), randaug=False),
            }
            for key, kw in small.items():
                if key in cases:
                    loader = make_train_loader(data_dir, synth, "train_web", global_batch_size=BATCH, seed=0, **kw)
                    results[key] = images_per_second(loader, args.batches, args.repeats)
                    print(key, results[key], flush=True)
            if "tiny_step" in cases:
                results["tiny_step"] = tiny_step(data_dir, synth, args.steps)
                print("tiny_step", results["tiny_step"], flush=True)
    sweep = results.get("224px_full_aug_workers")
    if sweep and os.path.exists(args.train_step_json):
        # Per worker process; in-process (N = 0, where the main process also reads and batches)
        # only when no worker count was run.
        candidates = [r for r in sweep.values() if r["worker_processes"] > 0] or list(sweep.values())
        best = max(candidates, key=lambda r: r["images_per_s_per_worker"])
        best_cpu = max(r["images_per_cpu_second"] for r in candidates)
        results["demand"] = demand_table(args.train_step_json, best["images_per_s_per_worker"], best_cpu)
        results["demand"]["best_per_worker_from"] = f"{best['worker_processes']} workers"
    load_end = os.getloadavg()
    results["load_average_end"] = [round(x, 2) for x in load_end]
    shared = max(load_start[0], load_end[0]) > (os.cpu_count() or 1)
    results["notes"] = (
        ("The machine was shared: the 1-minute load average (start "
         f"{load_start[0]:.2f}, end {load_end[0]:.2f}) exceeded the {os.cpu_count()} CPUs, so other jobs "
         "took CPU time from these runs: images/s (wall) are low and noisy, and extra workers cannot "
         "show their gain on cores that are already busy; images per CPU-second is the steadier "
         "figure. " if shared else
         f"Load average (start {load_start[0]:.2f}, end {load_end[0]:.2f}) stayed within the "
         f"{os.cpu_count()} CPUs. ")
        + "Per worker = images/s / worker processes (in-process counts as one; the main process's own "
          "work of receiving batches is not counted as a worker); cores used = images/s / images per "
          "CPU-second of the process and its workers. Images are photo-like 640x480 JPEGs "
          "from the page cache: reading from network storage, and larger web images (CC12M, LAION), "
          "cost more per image. Cores needed are worker cores only, beyond the training process's own.")
    print_tables(results)
    print(results["notes"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
