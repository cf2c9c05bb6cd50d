"""Attention a few heads at a time (layers.dot_product_attention's chunk_bytes; the ViT uses it
on CPU, VisionConfig.attention_chunk_mib): the same values as all heads at once, used exactly
where it is meant to be, and no gathering of a batch sharded over devices.

Tolerance. Each (example, head)'s scores, softmax and weighted sum are the same ops on the same numbers
in both forms; only a kernel's summation order could differ. An output is sum_k p_k v_k with
p_k >= 0 summing to 1, so reordering that sum moves it by at most Lk eps max|v|, and the
scores' order over Dh terms moves each probability by at most about 2 Dh eps max|q||k| / sqrt(Dh)
relative (exp is 1-Lipschitz in relative terms) -- both far below what a chunk that mixed
examples up, dropped the remainder or misplaced heads would give (order-1 differences)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.models import layers
from blip_jax.models.config import VisionConfig
from blip_jax.models.vit import VisionTransformer

EPS = float(np.finfo(np.float32).eps)


def _qkv(batch, length, heads, depth, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=(batch, length, heads, depth)), jnp.float32) for _ in range(3)]


def _tolerance(q, k, v) -> float:
    """The reordering bound of the module docstring for these inputs."""
    lq, d = q.shape[1], q.shape[-1]
    qk = float(jnp.max(jnp.abs(q)) * jnp.max(jnp.abs(k)))
    vmax = float(jnp.max(jnp.abs(v)))
    return lq * EPS * vmax + 2 * np.sqrt(d) * EPS * qk * vmax


def _has_loop(fn, *args) -> bool:
    jaxpr = str(jax.make_jaxpr(fn)(*args))
    return "scan" in jaxpr or "while" in jaxpr


@pytest.mark.parametrize("chunk_heads", [1, 2, 4])  # of 5: 2 and 4 leave a remainder
def test_chunked_attention_equals_all_heads_at_once(chunk_heads):
    b, lq, h, d = 6, 50, 5, 16
    q, k, v = _qkv(b, lq, h, d)
    per_head = 4 * b * lq * lq  # float32 scores of one head over the batch
    whole = jax.jit(lambda q, k, v: layers.dot_product_attention(q, k, v, None))
    chunked = lambda q, k, v: layers.dot_product_attention(  # noqa: E731
        q, k, v, None, chunk_bytes=chunk_heads * per_head + per_head // 2)
    assert _has_loop(chunked, q, k, v)
    ref, out = np.asarray(whole(q, k, v)), np.asarray(jax.jit(chunked)(q, k, v))
    assert out.shape == ref.shape == (b, lq, h * d)
    np.testing.assert_allclose(out, ref, rtol=0, atol=_tolerance(q, k, v))


def test_chunks_keep_a_batch_sharded_over_devices_where_it_is():
    """The batch sharded over the suite's 8 CPU devices stays sharded: no all-gather in the
    compiled program (a loop over the examples gathered the batch onto every device)."""
    if jax.device_count() < 2:
        pytest.skip("needs several devices (the suite forces 8 CPU devices)")
    from jax.sharding import NamedSharding, PartitionSpec
    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    q, k, v = (jax.device_put(x, sharding) for x in _qkv(2 * n, 40, 3, 8))
    f = jax.jit(lambda q, k, v: layers.dot_product_attention(q, k, v, None, chunk_bytes=1),
                out_shardings=sharding)
    assert _has_loop(f, q, k, v)
    hlo = f.lower(q, k, v).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    ref = jax.jit(lambda q, k, v: layers.dot_product_attention(q, k, v, None))(q, k, v)
    np.testing.assert_allclose(np.asarray(f(q, k, v)), np.asarray(ref), rtol=0,
                               atol=_tolerance(q, k, v))


def test_a_chunk_that_holds_the_batch_is_the_plain_computation():
    q, k, v = _qkv(4, 20, 2, 8)
    big = lambda q, k, v: layers.dot_product_attention(q, k, v, None, chunk_bytes=1 << 30)  # noqa: E731
    assert not _has_loop(big, q, k, v)
    with pytest.raises(ValueError, match="no mask and no dropout"):
        layers.dot_product_attention(q, k, v, jnp.ones((1, 1, 20, 20), bool), chunk_bytes=1)


def test_vit_chunks_its_attention_in_inference_and_training():
    # 224 px, patch 16: 197 tokens; batch 8: 1.2 MB of scores per head, so 1 MiB chunks hold one.
    config = VisionConfig(image_size=224, patch_size=16, width=64, depth=2, num_heads=2, mlp_dim=128,
                          init_std=0.2, attention_chunk_mib=1)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(8, 224, 224, 3)), jnp.float32)
    model = VisionTransformer(config)
    params = model.init(jax.random.key(0), images[:1])["params"]
    plain = VisionTransformer(dataclasses.replace(config, attention_chunk_mib=0))
    run = lambda m, train: (lambda p, x: m.apply({"params": p}, x, train=train))  # noqa: E731
    assert _has_loop(run(model, False), params, images)  # on CPU, as the suite runs
    assert _has_loop(run(model, True), params, images)
    assert not _has_loop(run(plain, False), params, images)
    out = np.asarray(jax.jit(run(model, False))(params, images))
    ref = np.asarray(jax.jit(run(plain, False))(params, images))
    # Each block adds the attention's reordering error (bound above, per unit of the LayerNorm'd
    # input's scale); the final LayerNorm output is O(1): relative RMS within depth * sqrt(L) eps.
    rel = np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref ** 2))
    assert rel <= config.depth * np.sqrt(config.num_tokens) * EPS, rel
    assert np.mean(ref ** 2) > 0.5  # LayerNorm'd tokens: the comparison has a scale

    # The training gradient: the same function; per op at most an L eps reordering of a sum,
    # through `depth` blocks, so every parameter's gradient within depth * L eps (relative RMS).
    target = jnp.asarray(np.random.default_rng(2).normal(size=out.shape), jnp.float32)
    loss = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(run(m, True)(p, images) * target)))  # noqa: E731
    grads, grads_ref = loss(model)(params), dict(jax.tree_util.tree_leaves_with_path(loss(plain)(params)))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        r = np.asarray(grads_ref[path])
        err = np.sqrt(np.mean((np.asarray(g) - r) ** 2) / np.mean(r ** 2))
        assert err <= config.depth * config.num_tokens * EPS, (jax.tree_util.keystr(path), err)
