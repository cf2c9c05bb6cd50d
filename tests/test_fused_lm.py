"""losses.chunked_lm_loss (config.loss.lm_chunk_tokens > 0) against losses.lm_loss through
materialised logits: value and gradients (hidden states, vocabulary projection, bias) on
random inputs with padding, a prefix, both kernel layouts and a projection tied to the input
embedding; sharded on the 8-device mesh; and the pre-training step, chunked on a (2, 2, 2)
mesh against the materialised single-device step.

Tolerances (u = 2^-24, float32's unit roundoff; eps = 2u = 1.19e-7). Both implementations
compute the same quantities in float32 and differ only in rounding, so every bound is twice
the error bound of one of them against exact arithmetic:
  * a logit is a D-term dot product plus a bias: worst case |dx| <= (D+1) u A, with A the
    largest sum_d |h_d W_vd| + |b_v| (D = 64: the worst-case bound is small enough to use);
  * a sum of n terms in float32 (log-sum-exp and mean over V = 30524, sums over N tokens):
    rounding errors behave like a random walk, |error| <= lam sqrt(n) u sum|terms| with lam = 8
    (Higham & Mary, "A new approach to probabilistic rounding error analysis", 2019: fails with
    probability ~exp(-lam^2/2)); the deterministic bound n u is 175x looser at n = V and would
    hide real mistakes. At V: 8 sqrt(30524) u = 8.4e-5;
  * token loss l = lse - (1-e) x_t - e mean_v x: |dl| <= lam sqrt(V) u (1 + e Xbar) + 2|dx|
    (Xbar: mean |shifted logit|); the loss, a weighted mean of N token losses (weights sum to
    1), adds lam sqrt(N) u max|l|;
  * logit gradient s (p - (1-e) onehot - e/V): relative error rho = lam sqrt(V) u + 2|dx|
    + 2u of p, so it moves by at most rho M with M = s (p + (1-e) onehot + e/V) >= |it|;
    dW = sum over N tokens, dh = sum over V, db = sum over N of such terms: rho M^T|h|
    + lam sqrt(N) u M^T|h|, and so on.
Each test also checks the bound is far below the effect of a real mistake (one target token
dropped), so it can tell them apart.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from blip_jax import losses, parallel

U = 2.0 ** -24
LAM = 8.0
V = 30524  # BLIP's vocabulary: the sums over V are as long as in training
D = 64     # the tiny config's hidden width


def inputs(seed=0, b=3, length=9, d=D, v=V, w_std=0.3):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, length, d)).astype(np.float32)
    table = (w_std * rng.normal(size=(v, d))).astype(np.float32)
    bias = (0.5 * rng.normal(size=(v,))).astype(np.float32)
    ids = rng.integers(0, v, (b, length)).astype(np.int32)
    mask = np.ones((b, length), np.int32)
    mask[0, 6:] = 0  # padded rows
    mask[2, 4:] = 0
    return hidden, table, bias, ids, mask


def reference(hidden, table, bias, ids, mask, eps, prefix):
    """lm_loss through materialised logits, as the step computes them (Embed.attend + bias)."""
    logits = jnp.dot(hidden, table.T).astype(jnp.float32) + bias
    return losses.lm_loss(logits, ids, mask, eps, prefix)


def bounds(hidden, table, bias, ids, mask, eps, prefix):
    """(value tol, tol of d/dhidden, d/dtable, d/dbias) from the module docstring, in float64."""
    h, w, b = (np.asarray(a, np.float64) for a in (hidden, table, bias))
    h = h[:, :-1]
    weight = mask[:, 1:].astype(np.float64)
    weight[:, :prefix] = 0
    s = weight / max(weight.sum(), 1.0)
    x = h @ w.T + b
    a = np.max(np.abs(h) @ np.abs(w).T + np.abs(b))
    dx = (D + 1) * U * a
    shifted = x - x.max(-1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(-1, keepdims=True)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, ids[:, 1:, None], 1.0, -1)
    token = -np.log(np.take_along_axis(p, ids[:, 1:, None], -1)[..., 0]) * (1 - eps) \
        - eps * (shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))).mean(-1)
    n = weight.size
    sv, sn = LAM * np.sqrt(V) * U, LAM * np.sqrt(n) * U
    xbar = np.abs(shifted).mean(-1).max()
    tol_value = 2 * (sv * (1 + eps * xbar) + 2 * dx + sn * np.abs(token).max())
    rho = sv + 2 * dx + 2 * U
    mag = s[..., None] * (p + (1 - eps) * onehot + eps / p.shape[-1])  # [B, L-1, V]
    tol_h = 2 * (rho + sv) * (mag @ np.abs(w))
    tol_h = np.concatenate([tol_h, np.zeros_like(tol_h[:, :1])], axis=1)  # last position: 0
    tol_w = 2 * (rho + sn) * np.einsum("blv,bld->vd", mag, np.abs(h))
    tol_b = 2 * (rho + sn) * mag.sum((0, 1))
    return tol_value, tol_h, tol_w, tol_b


def assert_within(got, want, tol, what):
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    worst = np.max(err - tol)
    assert worst <= 0, f"{what}: exceeds its bound by {worst:.3g} (max err {err.max():.3g})"


def dropped_token_effect(hidden, table, bias, ids, mask, eps, prefix):
    """How much the loss moves when one target token is dropped: a real mistake's size."""
    m = np.array(mask)
    last = np.nonzero(m[1])[0][-1]
    m[1, last] = 0
    return abs(float(reference(hidden, table, bias, ids, m, eps, prefix))
               - float(reference(hidden, table, bias, ids, mask, eps, prefix)))


@pytest.mark.parametrize("chunk_tokens", [1, 9, 10_000])  # 1 and 3 positions per chunk; one chunk
@pytest.mark.parametrize("eps,prefix", [(0.1, 0), (0.1, 2), (0.0, 3)])
def test_value_and_gradients_match_lm_loss(chunk_tokens, eps, prefix):
    hidden, table, bias, ids, mask = inputs(seed=chunk_tokens + prefix)
    args = [jnp.asarray(a) for a in (hidden, table, bias)]
    ref, ref_g = jax.value_and_grad(reference, (0, 1, 2))(*args, ids, mask, eps, prefix)
    fused = jax.jit(jax.value_and_grad(
        lambda h, w, b: losses.chunked_lm_loss(h, w, b, ids, mask, eps, prefix, chunk_tokens),
        (0, 1, 2)))
    got, got_g = fused(*args)
    tol_value, *tol_g = bounds(hidden, table, bias, ids, mask, eps, prefix)
    assert_within(got, ref, tol_value, "loss")
    for name, g, r, t in zip(("dhidden", "dtable", "dbias"), got_g, ref_g, tol_g):
        assert_within(g, r, t, name)
    # The last position and padding get no gradient at all (not just a small one).
    assert not np.any(np.asarray(got_g[0])[:, -1])
    assert tol_value < 0.05 * dropped_token_effect(hidden, table, bias, ids, mask, eps, prefix)
    # Without differentiation (the primal path) the same value.
    plain = jax.jit(lambda h, w, b: losses.chunked_lm_loss(h, w, b, ids, mask, eps, prefix,
                                                           chunk_tokens))(*args)
    assert_within(plain, ref, tol_value, "loss (no gradient)")


def test_dense_kernel_layout():
    """An untied projection: a [D, V] Dense kernel (vocab_first=False)."""
    hidden, table, bias, ids, mask = inputs(seed=5)
    kernel = np.ascontiguousarray(table.T)
    ref, ref_g = jax.value_and_grad(
        lambda h, k, b: losses.lm_loss(h @ k + b, ids, mask, 0.1, 1), (0, 1, 2))(
            jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(bias))
    got, got_g = jax.jit(jax.value_and_grad(
        lambda h, k, b: losses.chunked_lm_loss(h, k, b, ids, mask, 0.1, 1, 6, vocab_first=False),
        (0, 1, 2)))(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(bias))
    tol_value, tol_h, tol_w, tol_b = bounds(hidden, table, bias, ids, mask, 0.1, 1)
    assert_within(got, ref, tol_value, "loss")
    assert_within(got_g[0], ref_g[0], tol_h, "dhidden")
    assert_within(got_g[1], ref_g[1], tol_w.T, "dkernel")
    assert_within(got_g[2], ref_g[2], tol_b, "dbias")


def test_projection_tied_to_input_embedding():
    """The decoder's table is also its input embedding: d/dtable sums the head's gradient and
    the lookup's (scattered d/dhidden), as autodiff of the materialised path does."""
    hidden0, table, bias, ids, mask = inputs(seed=7)
    c = 3.0

    def states(w):  # hidden = c * table[ids] + hidden0: linear, so the bound stays explicit
        return c * w[ids] + hidden0

    ref, ref_g = jax.value_and_grad(
        lambda w, b: reference(states(w), w, b, ids, mask, 0.1, 0), (0, 1))(
            jnp.asarray(table), jnp.asarray(bias))
    got, got_g = jax.jit(jax.value_and_grad(
        lambda w, b: losses.chunked_lm_loss(states(w), w, b, ids, mask, 0.1, 0, 4), (0, 1)))(
            jnp.asarray(table), jnp.asarray(bias))
    hidden = np.asarray(states(jnp.asarray(table)))
    tol_value, tol_h, tol_w, tol_b = bounds(hidden, table, bias, ids, mask, 0.1, 0)
    scattered = np.zeros_like(tol_w)
    np.add.at(scattered, ids, c * tol_h)  # the lookup's gradient: d/dhidden scattered, times c
    ref_w = np.asarray(ref_g[0], np.float64)
    assert_within(got, ref, tol_value, "loss")
    # + rounding of the scatter-add itself (a few terms per row): 4u of the result
    assert_within(got_g[0], ref_w, tol_w + scattered + 4 * U * np.abs(ref_w), "dtable")
    assert_within(got_g[1], ref_g[1], tol_b, "dbias")


def test_all_padding_chunks_and_empty_batch():
    """Chunks whose targets are all padding are skipped (exactly 0 contribution); a batch with
    no target at all gives loss 0 and zero gradients, as lm_loss's max(count, 1)."""
    hidden, table, bias, ids, mask = inputs(seed=3, length=12)
    mask[:, 5:] = 0  # positions 4.. predict padding: with 2 positions per chunk, 3 skipped chunks
    args = [jnp.asarray(a) for a in (hidden, table, bias)]
    ref, ref_g = jax.value_and_grad(reference, (0, 1, 2))(*args, ids, mask, 0.1, 0)
    got, got_g = jax.jit(jax.value_and_grad(
        lambda h, w, b: losses.chunked_lm_loss(h, w, b, ids, mask, 0.1, 0, 6), (0, 1, 2)))(*args)
    tol_value, *tol_g = bounds(hidden, table, bias, ids, mask, 0.1, 0)
    assert_within(got, ref, tol_value, "loss")
    for g, r, t in zip(got_g, ref_g, tol_g):
        assert_within(g, r, t, "gradient")
    assert not np.any(np.asarray(got_g[0])[:, 4:])
    empty = np.zeros_like(mask)
    value, grads = jax.value_and_grad(
        lambda h, w, b: losses.chunked_lm_loss(h, w, b, ids, empty, 0.1, 0, 6), (0, 1, 2))(*args)
    assert float(value) == 0.0
    assert all(not np.any(np.asarray(g)) for g in grads)


def test_bfloat16_states_match_the_models_logits():
    """With a bfloat16 model the logits are (states . table) in bfloat16, then float32 + bias
    (nn.Embed.attend): the chunked loss casts the float32 table the same way, so its value
    matches lm_loss on those logits. Bound: the two dots may round differently, by at most one
    bfloat16 ulp of a logit (2^-8 |x|), which moves the loss by at most 2 of them."""
    hidden, table, bias, ids, mask = inputs(seed=11, d=32, v=4000)
    h16 = jnp.asarray(hidden, jnp.bfloat16)
    logits = jnp.dot(h16, jnp.asarray(table).astype(jnp.bfloat16).T).astype(jnp.float32) + bias
    ref = float(losses.lm_loss(logits, ids, mask, 0.1, 0))
    got, (dh, dw) = jax.value_and_grad(
        lambda h, w: losses.chunked_lm_loss(h, w, jnp.asarray(bias), ids, mask, 0.1, 0, 6),
        (0, 1))(h16, jnp.asarray(table))
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    assert abs(float(got) - ref) <= 2 * 2.0 ** -8 * float(jnp.max(jnp.abs(logits - bias)))


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs the 8 fake CPU devices of conftest")
@pytest.mark.parametrize("mesh_shape", [{"data": 2, "fsdp": 2, "tensor": 2},
                                        {"data": 1, "fsdp": 2, "tensor": 4}])
def test_sharded_matches_single_device(mesh_shape):
    """Under jit on a mesh, the projection split over the vocabulary (tensor) and its width
    (fsdp) as the step shards it, the batch over data x fsdp: the single-device result."""
    hidden, table, bias, ids, mask = inputs(seed=2, b=8, length=7)
    mesh = parallel.make_mesh(mesh_shape)
    batch = lambda a: jax.device_put(a, parallel.batch_sharding(mesh, a.ndim))  # noqa: E731
    args = (batch(hidden), jax.device_put(table, NamedSharding(mesh, P("tensor", "fsdp"))),
            jax.device_put(bias, NamedSharding(mesh, P("tensor"))))
    ids_s, mask_s = batch(ids), batch(mask)
    got, got_g = jax.jit(jax.value_and_grad(
        lambda h, w, b, i, m: losses.chunked_lm_loss(h, w, b, i, m, 0.1, 1, 16, mesh=mesh),
        (0, 1, 2)))(*args, ids_s, mask_s)
    ref, ref_g = jax.value_and_grad(reference, (0, 1, 2))(
        jnp.asarray(hidden), jnp.asarray(table), jnp.asarray(bias), ids, mask, 0.1, 1)
    tol_value, *tol_g = bounds(hidden, table, bias, ids, mask, 0.1, 1)
    assert_within(got, ref, tol_value, "loss")
    for name, g, r, t in zip(("dhidden", "dtable", "dbias"), got_g, ref_g, tol_g):
        assert_within(jax.device_get(g), r, t, name)


def test_model_lm_hidden_reproduces_lm_logits():
    """Blip.lm_hidden's (states, table, bias) give Blip.lm_logits: states . table^T + bias."""
    from blip_jax import tokenizer as tok
    from blip_jax.models import init_params
    from blip_jax.models.blip import Blip
    from train_utils import MICRO
    params = init_params(MICRO, jax.random.key(0))
    model = Blip(MICRO)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1000, 3000, (2, 6)), jnp.int32).at[:, 0].set(tok.DEC_ID)
    mask = jnp.ones_like(ids)
    images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)

    def run(m, method):
        return getattr(m, method)(ids, mask, m.image_features(images))

    logits = model.apply({"params": params}, "lm_logits", method=run)
    states, table, bias = model.apply({"params": params}, "lm_hidden", method=run)
    assert table.shape == (MICRO.text.vocab_size, MICRO.text.hidden_size)
    np.testing.assert_array_equal(
        table, params["text_encoder"]["embeddings"]["word_embeddings"]["embedding"])
    # (D+1) u A per logit (D = 32 terms and the bias), twice for two roundings
    a = float(jnp.max(jnp.abs(states) @ jnp.abs(table).T + jnp.abs(bias)))
    np.testing.assert_allclose(states @ table.T + bias, logits, rtol=0,
                               atol=2 * (MICRO.text.hidden_size + 1) * U * a)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs the 8 fake CPU devices of conftest")
def test_chunked_step_on_mesh_matches_materialised_single_device():
    """Two SGD steps of the pre-training step: lm_chunk_tokens=16 (1 position per chunk) on a
    (2, 2, 2) mesh (vocabulary split over tensor) against the materialised loss on one device.
    test_train_step's REORDER_RTOL (768 eps = 9.2e-5) bounds reordered sums of up to 768 terms
    deterministically; it also covers the V-term sums of the LM head in the random-walk model
    of the module docstring: lam sqrt(V) u = 8.4e-5 < 9.2e-5."""
    from test_train_step import _assert_same, _run
    from train_utils import micro_config, random_batch
    assert LAM * np.sqrt(V) * U < 768 * 2 * U
    batches = [random_batch(seed=s) for s in range(2)]
    ref = _run(micro_config(lm_chunk_tokens=0), {"data": 1}, jax.devices()[:1], batches)
    got = _run(micro_config(lm_chunk_tokens=16), {"data": 2, "fsdp": 2, "tensor": 2},
               batches=batches)
    _assert_same(ref, got)


def test_no_per_chunk_transpose_or_bias_pass_over_the_logit_gradient():
    """The chunk loop's dW comes from a dot that reads each chunk's logit gradient [T, V] as it
    is: summing dW as [V, D] made XLA:CPU copy every chunk's gradient to [V, T] first (the
    chunk's largest array, once per chunk; the tiny pre-training step ran ~1.16x slower), and
    contracting the tokens as two dimensions (rows, positions) made it transpose them. In
    float32, dbias is the dW dot's extra row, not a separate reduction of each chunk's gradient."""
    hidden, table, bias, ids, mask = inputs(b=4, length=33, d=32, v=1000)
    # 64 tokens per chunk: 16 positions of the 4 rows, 2 chunks (one before the loop, one in it).
    grad = jax.jit(jax.grad(lambda h, w, b: losses.chunked_lm_loss(h, w, b, ids, mask,
                                                                   chunk_tokens=64), (0, 1, 2)))
    hlo = grad.lower(hidden, table, bias).compile().as_text()
    assert "f32[1000,32]" in hlo  # dW itself (so the shapes below are spelled as XLA spells them)
    assert "f32[1000,64]" not in hlo and "f32[1,1000,64]" not in hlo
    assert "f32[1,4,16,1000]" in hlo and "f32[1,16,4,1000]" not in hlo  # g, never transposed
    assert "f32[1,33,1000]" in hlo  # dW^T and dbias: the states' 32 dims and a column of ones
    reductions = [line for line in hlo.splitlines() if " reduce(" in line and "1000" in line]
    assert not [line for line in reductions if "f32[1,1000]" in line.split("reduce(")[0]]


def test_config_key_validated():
    from blip_jax.train.step import LossConfig
    with pytest.raises(ValueError, match="lm_chunk_tokens"):
        LossConfig(lm_chunk_tokens=-1)
