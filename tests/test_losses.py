"""Tests for blip_jax/losses.py against independent NumPy (and, for LM, PyTorch) re-derivations of
the REFERENCE §2 formulas.

Tolerances: the JAX code runs in float32 while the NumPy references run in float64, so losses and
similarity matrices are compared with rtol=1e-5 (plus a small atol for values near 0). Sampling
tests use fixed seeds; empirical frequencies are compared with max |freq - p| < 0.03 over 4000
draws (binomial std <= 0.008, i.e. > 3.7 sigma of slack per cell).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax import losses
from blip_jax.losses import (
    alpha_at,
    enqueue,
    hard_negative_weights,
    itc_loss,
    itc_positive_targets,
    itm_loss,
    lm_loss,
    sample_hard_negatives,
)

RTOL = 1e-5
ATOL = 1e-6


# ----------------------------------------------------------------------------- NumPy references


def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def normalised(rng, n, e):
    v = rng.standard_normal((n, e)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def np_itc(img, txt, img_m, txt_m, img_q, txt_q, temp, alpha, positives=None):
    """REFERENCE §2 ITC in float64. Returns (loss, sim_i2t, sim_t2i, y_i2t, y_t2i)."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    img, txt, img_m, txt_m, img_q, txt_q = map(f64, (img, txt, img_m, txt_m, img_q, txt_q))
    b = img.shape[0]
    t_all = np.concatenate([txt_m, txt_q], 0)
    i_all = np.concatenate([img_m, img_q], 0)
    s_i2t = img @ t_all.T / temp
    s_t2i = txt @ i_all.T / temp
    s_i2t_m = img_m @ t_all.T / temp
    s_t2i_m = txt_m @ i_all.T / temp
    if positives is None:
        positives = np.zeros((b, t_all.shape[0]))
        positives[np.arange(b), np.arange(b)] = 1.0
    y_i2t = alpha * np_softmax(s_i2t_m) + (1 - alpha) * positives
    y_t2i = alpha * np_softmax(s_t2i_m) + (1 - alpha) * positives
    l_i2t = -np.mean(np.sum(y_i2t * np_log_softmax(s_i2t), -1))
    l_t2i = -np.mean(np.sum(y_t2i * np_log_softmax(s_t2i), -1))
    return (l_i2t + l_t2i) / 2, s_i2t, s_t2i, y_i2t, y_t2i


def np_positives(ids, id_queue):
    """Same-id matrix over [batch ids; queue ids], each row divided by its count (explicit loops)."""
    all_ids = list(ids) + list(id_queue)
    pos = np.zeros((len(ids), len(all_ids)))
    for i, a in enumerate(ids):
        for j, c in enumerate(all_ids):
            if a == c:
                pos[i, j] = 1.0
        pos[i] /= pos[i].sum()
    return pos


def np_hn_weights(sim, ids=None, floor=1e-4):
    """softmax(sim[:, :B]) + floor, same-id pairs 0: models/blip_pretrain.py (floor 1e-4) and
    models/blip_retrieval.py (floor 0)."""
    b = sim.shape[0]
    w = np_softmax(np.asarray(sim, np.float64)[:, :b]) + floor
    for i in range(b):
        for j in range(b):
            if (i == j) if ids is None else (ids[i] == ids[j]):
                w[i, j] = 0.0
    return w


def itc_inputs(seed=0, b=6, e=8, q=12):
    rng = np.random.default_rng(seed)
    return dict(
        image_feat=normalised(rng, b, e),
        text_feat=normalised(rng, b, e),
        image_feat_m=normalised(rng, b, e),
        text_feat_m=normalised(rng, b, e),
        image_queue=normalised(rng, q, e),
        text_queue=normalised(rng, q, e),
    )


TEMP = 0.07


# ----------------------------------------------------------------------------- ITC


def test_itc_matches_numpy_with_distillation():
    x = itc_inputs(0)
    loss, aux = itc_loss(**{k: jnp.asarray(v) for k, v in x.items()}, temp=jnp.float32(TEMP),
                         alpha=jnp.float32(0.4))
    ref, s_i2t, s_t2i, _, _ = np_itc(*x.values(), TEMP, 0.4)
    assert aux["sim_i2t"].shape == (6, 18) and aux["sim_t2i"].shape == (6, 18)
    np.testing.assert_allclose(np.asarray(aux["sim_i2t"]), s_i2t, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["sim_t2i"]), s_t2i, rtol=RTOL, atol=1e-5)
    # The two directions really are different matrices (catches a swapped aux).
    assert np.abs(s_i2t - s_t2i).max() > 1.0
    np.testing.assert_allclose(float(loss), ref, rtol=RTOL)
    # Distillation matters here: the alpha=0.4 loss differs clearly from the one-hot loss.
    ref0 = np_itc(*x.values(), TEMP, 0.0)[0]
    assert abs(ref - ref0) > 1e-2


def test_itc_alpha_zero_is_plain_onehot_ce():
    x = itc_inputs(1)
    loss, _ = itc_loss(**{k: jnp.asarray(v) for k, v in x.items()}, temp=jnp.float32(TEMP),
                       alpha=jnp.float32(0.0))
    f = {k: v.astype(np.float64) for k, v in x.items()}
    s_i2t = f["image_feat"] @ np.concatenate([f["text_feat_m"], f["text_queue"]]).T / TEMP
    s_t2i = f["text_feat"] @ np.concatenate([f["image_feat_m"], f["image_queue"]]).T / TEMP
    idx = np.arange(6)
    ce = lambda s: -np.mean(np_log_softmax(s)[idx, idx])  # noqa: E731
    np.testing.assert_allclose(float(loss), (ce(s_i2t) + ce(s_t2i)) / 2, rtol=RTOL)


def test_itc_no_gradient_into_momentum_features_or_queues():
    x = {k: jnp.asarray(v) for k, v in itc_inputs(2).items()}

    def f(img, txt, img_m, txt_m, img_q, txt_q):
        return itc_loss(img, txt, img_m, txt_m, img_q, txt_q, jnp.float32(TEMP),
                        jnp.float32(0.4))[0]

    grads = jax.grad(f, argnums=(0, 1, 2, 3, 4, 5))(*x.values())
    for g in grads[2:]:
        np.testing.assert_array_equal(np.asarray(g), 0.0)
    # Online gradients are non-zero and equal the analytic one:
    # dL/d img = 0.5 * (softmax(s_i2t) - y_i2t) @ T_all / (B * temp), likewise for text.
    n = {k: np.asarray(v, np.float64) for k, v in x.items()}
    _, s_i2t, s_t2i, y_i2t, y_t2i = np_itc(*n.values(), TEMP, 0.4)
    t_all = np.concatenate([n["text_feat_m"], n["text_queue"]])
    i_all = np.concatenate([n["image_feat_m"], n["image_queue"]])
    g_img = 0.5 * (np_softmax(s_i2t) - y_i2t) @ t_all / (6 * TEMP)
    g_txt = 0.5 * (np_softmax(s_t2i) - y_t2i) @ i_all / (6 * TEMP)
    np.testing.assert_allclose(np.asarray(grads[0]), g_img, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]), g_txt, rtol=1e-4, atol=1e-6)
    assert np.abs(g_img).max() > 1e-2 and np.abs(g_txt).max() > 1e-2


IDS = np.array([3, 7, 3, 1, 5, 7], np.int32)               # duplicates inside the batch
ID_QUEUE = np.array([7, 2, 3, 3, 9, 1, 0, 7, 4, 8, 6, 11], np.int32)  # and in the queue


def test_itc_positive_targets_default_and_with_ids():
    np.testing.assert_array_equal(np.asarray(itc_positive_targets(6, 12)), np.eye(6, 18))
    pos = np.asarray(itc_positive_targets(6, 12, jnp.asarray(IDS), jnp.asarray(ID_QUEUE)))
    ref = np_positives(IDS, ID_QUEUE)
    np.testing.assert_allclose(pos, ref, rtol=RTOL, atol=0)
    np.testing.assert_allclose(pos.sum(-1), 1.0, rtol=RTOL)
    # Spot check by hand: id 3 (row 0) occurs at batch cols 0, 2 and queue cols 6+2, 6+3.
    expected_row0 = np.zeros(18)
    expected_row0[[0, 2, 8, 9]] = 0.25
    np.testing.assert_allclose(pos[0], expected_row0, rtol=RTOL)
    # id 5 (row 4) occurs only on its own diagonal.
    np.testing.assert_allclose(pos[4], np.eye(6, 18)[4], rtol=RTOL)


def test_itc_with_image_ids_matches_numpy():
    x = itc_inputs(3)
    for alpha in (0.4, 0.0):
        loss, _ = itc_loss(**{k: jnp.asarray(v) for k, v in x.items()}, temp=jnp.float32(TEMP),
                           alpha=jnp.float32(alpha), image_ids=jnp.asarray(IDS),
                           id_queue=jnp.asarray(ID_QUEUE))
        ref = np_itc(*x.values(), TEMP, alpha, positives=np_positives(IDS, ID_QUEUE))[0]
        np.testing.assert_allclose(float(loss), ref, rtol=RTOL)
        # ... and it is not the diagonal-only loss.
        assert abs(ref - np_itc(*x.values(), TEMP, alpha)[0]) > 1e-2


# ----------------------------------------------------------------------------- queue


def test_enqueue_wraps_like_a_ring_buffer():
    q_size, b, e = 12, 4, 3
    rng = np.random.default_rng(4)
    queue = rng.standard_normal((q_size, e)).astype(np.float32)
    ref = queue.copy()
    jq, ptr, ref_ptr = jnp.asarray(queue), jnp.int32(0), 0
    enq = jax.jit(enqueue)
    steps = [rng.standard_normal((b, e)).astype(np.float32) for _ in range(5)]
    ptrs = []
    for t, v in enumerate(steps):
        jq, ptr = enq(jq, ptr, jnp.asarray(v))
        ref[ref_ptr:ref_ptr + b] = v
        ref_ptr = (ref_ptr + b) % q_size
        ptrs.append(int(ptr))
        assert int(ptr) == ref_ptr
        np.testing.assert_array_equal(np.asarray(jq), ref)
        if t == 2:
            assert int(ptr) == 0  # back to the start after Q / B = 3 enqueues
            np.testing.assert_array_equal(np.asarray(jq), np.concatenate(steps[:3]))
        if t == 3:
            np.testing.assert_array_equal(np.asarray(jq)[:4], steps[3])   # overwrote rows 0..3
            np.testing.assert_array_equal(np.asarray(jq)[4:], np.concatenate(steps[1:3]))
    assert ptrs == [4, 8, 0, 4, 8]


# ----------------------------------------------------------------------------- hard negatives

N_DRAWS = 4000
FREQ_TOL = 0.03


def draw_many(sim_i2t, sim_t2i, image_ids=None, groups=1, n=N_DRAWS, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    fn = jax.jit(jax.vmap(lambda k: sample_hard_negatives(k, sim_i2t, sim_t2i, image_ids, groups)))
    neg_img, neg_txt = fn(keys)
    return np.asarray(neg_img), np.asarray(neg_txt)


def frequencies(draws, b):
    """draws [N, B] -> [B, B] row-wise empirical frequencies of each column."""
    return np.stack([np.bincount(draws[:, r], minlength=b) / draws.shape[0] for r in range(b)])


def peaked_sims(b=6, q=5, seed=5):
    """Two clearly different, clearly non-uniform [B, B+Q] sims: i2t favours column (i+1)%B,
    t2i favours column (t+2)%B."""
    rng = np.random.default_rng(seed)
    s_i2t = rng.standard_normal((b, b + q)).astype(np.float32)
    s_t2i = rng.standard_normal((b, b + q)).astype(np.float32)
    r = np.arange(b)
    s_i2t[r, (r + 1) % b] += 2.5
    s_t2i[r, (r + 2) % b] += 2.5
    return s_i2t, s_t2i


def test_hard_negative_weights_match_numpy_including_epsilon():
    s_i2t, _ = peaked_sims()
    s_i2t[0, 3] = -60.0  # softmax ~ 1e-27: the weight is then the +1e-4 alone
    w = np.asarray(hard_negative_weights(jnp.asarray(s_i2t)))
    ref = np_hn_weights(s_i2t)
    assert w.shape == (6, 6)
    np.testing.assert_allclose(w, ref, rtol=RTOL, atol=2e-7)
    np.testing.assert_allclose(w[0, 3], 1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.diag(w), 0.0)
    # with ids: every same-id pair is zeroed, others keep softmax + 1e-4
    w_ids = np.asarray(hard_negative_weights(jnp.asarray(s_i2t), jnp.asarray(IDS)))
    np.testing.assert_allclose(w_ids, np_hn_weights(s_i2t, IDS), rtol=RTOL, atol=2e-7)
    assert w_ids[0, 2] == 0.0 and w_ids[1, 5] == 0.0 and w_ids[5, 1] == 0.0


def test_sampler_frequencies_follow_weights_and_direction():
    s_i2t, s_t2i = peaked_sims()
    neg_img, neg_txt = draw_many(jnp.asarray(s_i2t), jnp.asarray(s_t2i))
    b = 6
    assert neg_img.shape == (N_DRAWS, b) and neg_txt.shape == (N_DRAWS, b)
    # positive never drawn
    assert not np.any(neg_img == np.arange(b)) and not np.any(neg_txt == np.arange(b))
    # negative image for text t ~ sim_t2i row t; negative text for image i ~ sim_i2t row i
    p_img = np_hn_weights(s_t2i)
    p_img /= p_img.sum(-1, keepdims=True)
    p_txt = np_hn_weights(s_i2t)
    p_txt /= p_txt.sum(-1, keepdims=True)
    assert p_img.max() > 0.5  # clearly non-uniform
    f_img, f_txt = frequencies(neg_img, b), frequencies(neg_txt, b)
    assert np.abs(f_img - p_img).max() < FREQ_TOL
    assert np.abs(f_txt - p_txt).max() < FREQ_TOL
    # Using the other matrix would be far off (so the check above can detect an i2t/t2i swap).
    assert np.abs(f_img - p_txt).max() > 0.2 and np.abs(f_txt - p_img).max() > 0.2


def test_sampler_never_draws_same_id():
    s_i2t, s_t2i = peaked_sims(seed=6)
    ids = jnp.asarray(IDS)
    neg_img, neg_txt = draw_many(jnp.asarray(s_i2t), jnp.asarray(s_t2i), image_ids=ids)
    for draws in (neg_img, neg_txt):
        assert not np.any(IDS[draws] == IDS[None, :])
    p_img = np_hn_weights(s_t2i, IDS)
    p_img /= p_img.sum(-1, keepdims=True)
    assert np.abs(frequencies(neg_img, 6) - p_img).max() < FREQ_TOL


def test_sampler_groups_stay_within_their_half():
    b, groups, size = 8, 2, 4
    s_i2t, s_t2i = peaked_sims(b=b, q=3, seed=7)
    neg_img, neg_txt = draw_many(jnp.asarray(s_i2t), jnp.asarray(s_t2i), groups=groups)
    group_of = np.arange(b) // size
    for draws, sim in ((neg_img, s_t2i), (neg_txt, s_i2t)):
        assert draws.min() >= 0 and draws.max() < b
        assert np.all(group_of[draws] == group_of[None, :])  # global indices, own half
        assert not np.any(draws == np.arange(b))
        # within a group: softmax over that group's block only
        p = np.zeros((b, b))
        for g in range(groups):
            sl = slice(g * size, (g + 1) * size)
            p[sl, sl] = np_hn_weights(sim[sl, sl])
        p /= p.sum(-1, keepdims=True)
        assert np.abs(frequencies(draws, b) - p).max() < FREQ_TOL
    with pytest.raises(ValueError):
        sample_hard_negatives(jax.random.PRNGKey(0), jnp.asarray(s_i2t), jnp.asarray(s_t2i),
                              groups=3)


# ----------------------------------------------------------------------------- ITM


def test_itm_loss_matches_numpy_ce_over_3b():
    rng = np.random.default_rng(8)
    b = 5
    pos = (rng.standard_normal((b, 2)) * 2).astype(np.float32)
    neg = (rng.standard_normal((2 * b, 2)) * 2).astype(np.float32)
    logits = np.concatenate([pos, neg]).astype(np.float64)
    labels = np.concatenate([np.ones(b, int), np.zeros(2 * b, int)])
    ref = -np.mean(np_log_softmax(logits)[np.arange(3 * b), labels])
    np.testing.assert_allclose(float(itm_loss(jnp.asarray(pos), jnp.asarray(neg))), ref, rtol=RTOL)


# ----------------------------------------------------------------------------- LM


def lm_inputs(seed=9, b=3, length=10, v=11):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((b, length, v)) * 2).astype(np.float32)
    ids = rng.integers(0, v, (b, length)).astype(np.int32)
    mask = np.ones((b, length), np.int32)
    mask[0, 7:] = 0
    mask[2, 5:] = 0
    return logits, ids, mask


def torch_lm(logits, ids, mask, eps, ignore_prefix=0):
    torch = pytest.importorskip("torch")
    targets = ids[:, 1:].astype(np.int64).copy()
    targets[mask[:, 1:] == 0] = -100
    targets[:, :ignore_prefix] = -100
    lg = torch.from_numpy(logits[:, :-1].reshape(-1, logits.shape[-1]).astype(np.float64))
    fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=eps)
    return float(fn(lg, torch.from_numpy(targets.reshape(-1))))


def test_lm_loss_matches_torch_label_smoothing():
    pytest.importorskip("torch")
    logits, ids, mask = lm_inputs()
    got = float(lm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask), 0.1))
    ref = torch_lm(logits, ids, mask, 0.1)
    np.testing.assert_allclose(got, ref, rtol=RTOL)
    # smoothing really changes the value (so a wrong/missing smoothing would be caught)
    assert abs(ref - torch_lm(logits, ids, mask, 0.0)) > 1e-2


def test_lm_loss_ignore_prefix_matches_torch():
    pytest.importorskip("torch")
    logits, ids, mask = lm_inputs(seed=10)
    got = float(lm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask), 0.1,
                        ignore_prefix=3))
    ref = torch_lm(logits, ids, mask, 0.1, ignore_prefix=3)
    np.testing.assert_allclose(got, ref, rtol=RTOL)
    assert abs(ref - torch_lm(logits, ids, mask, 0.1)) > 1e-3


def test_lm_loss_no_smoothing_is_plain_nll():
    logits, ids, mask = lm_inputs(seed=11)
    lp = np_log_softmax(logits[:, :-1])
    tgt, w = ids[:, 1:], mask[:, 1:].astype(np.float64)
    nll = -np.take_along_axis(lp, tgt[..., None], -1)[..., 0]
    ref = (nll * w).sum() / w.sum()
    got = float(lm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask), 0.0))
    np.testing.assert_allclose(got, ref, rtol=RTOL)


# ----------------------------------------------------------------------------- alpha schedule


def test_alpha_at_ramp_and_constant():
    ramp = 100
    for step, expected in [(0, 0.0), (25, 0.1), (50, 0.2), (99, 0.396), (100, 0.4), (150, 0.4),
                           (10_000, 0.4)]:
        got = float(alpha_at(jnp.int32(step), 0.4, ramp))
        np.testing.assert_allclose(got, 0.4 * min(1.0, step / ramp), rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-7)
    # works under jit with a traced step
    jitted = jax.jit(lambda s: alpha_at(s, 0.4, ramp))
    np.testing.assert_allclose(float(jitted(jnp.int32(30))), 0.12, rtol=RTOL)
    for step in (0, 5, 10_000):
        np.testing.assert_allclose(float(alpha_at(jnp.int32(step), 0.4, 0)), 0.4, rtol=RTOL)
    # ... and with a traced ramp (the trainer passes the run's lengths to its step), 0 included
    traced = jax.jit(lambda s, r: alpha_at(s, 0.4, r))
    for step, ramp_steps in [(30, 100), (150, 100), (0, 0), (5, 0)]:
        want = 0.4 * min(1.0, step / ramp_steps) if ramp_steps else 0.4
        np.testing.assert_allclose(float(traced(jnp.int32(step), jnp.int32(ramp_steps))), want,
                                   rtol=RTOL)


# ----------------------------------------------------------------------------- issue 11 items 2-3
# ITM negatives: online x momentum + 1e-4 (the original's pre-training) or online x online, no
# floor (its retrieval fine-tuning); ITC in-batch columns per group of rows (itc_batch_groups).


def _train_imports():
    from blip_jax.train import step, trainer
    return step, trainer


def _load_config(name):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.mark.parametrize("floor", [1e-4, 0.0])
def test_hard_negative_weights_and_log_weights_follow_floor(floor):
    s_i2t, _ = peaked_sims()
    s_i2t[0, 3] = -60.0  # softmax ~ 1e-27: the weight is the floor alone
    for ids in (None, IDS):
        jids = None if ids is None else jnp.asarray(ids)
        w = np.asarray(hard_negative_weights(jnp.asarray(s_i2t), jids, floor))
        ref = np_hn_weights(s_i2t, ids, floor)
        np.testing.assert_allclose(w, ref, rtol=RTOL, atol=2e-7 if floor else 1e-9)
        # The sampler's logits are log(weights): the same distribution, -inf on positives.
        logw = np.asarray(losses.hard_negative_log_weights(jnp.asarray(s_i2t), jids, floor),
                          np.float64)
        assert np.array_equal(np.isneginf(logw), ref == 0)
        p = np.exp(logw - logw.max(-1, keepdims=True))
        np.testing.assert_allclose(p / p.sum(-1, keepdims=True), ref / ref.sum(-1, keepdims=True),
                                   rtol=1e-5, atol=1e-7)
    w = np.asarray(hard_negative_weights(jnp.asarray(s_i2t), None, floor))
    assert (w[0, 3] > 0.9e-4) == (floor > 0)


def neg_features(seed=12, b=6, e=8):
    rng = np.random.default_rng(seed)
    return [normalised(rng, b, e) for _ in range(4)]  # image, text, image_m, text_m


def test_negative_similarities_online_and_momentum():
    img, txt, img_m, txt_m = neg_features()
    args = [jnp.asarray(a) for a in (img, txt, img_m, txt_m)] + [jnp.float32(TEMP)]
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    for source, (t, i) in (("momentum", (txt_m, img_m)), ("online", (txt, img))):
        s_i2t, s_t2i = losses.negative_similarities(*args, source=source)
        np.testing.assert_allclose(np.asarray(s_i2t), f(img) @ f(t).T / TEMP, rtol=RTOL, atol=1e-5)
        np.testing.assert_allclose(np.asarray(s_t2i), f(txt) @ f(i).T / TEMP, rtol=RTOL, atol=1e-5)
    with pytest.raises(ValueError, match="itm_negative_sim"):
        losses.negative_similarities(*args, source="queue")


@pytest.mark.parametrize("recipe", ["retrieval", "pretrain"])
def test_train_step_negatives_follow_the_recipe(recipe, monkeypatch):
    """The tiny recipes through trainer.loss_config and the step's sampler: the weights the
    step samples with are, for retrieval, softmax(image_feat @ text_feat.T / temp) with same-id
    pairs 0 (models/blip_retrieval.py forward), for pre-training softmax(image_feat @
    text_feat_m.T / temp) + 1e-4 with the diagonal 0 (models/blip_pretrain.py); the NumPy
    weights below are computed from scratch."""
    from blip_jax.experiments import tiny
    step, trainer = _train_imports()
    lc = trainer.loss_config(getattr(tiny, recipe)(), 93, 0)
    feats = neg_features()
    img, txt, img_m, txt_m = (np.asarray(a, np.float64) for a in feats)
    online = recipe == "retrieval"
    ids = IDS if online else np.arange(6, dtype=np.int32)
    same = ids[:, None] == ids[None, :]

    def weights(sim, floor):
        e = np.exp(sim - sim.max(-1, keepdims=True))
        w = e / e.sum(-1, keepdims=True) + floor
        w[same] = 0.0
        return w

    t, i, floor = (txt, img, 0.0) if online else (txt_m, img_m, 1e-4)
    t2, i2, floor2 = (txt_m, img_m, 1e-4) if online else (txt, img, 0.0)  # the other rule
    # What the step hands the sampler (with its default floor, as before config keys existed).
    seen = {}

    def record(rng, sim_i2t, sim_t2i, image_ids=None, groups=1, floor=1e-4):
        seen.update(sim_i2t=sim_i2t, sim_t2i=sim_t2i, ids=image_ids, floor=floor)
        return jnp.zeros(6, jnp.int32), jnp.zeros(6, jnp.int32)

    monkeypatch.setattr(step.losses, "sample_hard_negatives", record)
    step._sample_negatives(lc, jax.random.PRNGKey(0), *(jnp.asarray(a) for a in feats[:2]),
                           tuple(jnp.asarray(a) for a in feats[2:]), None, jnp.float32(TEMP),
                           {"image_id": jnp.asarray(ids)}, 1)
    # The sampler's weights from what it was handed (hard_negative_weights' own checks above).
    got_ids = None if seen["ids"] is None else np.asarray(seen["ids"])
    assert (got_ids is None) == (not online)
    w_txt = np_hn_weights(np.asarray(seen["sim_i2t"]), got_ids, seen["floor"])
    w_img = np_hn_weights(np.asarray(seen["sim_t2i"]), got_ids, seen["floor"])
    # negative text for each image ~ i2t weights; negative image for each text ~ t2i weights
    np.testing.assert_allclose(w_txt, weights(img @ t.T / TEMP, floor), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(w_img, weights(txt @ i.T / TEMP, floor), rtol=1e-5, atol=1e-8)
    # The other rule gives clearly different weights (so the check above can tell them apart).
    assert np.abs(weights(img @ t2.T / TEMP, floor2) - w_txt).max() > 0.2


def test_paper_retrieval_configs_use_the_original_retrieval_negatives():
    _, trainer = _train_imports()
    for name in ("retrieval_coco", "retrieval_flickr"):
        lc = trainer.loss_config(_load_config(name), 100, 0)
        assert (lc.itm_negative_sim, lc.itm_negative_floor) == ("online", 0.0), name
    lc = trainer.loss_config(_load_config("pretrain_base"), 100, 0)
    assert (lc.itm_negative_sim, lc.itm_negative_floor) == ("momentum", 1e-4)


GROUP_IDS = np.array([3, 7, 3, 1, 5, 7, 3, 9], np.int32)  # same ids within and across groups
GROUP_ID_QUEUE = np.array([7, 2, 3, 3, 9, 1], np.int32)


def np_grouped_itc(x, groups, alpha, ids=None):
    """Mean over groups of the NumPy ITC loss of each group alone with the whole queue."""
    b = x["image_feat"].shape[0]
    size = b // groups
    out = []
    for g in range(groups):
        sl = slice(g * size, (g + 1) * size)
        part = [x[k][sl] for k in ("image_feat", "text_feat", "image_feat_m", "text_feat_m")]
        pos = None if ids is None else np_positives(ids[sl], GROUP_ID_QUEUE)
        out.append(np_itc(*part, x["image_queue"], x["text_queue"], TEMP, alpha, pos)[0])
    return np.mean(out)


def _rows(d, sl):
    """The features of rows `sl` (queues and the id queue unchanged)."""
    return {k: (v[sl] if k.endswith(("feat", "feat_m", "image_ids")) else v) for k, v in d.items()}


@pytest.mark.parametrize("with_ids", [False, True])
def test_itc_batch_groups_equal_mean_of_group_losses(with_ids):
    x = itc_inputs(13, b=8, q=6)
    ids = GROUP_IDS if with_ids else None
    if with_ids:
        x.update(image_ids=GROUP_IDS, id_queue=GROUP_ID_QUEUE)

    @jax.jit  # one compile for all the calls below
    def run(jx):
        def loss(d, **kw):
            return itc_loss(**d, temp=jnp.float32(TEMP), alpha=jnp.float32(0.4), **kw)[0]

        def with_feat(f, d, **kw):
            return loss({**d, "image_feat": f}, **kw)
        half = _rows(jx, slice(0, 4))
        return (loss(jx), loss(jx, groups=1), loss(jx, groups=2), loss(jx, groups=4),
                jax.grad(with_feat)(jx["image_feat"], jx, groups=2),
                jax.value_and_grad(with_feat)(half["image_feat"], half))

    base, one, two, four, grad, (loss0, grad0) = run({k: jnp.asarray(v) for k, v in x.items()})
    assert float(one) == float(base)  # groups=1 is today's loss, bit for bit
    np.testing.assert_allclose(float(one), np_grouped_itc(x, 1, 0.4, ids), rtol=RTOL)
    for groups, got in ((2, two), (4, four)):
        ref = np_grouped_itc(x, groups, 0.4, ids)
        np.testing.assert_allclose(float(got), ref, rtol=RTOL)
        assert abs(ref - float(base)) > 1e-2  # ... and not the whole-batch loss
    # A separate call on group 0 alone gives its NumPy loss; the grouped loss's gradients are
    # finite and each group's own, divided by the number of groups.
    np.testing.assert_allclose(float(loss0), np_grouped_itc(_rows(x, slice(0, 4)), 1, 0.4,
                                                            None if ids is None else ids[:4]),
                               rtol=RTOL)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(np.asarray(grad)[:4], np.asarray(grad0) / 2, rtol=1e-4, atol=1e-7)


class _TempOnly:
    """What the step's ITC path asks of the model: the temperature."""

    def temperature(self):
        return jnp.float32(TEMP)


@pytest.mark.parametrize("with_ids", [False, True])
def test_step_itc_batch_groups_with_accumulation_slices(with_ids):
    """trainer.loss_config reads config.loss.itc_batch_groups into the step; the step's ITC over
    any row slices (gradient accumulation's micro-batches, which need not align with the
    groups) adds up to the mean of the per-group losses."""
    import types

    from train_utils import micro_config
    step, trainer = _train_imports()
    x = itc_inputs(14, b=8, q=6)
    ids = GROUP_IDS if with_ids else None
    state = types.SimpleNamespace(image_queue=jnp.asarray(x["image_queue"]),
                                  text_queue=jnp.asarray(x["text_queue"]),
                                  id_queue=jnp.asarray(GROUP_ID_QUEUE) if with_ids else None)
    batch = {"text_ids": jnp.ones((8, 4), jnp.int32), "text_mask": jnp.ones((8, 4), jnp.int32),
             "image_id": jnp.asarray(GROUP_IDS)}
    feats_m = (jnp.asarray(x["image_feat_m"]), jnp.asarray(x["text_feat_m"]))
    # (groups, micro-batches): the whole batch; micro-batches that are the groups; micro-batches
    # of 4 rows spanning two groups of 2.
    for groups, micro in ((1, 1), (4, 1), (2, 2), (4, 2)):
        lc = trainer.loss_config(micro_config(batch_size=8, itm_weight=0.0, lm_weight=0.0,
                                              use_image_ids=with_ids, itc_batch_groups=groups),
                                 5, 0)
        size, total = 8 // micro, 0.0
        for m in range(micro):
            sl = slice(m * size, (m + 1) * size)
            _, out = step._head_losses(_TempOnly(), lc, None, jnp.asarray(x["image_feat"][sl]),
                                       jnp.asarray(x["text_feat"][sl]), feats_m, batch, None,
                                       state, jnp.float32(0.4), None if micro == 1 else sl,
                                       None, True)
            total += float(out["loss_itc"])
        np.testing.assert_allclose(total, np_grouped_itc(x, groups, 0.4, ids), rtol=RTOL,
                                   err_msg=f"{groups=} {micro=}")


def test_itc_batch_groups_must_divide_the_batch():
    from train_utils import micro_config
    _, trainer = _train_imports()
    for bad in (3, 0, 32):
        with pytest.raises(ValueError, match="itc_batch_groups"):
            trainer.loss_config(micro_config(batch_size=16, itc_batch_groups=bad), 5, 0)
    with pytest.raises(ValueError, match="itc_batch_groups"):
        losses.itc_batch_columns(8, 4, 3)
    cols = np.asarray(losses.itc_batch_columns(4, 2, 2))
    np.testing.assert_array_equal(cols, [[1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1],
                                         [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
