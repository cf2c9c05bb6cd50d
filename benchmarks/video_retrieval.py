"""Videos/s of the zero-shot video retrieval re-rank, with and without the per-video
cross-attention key/value sharing (blip_jax/evaluation/video_retrieval.py).

    python benchmarks/video_retrieval.py [--config base] [--image-size 384] [--frames 8] \
        [--videos 4] [--k-test 4] [--groups 1,16] [--repeats 2]

Random weights, random frames and one random caption per video (timing only), on all local
devices (one `data` mesh axis). For each texts-per-group value (1 = every pair projects its
video's 8 x 577 tokens to keys/values itself, the original's cost) the evaluation after the
ITC features (computed once) runs `--repeats` + 1 times; the first compiles and is dropped, the
table gives the medians of the re-rank stage. Videos/s = videos / re-rank seconds at this k_test: every video re-ranks its
union of both shortlists (with --videos = --k-test that is every text). On MSRVTT (1k videos,
k 128) a video has ~2k distinct pairs, so sharing saves more there than at a small k.
Writes benchmarks/results/video_retrieval.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax
import numpy as np

from blip_jax import parallel
from blip_jax.evaluation import retrieval, video_retrieval
from blip_jax.models import Blip, init_params, preset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="base", help="model preset")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--k-test", type=int, default=4)
    p.add_argument("--text-len", type=int, default=35)
    p.add_argument("--groups", default="1,16", help="texts per group to compare, comma-separated")
    p.add_argument("--batch-size", type=int, default=16,
                   help="ITM rows per data shard per step (groups: batch // texts per group)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    config = preset(args.config, text_decoder=False)
    config = config.replace(vision=dataclasses.replace(config.vision, image_size=args.image_size))
    model = Blip(config)
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    size, n = args.image_size, args.videos
    videos = rng.integers(0, 256, (n, args.frames, size, size, 3), dtype=np.uint8)
    lengths = rng.integers(8, args.text_len + 1, n)
    mask = (np.arange(args.text_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, 30000, (n, args.text_len)).astype(np.int32) * mask
    ids[:, 0] = 101
    mesh = parallel.make_mesh({"data": -1})

    params = retrieval.replicate_params(params, mesh)
    t = time.perf_counter()
    features = retrieval.visual_text_features(model, params, videos, ids, mask, args.batch_size, mesh)
    itc_seconds = time.perf_counter() - t  # with compilation
    rows = {}
    for group in [int(g) for g in args.groups.split(",")]:
        runs = []
        for _ in range(args.repeats + 1):
            stages: dict[str, float] = {}
            video_retrieval.video_retrieval_scores(
                model, params, videos, ids, mask, k_test=args.k_test, batch_size=args.batch_size,
                texts_per_group=group, mesh=mesh, timings=stages, features=features)
            runs.append(stages)
        timed = runs[1:]
        rerank = statistics.median(r["itm_rerank"] for r in timed)
        rows[group] = {"itm_rerank_seconds": rerank, "videos_per_sec": n / rerank, "runs": timed}

    k = min(args.k_test, n)
    base = rows.get(1)
    print(f"{args.config} {size} px, {args.frames} frames ({args.frames * ((size // 16) ** 2 + 1)} "
          f"tokens/video), {n} videos x {n} texts, k_test {k}, {jax.device_count()} x "
          f"{jax.devices()[0].platform} ({os.cpu_count()} cores), medians of {args.repeats}")
    print(f"{'texts/group':>12} {'re-rank s':>10} {'videos/s':>9} {'vs per-pair':>12}")
    for group, r in rows.items():
        ratio = f"{base['itm_rerank_seconds'] / r['itm_rerank_seconds']:.2f}x" if base else "-"
        print(f"{group:>12} {r['itm_rerank_seconds']:>10.2f} {r['videos_per_sec']:>9.3f} {ratio:>12}")
    out = {"config": args.config, "image_size": size, "frames": args.frames, "videos": n,
           "k_test": k, "batch_size_per_device": args.batch_size, "repeats": args.repeats,
           "itc_features_seconds_with_compilation": itc_seconds,
           "by_texts_per_group": {str(g): r for g, r in rows.items()},
           "devices": f"{jax.device_count()} x {jax.devices()[0]}", "cpu_count": os.cpu_count(),
           "load_average": os.getloadavg()}
    print(f"written {write_result('video_retrieval', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
