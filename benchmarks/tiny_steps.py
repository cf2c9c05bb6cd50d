"""The train steps the README's main job runs: the tiny recipes of blip_jax/experiments/tiny.py
(pre-training, caption and retrieval fine-tuning, as the bootstrap experiment's stages run them),
one device, a fixed synthetic batch of each recipe's shape (batch 32, its text length, a third
of the tokens padding). Prints a table and writes benchmarks/results/tiny_steps.json.

    python benchmarks/tiny_steps.py [--repeats 15]
    python benchmarks/tiny_steps.py --against /path/to/other/checkout --rounds 3

With --against, each round runs every recipe in a fresh process of this checkout and of the
other (its blip_jax first on PYTHONPATH; e.g. `git worktree add /tmp/old COMMIT`), alternately,
and reports the paired ratios other / this of the median step times (a noisy shared machine
moves both sides of a pair alike). The other checkout needs only blip_jax (this script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import common

RECIPES = ("pretrain", "caption", "retrieval")


def time_recipe(name: str, repeats: int) -> dict:
    """Median seconds of the recipe's jitted train step (compiled once, not timed)."""
    import jax
    import numpy as np

    import blip_jax
    from blip_jax import parallel
    from blip_jax.experiments import tiny
    from blip_jax.train import trainer

    c = getattr(tiny, name)()
    batch, length, size = c.batch_size, c.data.max_tokens, c.model.vision.image_size
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    setup = trainer.build(c, steps_per_epoch=100, mesh=mesh)
    rng = np.random.default_rng(0)
    mask = np.ones((batch, length), np.int32)
    mask[:, 2 * length // 3:] = 0
    gb = parallel.global_batch({
        "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        "text_ids": rng.integers(1000, 3000, (batch, length)).astype(np.int32),
        "text_mask": mask, "image_id": np.arange(batch, dtype=np.int32)}, mesh)
    # A checkout from before LengthsBoundStep (--against) has a plain jitted step.
    compile_step = getattr(setup.step_fn, "compile", None)
    step = (compile_step(setup.state, gb) if compile_step is not None
            else setup.step_fn.lower(setup.state, gb).compile())
    carry = {"state": setup.state}

    def one_step():
        carry["state"], metrics = step(carry["state"], gb)
        return jax.block_until_ready(metrics)

    one_step()  # the first call is not timed
    median, times, _ = common.median_time(one_step, repeats)
    return {"recipe": name, "batch": batch, "text_len": length, "image_size": size,
            "step_seconds_median": median, "step_seconds_all": times,
            "blip_jax": os.path.dirname(blip_jax.__file__)}


def _run_in_checkout(checkout: str, name: str, repeats: int) -> dict:
    """time_recipe in a fresh process whose blip_jax is the checkout's."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [checkout] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name,
                          "--repeats", str(repeats)], env=env, capture_output=True, text=True,
                         check=True, cwd=checkout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--against", default="", help="another checkout to compare with, alternately")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # a child of --against
    args = p.parse_args()
    if args.one:
        print(json.dumps(time_recipe(args.one, args.repeats)))
        return 0
    recipes = args.recipes.split(",")
    this = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not args.against:
        rows = [time_recipe(name, args.repeats) for name in recipes]
        print(f"{'recipe':10} {'batch':>5} {'step s':>8} {'ex/s':>8}")
        for r in rows:
            print(f"{r['recipe']:10} {r['batch']:>5} {r['step_seconds_median']:>8.3f} "
                  f"{r['batch'] / r['step_seconds_median']:>8.1f}")
        common.write_result("tiny_steps", {"rows": rows})
        return 0
    other = os.path.abspath(args.against)
    runs = []
    for round_ in range(args.rounds):
        for name in recipes:
            pair = {"round": round_, "recipe": name}
            for side, checkout in (("other", other), ("this", this)):
                pair[side] = _run_in_checkout(checkout, name, args.repeats)["step_seconds_median"]
            pair["ratio"] = pair["other"] / pair["this"]
            runs.append(pair)
            print(f"round {round_} {name:10} other {pair['other']:.3f} s  this "
                  f"{pair['this']:.3f} s  ratio {pair['ratio']:.2f}", flush=True)
    summary = {name: statistics.median(r["ratio"] for r in runs if r["recipe"] == name)
               for name in recipes}
    print("median paired ratio other/this: " + ", ".join(f"{k} {v:.2f}x" for k, v in summary.items()))
    common.write_result("tiny_steps_against", {"other": other, "this": this, "runs": runs,
                                               "median_ratio": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
