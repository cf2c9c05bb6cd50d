"""What the benchmark scripts share: timing, the machine description and the results file.
The scripts run as `python benchmarks/NAME.py`, so this module is importable as `common`."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """(median seconds, every run's seconds, the last output) of `repeats` calls of fn."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def machine_with_torch() -> dict[str, Any]:
    """The machine and library versions of a side-by-side jax / torch run."""
    import jax
    import torch
    import transformers
    return {"torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "devices": str(jax.devices()[0]),
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__}}


def write_result(name: str, out: dict[str, Any]) -> str:
    """Writes benchmarks/results/NAME.json with the exact command; returns its path."""
    script = os.path.basename(sys.argv[0])
    out = {**out, "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:])}
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    return path


def vision_tower(spec: str):
    """(config, params, images) of a model that is only its vision tower, spec
    CONFIG:IMAGE_SIZE:BATCH (a preset at that image size, random init with seed 0, normal random
    images [BATCH, SIZE, SIZE, 3]): what captioning and CapFilt run first (Blip.image_features)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    from blip_jax.models import init_params, preset

    name, size, batch = spec.split(":")
    base = preset(name)
    config = base.replace(text_encoder=False, itc_itm_heads=False, text_decoder=False,
                          vision=dataclasses.replace(base.vision, image_size=int(size)))
    images = jnp.asarray(np.random.default_rng(0).normal(
        size=(int(batch), int(size), int(size), 3)).astype(np.float32))
    return config, init_params(config, jax.random.key(0)), images


def peak_size(n: int = 0) -> int:
    """The matmul size of matmul_peak: n, or for 0 the default device's default (2048 on a
    CPU; 8192 on a GPU/TPU, where 2048 would not fill the chip)."""
    import jax
    return n or (2048 if jax.devices()[0].platform == "cpu" else 8192)


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 10) -> float:
    """Median FLOP/s of an n x n x n matmul in `dtype` on the default device (jnp.dot, random
    operands: zeros run faster on some chips and would overstate the peak)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    b = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def guarded(count: Callable[[], float], what: str) -> float:
    """count(), or NaN with the error printed: a FLOP count that fails on another jax version
    must not lose the timings of a run on a lent accelerator."""
    try:
        return count()
    except Exception as e:  # noqa: BLE001  reported, and the row says NaN
        print(f"warning: {what} not counted: {type(e).__name__}: {e}", file=sys.stderr)
        return float("nan")


def dot_flops(jaxpr, while_trips: int = 1) -> float:
    """Matrix-multiply FLOPs (2 per multiply-add) of a (Closed)Jaxpr: every dot_general and
    convolution, in nested jaxprs too; a scan's body counts `length` times, a while loop's
    `while_trips` times (the caller knows the trip count: decoding runs to max_length when no
    row ends early). The model-FLOPs count of MFU: elementwise work, and what XLA adds or
    removes (rematerialisation, fusion), is left out, unlike XLA's cost analysis."""
    import numpy as np
    from jax.extend import core as jcore

    def size(shape, dims):
        return int(np.prod([shape[d] for d in dims], dtype=np.int64)) if dims else 1

    def walk(jx) -> float:
        jx = getattr(jx, "jaxpr", jx)
        total = 0.0
        for eqn in jx.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
                ls, rs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
                lfree = [d for d in range(len(ls)) if d not in lc and d not in lb]
                rfree = [d for d in range(len(rs)) if d not in rc and d not in rb]
                total += 2.0 * size(ls, lb) * size(ls, lc) * size(ls, lfree) * size(rs, rfree)
            elif name == "conv_general_dilated":
                out = eqn.outvars[0].aval.shape
                kernel = eqn.invars[1].aval.shape
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out ch, in ch, *spatial)
                per_out = size(kernel, [spec[1], *spec[2:]])
                total += 2.0 * int(np.prod(out, dtype=np.int64)) * per_out
            if name == "while":  # the body, not the condition
                total += while_trips * walk(eqn.params["body_jaxpr"])
                continue
            subs = [v for v in eqn.params.values()
                    if isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr))]
            subs += [b for v in eqn.params.values() if isinstance(v, (tuple, list))
                     for b in v if isinstance(b, (jcore.Jaxpr, jcore.ClosedJaxpr))]
            if name == "cond":  # one branch runs: the costliest bounds it
                total += max((walk(b) for b in subs), default=0.0)
            else:  # a scan's body runs `length` times
                repeat = eqn.params.get("length", 1) if name == "scan" else 1
                total += repeat * sum(walk(b) for b in subs)
        return total

    return walk(jaxpr)
