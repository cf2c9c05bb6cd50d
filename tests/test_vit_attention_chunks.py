"""Attention a few examples at a time (layers.dot_product_attention's chunk_bytes; the ViT uses
it on CPU, VisionConfig.attention_chunk_mib): the same values
as the whole batch at once, and used exactly where it is meant to be.

Tolerance. Each example's scores, softmax and weighted sum are the same ops on the same numbers
in both forms; only a kernel's summation order could differ. An output is sum_k p_k v_k with
p_k >= 0 summing to 1, so reordering that sum moves it by at most Lk eps max|v|, and the
scores' order over Dh terms moves each probability by at most about 2 Dh eps max|q||k| / sqrt(Dh)
relative (exp is 1-Lipschitz in relative terms) -- both far below what a chunk that mixed
examples up, dropped the remainder or misplaced heads would give (order-1 differences)."""

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


def _has_loop(fn, *args) -> bool:
    jaxpr = str(jax.make_jaxpr(fn)(*args))
    return "scan" in jaxpr or "while" in jaxpr


@pytest.mark.parametrize("chunk_examples", [1, 3, 7])  # 3 and 7 leave a remainder of 10
def test_chunked_attention_equals_the_whole_batch(chunk_examples):
    b, lq, h, d = 10, 50, 3, 16
    q, k, v = _qkv(b, lq, h, d)
    per_example = 4 * h * lq * lq  # float32 scores of one example
    whole = jax.jit(lambda q, k, v: layers.dot_product_attention(q, k, v, None))
    chunked = lambda q, k, v: layers.dot_product_attention(  # noqa: E731
        q, k, v, None, chunk_bytes=chunk_examples * per_example + per_example // 2)
    assert _has_loop(chunked, q, k, v)
    ref, out = np.asarray(whole(q, k, v)), np.asarray(jax.jit(chunked)(q, k, v))
    assert out.shape == ref.shape == (b, lq, h * d)
    qk = float(jnp.max(jnp.abs(q)) * jnp.max(jnp.abs(k)))
    vmax = float(jnp.max(jnp.abs(v)))
    tol = lq * EPS * vmax + 2 * np.sqrt(d) * EPS * qk * vmax
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol)


def test_a_chunk_that_holds_the_batch_is_the_plain_computation():
    q, k, v = _qkv(4, 20, 2, 8)
    big = lambda q, k, v: layers.dot_product_attention(q, k, v, None, chunk_bytes=1 << 30)  # noqa: E731
    assert not _has_loop(big, q, k, v)
    with pytest.raises(ValueError, match="no mask and no dropout"):
        layers.dot_product_attention(q, k, v, jnp.ones((1, 1, 20, 20), bool), chunk_bytes=1)


def test_vit_chunks_its_attention_in_inference_and_training():
    # 224 px, patch 16: 197 tokens; 2 heads -> 310 KB of scores per image, so 1 MiB holds 3.
    config = VisionConfig(image_size=224, patch_size=16, width=64, depth=2, num_heads=2, mlp_dim=128,
                          init_std=0.2, attention_chunk_mib=1)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(8, 224, 224, 3)), jnp.float32)
    model = VisionTransformer(config)
    params = model.init(jax.random.key(0), images[:1])["params"]
    plain = VisionTransformer(config.__class__(**{**config.__dict__, "attention_chunk_mib": 0}))
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
    grads, grads_ref = loss(model)(params), loss(plain)(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        r = np.asarray(dict(jax.tree_util.tree_leaves_with_path(grads_ref))[path])
        err = np.sqrt(np.mean((np.asarray(g) - r) ** 2) / np.mean(r ** 2))
        assert err <= config.depth * config.num_tokens * EPS, (jax.tree_util.keystr(path), err)
