"""benchmarks/common.dot_flops, the model-FLOPs numerator of the benchmarks' MFU and of CapFilt's
FLOP bound: exact matmul/convolution counts through grad, scan, while and nested jits, and
the vision tower's count equal to the ViT formula."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.models import init_params, preset
from blip_jax.models.blip import Blip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark_script(name: str):
    """benchmarks/NAME.py imported as the scripts run (benchmarks/ first on sys.path, where
    they find `common`)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def common():
    path = os.path.join(ROOT, "benchmarks", "common.py")
    spec = importlib.util.spec_from_file_location("benchmarks_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counts_matmuls_through_grad_scan_while_and_jit(common):
    a, w = jnp.ones((4, 5)), jnp.ones((5, 6))
    # A batched contraction: 2 * batch * m * k * n.
    bmm = jax.make_jaxpr(lambda x, y: jnp.einsum("bij,bjk->bik", x, y))(
        jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6)))
    assert common.dot_flops(bmm) == 2 * 3 * 4 * 5 * 6
    # grad w.r.t. w only: the forward product and dW = x^T g (no dx).
    grad = jax.make_jaxpr(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))))(w, a)
    assert common.dot_flops(grad) == 2 * (2 * 4 * 5 * 6)
    # A scan's body counts `length` times, a while loop's body `while_trips` times.
    scan = jax.make_jaxpr(lambda x: jax.lax.scan(lambda c, _: (c @ jnp.ones((5, 5)), None), x,
                                                 None, length=7)[0])(a)
    assert common.dot_flops(scan) == 7 * 2 * 4 * 5 * 5
    loop = jax.make_jaxpr(lambda x: jax.lax.while_loop(
        lambda c: c[1] < 3, lambda c: (c[0] @ jnp.ones((5, 5)), c[1] + 1), (x, 0))[0])(a)
    assert common.dot_flops(loop, while_trips=3) == 3 * 2 * 4 * 5 * 5
    # Inside a nested jit, and agreeing with XLA's own count for a lone product.
    f = jax.jit(lambda x, y: x @ y)
    assert common.dot_flops(jax.make_jaxpr(jax.jit(f))(a, w)) == 2 * 4 * 5 * 6
    cost = f.lower(a, w).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert cost["flops"] == 2 * 4 * 5 * 6


def test_vision_tower_matches_the_vit_formula(common):
    """Patch embedding (a convolution) plus, per block, QKV and output projections (8 N D^2),
    the MLP (4 N D M) and the two attention products (4 N^2 D), N tokens with [CLS]."""
    config = preset("tiny")
    v = config.vision
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    images = jnp.zeros((2, v.image_size, v.image_size, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x: Blip(config).apply({"params": p}, x,
                                                          method=Blip.image_features))(params, images)
    n, d, m = v.num_tokens, v.width, v.mlp_dim
    patches = v.grid_size ** 2
    per_image = (2 * patches * v.patch_size ** 2 * 3 * d
                 + v.depth * (8 * n * d * d + 4 * n * d * m + 4 * n * n * d))
    assert common.dot_flops(jaxpr) == 2 * per_image


def test_profile_step_tells_matmuls_and_loops_from_the_rest():
    """benchmarks/profile_step.classify_ops on XLA:CPU's optimised HLO: a dot inside a while
    loop is a matmul op, the loop a container (its body's ops are traced on their own), the
    elementwise ops neither."""
    profile_step = _benchmark_script("profile_step")

    def f(a, b):
        return jax.lax.fori_loop(0, 3, lambda i, x: jnp.tanh(x @ b) * 2.0, a).sum()

    a = jnp.ones((64, 64), jnp.float32)
    hlo = jax.jit(f).lower(a, a).compile().as_text()
    matmuls, containers = profile_step.classify_ops(hlo)
    ops = {line.split("=")[0].strip().removeprefix("ROOT ").lstrip("%"): line
           for line in hlo.splitlines() if " = " in line and "(" in line}
    assert containers and all(" while(" in ops[name] for name in containers), containers
    assert matmuls and not matmuls & containers
    # Every op named as a matmul holds a dot itself or calls a computation that does.
    assert all(" dot(" in ops[name] or "calls=" in ops[name] for name in matmuls), matmuls
    assert not any(" tanh(" in ops[name] and " dot(" not in ops[name] and "calls=" not in ops[name]
                   for name in matmuls)


def test_profile_counts_each_compiled_ops_matmul_flops_and_groups_them_by_layer(common):
    """profile_step.op_flops on XLA:CPU's optimised HLO of the tiny vision tower: the matmul
    FLOPs of the ops that run (dots and the patch convolution, inside library fusions too) add
    up to the model's count from its jaxpr exactly, and source_ops puts the same operation of
    every block into one group, which holds that operation's FLOPs."""
    profile_step = _benchmark_script("profile_step")
    config = preset("tiny")
    v = config.vision
    params = init_params(config, jax.random.key(0))
    images = jnp.zeros((2, v.image_size, v.image_size, 3), jnp.float32)
    forward = lambda p, x: Blip(config).apply({"params": p}, x, method=Blip.image_features)
    hlo = jax.jit(forward).lower(params, images).compile().as_text()
    flops = profile_step.op_flops(hlo)
    executed = profile_step._executed(hlo)
    assert sum(flops.get(op, 0.0) for op in executed) == common.dot_flops(
        jax.make_jaxpr(forward)(params, images))
    sources = profile_step.source_ops(hlo)
    fc1 = [op for op in executed if sources.get(op) == "vision/block_*/fc1/dot_general"]
    tokens = 2 * v.num_tokens
    assert sum(flops[op] for op in fc1) == v.depth * 2 * tokens * v.width * v.mlp_dim
    groups = profile_step.by_source({op: 1.0 for op in executed}, hlo, peak=1e9)
    fc1_group = next(g for g in groups if g["source"] == "vision/block_*/fc1/dot_general")
    assert fc1_group["seconds"] == len(fc1) and fc1_group["gflop"] == sum(flops[op] for op in fc1) / 1e9


def test_startup_benchmark_times_fresh_processes_and_checks_their_exit(tmp_path):
    """benchmarks/startup.time_process: a fresh interpreter with the given directory first on
    PYTHONPATH (how --other-pythonpath puts another library version in front), and a process
    that exits otherwise than expected is an error, not a timing."""
    startup = _benchmark_script("startup")
    (tmp_path / "shadow_probe.py").write_text("import sys; sys.exit(3)\n")
    assert startup.time_process(["-c", "import sys"], 0, None) > 0
    assert startup.time_process(["-c", "import shadow_probe"], 3, str(tmp_path)) > 0
    with pytest.raises(RuntimeError, match="exited 3"):
        startup.time_process(["-c", "import shadow_probe"], 0, str(tmp_path))
    assert [p[0] for p in startup.PROBES][:3] == ["import numpy", "import ml_dtypes", "import jax"]


def test_vit_forward_benchmark_compares_the_programs_it_names():
    """benchmarks/vit_forward.variants: the float32 variants compute the same tokens (chunked
    attention or not) and the two bfloat16 variants are different programs (the bf16-out one
    traced without layers.f32_accumulating_dot), so the A/B measures the change it reports."""
    vit_forward = _benchmark_script("vit_forward")
    fns, images = vit_forward.variants("tiny:64:2")
    assert set(fns) == {"whole", "chunked", "bf16-out", "bf16"}
    out = {k: np.asarray(exe(p, images), np.float32) for k, (exe, p) in fns.items()}
    np.testing.assert_array_equal(out["chunked"], out["whole"])  # tiny: one chunk, same program
    assert fns["bf16-out"][0].as_text() != fns["bf16"][0].as_text()
    assert all(np.isfinite(o).all() for o in out.values())
