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

    python benchmarks/tiny_steps.py --huge-pages --rounds 4

runs every recipe twice at once, as the CI's two pinned test workers do: one process with
malloc on huge pages (blip_jax/allocator.py), one without, each pinned to its own CPU, the
CPUs swapped every round; reports the paired ratios without / with, and both sides' page
faults and kernel time per step (benchmarks/results/tiny_steps_huge_pages.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import common

RECIPES = ("pretrain", "caption", "retrieval")


def recipe_step(name: str):
    """(one_step(): a step on the fixed batch from the state the last one left, blocking until
    done; the trainer Setup; the fixed global batch; XLA's compiled program) of a tiny recipe on
    one device: batch 32, its text length, a third of the tokens padding."""
    import jax
    import numpy as np

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
    compiled = setup.step_fn.lower(setup.state, gb).compile()
    # A checkout from before LengthsBoundStep (--against) has a plain jitted step.
    lengths = getattr(setup.step_fn, "lengths", None)
    step = compiled if lengths is None else (lambda s, b: compiled(s, b, lengths))
    carry = {"state": setup.state}

    def one_step():
        carry["state"], metrics = step(carry["state"], gb)
        return jax.block_until_ready(metrics)

    return one_step, setup, gb, compiled


def time_recipe(name: str, repeats: int) -> dict:
    """Median seconds of the recipe's jitted train step (compiled once, not timed)."""
    import blip_jax

    one_step, _, gb, _ = recipe_step(name)
    batch, size = gb["image"].shape[:2]
    length = gb["text_ids"].shape[1]
    one_step()  # the first call is not timed
    before = resource.getrusage(resource.RUSAGE_SELF)
    median, times, _ = common.median_time(one_step, repeats)
    after = resource.getrusage(resource.RUSAGE_SELF)
    calls = len(times)
    return {"recipe": name, "batch": batch, "text_len": length, "image_size": size,
            "step_seconds_median": median, "step_seconds_all": times,
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / calls,
            "kernel_seconds_per_step": (after.ru_stime - before.ru_stime) / calls,
            "user_seconds_per_step": (after.ru_utime - before.ru_utime) / calls,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
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


def _child(name: str, repeats: int, huge: bool, cpu: int | None) -> subprocess.Popen:
    """time_recipe in a fresh process of this checkout, with or without the malloc tunable,
    pinned to `cpu` (None: not pinned)."""
    from blip_jax import allocator

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLIBC_TUNABLES")}
    env = allocator.environment(env) if huge else {**env, allocator.ENV: "off"}
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one", name,
                             "--repeats", str(repeats)], env=env, stdout=subprocess.PIPE,
                            text=True, preexec_fn=pin)


def compare_huge_pages(recipes: list[str], repeats: int, rounds: int) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    runs = []
    for round_ in range(rounds):
        for name in recipes:
            # Side by side, one CPU each (the CI's two workers); the CPUs swap every round.
            pinned = cpus[:2] if len(cpus) >= 2 else [None, None]
            if round_ % 2:
                pinned.reverse()
            procs = {"huge": _child(name, repeats, True, pinned[0]),
                     "small": _child(name, repeats, False, pinned[1])}
            got = {}
            for side, proc in procs.items():
                out, _ = proc.communicate()
                if proc.returncode:
                    raise RuntimeError(f"{name} ({side} pages) failed: exit {proc.returncode}")
                got[side] = json.loads(out.strip().splitlines()[-1])
            pair = {"round": round_, "recipe": name, "cpus": {"huge": pinned[0], "small": pinned[1]},
                    **{f"{side}_{k}": r[k] for side, r in got.items()
                       for k in ("step_seconds_median", "minor_faults_per_step",
                                 "kernel_seconds_per_step", "user_seconds_per_step")}}
            pair["ratio"] = pair["small_step_seconds_median"] / pair["huge_step_seconds_median"]
            runs.append(pair)
            print(f"round {round_} {name:10} small pages {pair['small_step_seconds_median']:.3f} s "
                  f"({pair['small_minor_faults_per_step']:.0f} faults, "
                  f"{1e3 * pair['small_kernel_seconds_per_step']:.0f} ms kernel)  huge "
                  f"{pair['huge_step_seconds_median']:.3f} s ({pair['huge_minor_faults_per_step']:.0f}"
                  f" faults, {1e3 * pair['huge_kernel_seconds_per_step']:.0f} ms kernel)  ratio "
                  f"{pair['ratio']:.2f}", flush=True)
    summary = {name: statistics.median(r["ratio"] for r in runs if r["recipe"] == name)
               for name in recipes}
    print("median paired ratio small/huge pages: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in summary.items()))
    return {"runs": runs, "median_ratio": summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--against", default="", help="another checkout to compare with, alternately")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--huge-pages", action="store_true",
                   help="with vs without malloc on huge pages, side by side")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # a child of --against
    args = p.parse_args()
    if args.one:
        print(json.dumps(time_recipe(args.one, args.repeats)))
        return 0
    recipes = args.recipes.split(",")
    if args.huge_pages:
        common.write_result("tiny_steps_huge_pages",
                            compare_huge_pages(recipes, args.repeats, args.rounds))
        return 0
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
