"""XLA CPU options against torch on the same machine: float32 matmul and the ViT forward.

    python benchmarks/xla_cpu_flags.py [--size 2048] [--config base] [--image-size 384] \
        [--batch 4] [--repeats 3] [--rounds 2] [--settings "default;--xla_cpu_use_onednn=true"]

XLA reads XLA_FLAGS once per process, so every setting runs in a child process of its own
(`--child`), which compiles, then times --repeats calls of (a) an n x n float32 matmul and (b) the
blip_jax ViT of the preset (`Blip.image_features`, random weights, seed 0) on --batch random
images, and saves the ViT's output. The parent times torch's matmul (MKL/oneDNN) and
transformers' BlipVisionModel of the same shape between the children; --rounds rounds each run
every setting and torch in turn (interleaved: a load change hits all alike). Medians over every
round's calls. Each setting's ViT output is compared with the first setting's (largest absolute
difference), so an option that changes results shows it. Prints a table and writes
benchmarks/results/xla_cpu_flags.json (or --result).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import common

DEFAULT_SETTINGS = ";".join([
    "default",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_ynn_fusion_type=dot",
])


def child(args) -> None:
    """Runs under the setting's XLA_FLAGS; prints one JSON line."""
    import jax
    import jax.numpy as jnp
    from blip_jax.models import Blip, init_params, preset

    n = args.size
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    t = time.perf_counter()
    mm(a).block_until_ready()
    mm_compile = time.perf_counter() - t
    mm_times = common.median_time(lambda: mm(a).block_until_ready(), args.repeats)[1]

    config = preset(args.config)
    config = config.replace(vision=dataclasses.replace(config.vision, image_size=args.image_size))
    model = Blip(config)
    params = init_params(config, jax.random.key(0))
    images = jnp.asarray(np.random.default_rng(1).normal(
        size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32))
    vit = jax.jit(lambda p, x: model.apply({"params": p}, x, method=Blip.image_features))
    t = time.perf_counter()
    out = vit(params, images).block_until_ready()
    vit_compile = time.perf_counter() - t
    vit_times = common.median_time(lambda: vit(params, images).block_until_ready(), args.repeats)[1]
    np.save(args.child_out, np.asarray(out))
    print(json.dumps({"matmul": mm_times, "vit": vit_times, "matmul_compile": mm_compile,
                      "vit_compile": vit_compile}))


def torch_side(args):
    """(matmul fn, ViT fn) of torch / transformers at the same shapes (random weights)."""
    import torch
    from transformers import BlipVisionConfig, BlipVisionModel
    from blip_jax.models import preset
    v = preset(args.config).vision
    n = args.size
    a = torch.from_numpy(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
    cfg = BlipVisionConfig(hidden_size=v.width, intermediate_size=v.mlp_dim,
                           num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
                           layer_norm_eps=v.layer_norm_eps, image_size=args.image_size,
                           patch_size=v.patch_size)
    model = BlipVisionModel(cfg).eval()
    pixels = torch.from_numpy(np.random.default_rng(1).normal(
        size=(args.batch, 3, args.image_size, args.image_size)).astype(np.float32))

    def vit():
        with torch.no_grad():
            return model(pixel_values=pixels).last_hidden_state
    return (lambda: a @ a), vit


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--config", default="base")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per child")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help="';'-separated XLA_FLAGS values; 'default' = no flags")
    p.add_argument("--result", default="xla_cpu_flags")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    settings = args.settings.split(";")
    mm_torch, vit_torch = torch_side(args)
    mm_torch(), vit_torch()  # warm-up
    times = {s: {"matmul": [], "vit": [], "compile": []} for s in settings + ["torch"]}
    failed: dict[str, str] = {}
    diffs: dict[str, float] = {}
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for i, s in enumerate(settings):
                if s in failed:
                    continue
                env = dict(os.environ)
                env["XLA_FLAGS"] = " ".join(x for x in [os.environ.get("XLA_FLAGS", ""),
                                                        "" if s == "default" else s] if x)
                out_path = os.path.join(tmp, f"{i}.npy")
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--child-out", out_path,
                       "--size", str(args.size), "--config", args.config, "--image-size",
                       str(args.image_size), "--batch", str(args.batch), "--repeats",
                       str(args.repeats)]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if r.returncode:
                    failed[s] = (r.stderr.strip().splitlines() or ["?"])[-1][:300]
                    continue
                res = json.loads(r.stdout.strip().splitlines()[-1])
                times[s]["matmul"] += res["matmul"]
                times[s]["vit"] += res["vit"]
                times[s]["compile"].append(res["vit_compile"])
                if first is None:  # the first setting that ran: the others' reference
                    first = np.load(out_path)
                diffs[s] = float(np.max(np.abs(np.load(out_path) - first)))
            times["torch"]["matmul"] += common.median_time(mm_torch, args.repeats)[1]
            times["torch"]["vit"] += common.median_time(vit_torch, args.repeats)[1]
    flops = 2 * args.size ** 3
    t_vit = statistics.median(times["torch"]["vit"])
    t_mm = statistics.median(times["torch"]["matmul"])
    print(f"{args.config} ViT at {args.image_size} px, batch {args.batch}; {args.size}^2 matmul; "
          f"medians of {args.rounds} x {args.repeats}")
    print(f"{'setting':72} {'matmul GF/s':>11} {'vs torch':>8} {'ViT s':>7} {'vs torch':>8} "
          f"{'max|diff|':>9}")
    rows = {}
    for s in settings + ["torch"]:
        if s in failed:
            print(f"{s:72} failed: {failed[s]}")
            continue
        mm = statistics.median(times[s]["matmul"])
        vit = statistics.median(times[s]["vit"])
        rows[s] = {"matmul_gflops": flops / mm / 1e9, "matmul_vs_torch": t_mm / mm,
                   "vit_seconds": vit, "vit_speed_vs_torch": t_vit / vit,
                   "vit_max_abs_diff_vs_first": diffs.get(s), "runs": times[s]}
        print(f"{s:72} {flops / mm / 1e9:>11.1f} {t_mm / mm:>7.2f}x {vit:>7.3f} "
              f"{t_vit / vit:>7.2f}x {diffs.get(s, float('nan')):>9.1e}")
    path = common.write_result(args.result, {
        "size": args.size, "config": args.config, "image_size": args.image_size,
        "batch": args.batch, "repeats": args.repeats, "rounds": args.rounds, "rows": rows,
        "failed": failed, **common.machine_with_torch()})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
