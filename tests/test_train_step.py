"""The sharded train step: every mesh gives the single-device result; gradient accumulation
gives the full-batch result; the state has a sharding for every leaf."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from blip_jax import parallel
from blip_jax.train import trainer
from train_utils import micro_config, random_batch

STEPS = 2
# Plain SGD: the parameter update is -lr * gradient, so the step's gradients can be read off
# the parameters, and the check is about sharding alone (Adam's normalisation would let a
# near-zero gradient entry move by up to lr whatever tiny difference produced it).
SGD_LR = 1e-2
EPS32 = float(np.finfo(np.float32).eps)
# Longest float32 reduction in the micro model: the ViT patch embedding contracts 16*16*3 = 768
# inputs (the others: width 32, mlp 64, 16 rows x 8 tokens). A mesh or micro-batch split only
# reorders these sums, and reordering an n-term sum moves it by at most ~n*eps of its scale.
REORDER_RTOL = 768 * EPS32  # 9.2e-5


def _run(config, mesh_shape, devices=None, batches=None):
    """Runs the jitted step with SGD; returns the final state, per-step metrics and gradients."""
    mesh = parallel.make_mesh(mesh_shape, devices)
    setup = trainer.build(config, steps_per_epoch=5, mesh=mesh, optimizer=optax.sgd(SGD_LR))
    state, history, grads = setup.state, [], []
    before = jax.device_get(state.params)
    for b in batches:
        state, metrics = setup.step_fn(state, parallel.global_batch(b, setup.mesh))
        after = jax.device_get(state.params)
        grads.append(jax.tree_util.tree_map(
            lambda p0, p1: (p0.astype(np.float64) - p1) / SGD_LR, before, after))
        before = after
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return jax.device_get(state), history, grads


@pytest.fixture(scope="module")
def reference():
    """One device, full batch."""
    config = micro_config()
    batches = [random_batch(seed=s) for s in range(STEPS)]
    return (config, batches) + _run(config, {"data": 1}, jax.devices()[:1], batches)


def _assert_same(ref, got):
    """Losses, gradients and the queues agree up to float32 summation order (REORDER_RTOL)."""
    (ref_state, ref_hist, ref_grads), (state, hist, grads) = ref, got
    for a, b in zip(ref_hist, hist):
        for k in ("loss", "loss_itc", "loss_itm", "loss_lm", "grad_norm"):
            np.testing.assert_allclose(b[k], a[k], rtol=REORDER_RTOL, err_msg=k)
    params = jax.tree_util.tree_leaves_with_path(ref_state.params)
    for g_ref, g in zip(ref_grads, grads):
        # The scale of the summed terms is that of the gradient as a whole, not of the entry:
        # some entries cancel to ~0 in exact arithmetic (an attention key's bias) and keep
        # only the rounding of the terms that cancelled.
        scale = max(np.max(np.abs(a)) for a in jax.tree_util.tree_leaves(g_ref))
        for (path, p), a, b in zip(params, jax.tree_util.tree_leaves(g_ref),
                                   jax.tree_util.tree_leaves(g)):
            # Reading g off the parameters adds their own float32 rounding: eps*|p|/lr each.
            atol = REORDER_RTOL * scale + 2 * EPS32 * np.max(np.abs(p)) / SGD_LR
            np.testing.assert_allclose(b, a, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))
    # Queue entries are L2-normalised features: unit scale.
    np.testing.assert_allclose(state.image_queue, ref_state.image_queue, rtol=0, atol=REORDER_RTOL)
    np.testing.assert_allclose(state.text_queue, ref_state.text_queue, rtol=0, atol=REORDER_RTOL)


# Data x fsdp, and all three axes at once (a data-only mesh is the first case's special case;
# test_checkpoint_restores_onto_another_mesh runs one).
@pytest.mark.parametrize("mesh_shape", [{"data": 2, "fsdp": 4, "tensor": 1},
                                        {"data": 2, "fsdp": 2, "tensor": 2}])
def test_meshes_match_single_device(reference, mesh_shape):
    config, batches, *ref = reference
    got = _run(config, mesh_shape, batches=batches)
    _assert_same(ref, got)
    # Training really moved: losses of step 2 differ from step 1, every parameter got a gradient.
    hist, grads = got[1], got[2]
    assert hist[1]["loss_itc"] != hist[0]["loss_itc"]
    assert all(np.max(np.abs(g)) > 0 for g in jax.tree_util.tree_leaves(grads[0]))


def test_params_are_sharded_by_rules():
    config = micro_config()
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    setup = trainer.build(config, steps_per_epoch=5, mesh=mesh)
    p = setup.state.params
    q = p["text_encoder"]["layer_0"]["attention"]["query"]["kernel"]  # ('embed', 'heads')
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    fc1 = p["vision"]["block_0"]["fc1"]["kernel"]  # ('embed', 'mlp')
    assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    # Adam moments follow their parameters.
    moments = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(setup.state.opt_state)[0]
               if "text_encoder" in jax.tree_util.keystr(path)
               and "layer_0']['attention']['query']['kernel']" in jax.tree_util.keystr(path)]
    assert len(moments) == 2  # Adam's mu and nu
    assert all(m.sharding.spec == q.sharding.spec for m in moments)
    for leaf in jax.tree_util.tree_leaves(setup.state):
        assert isinstance(leaf.sharding, jax.sharding.NamedSharding)


def test_gradient_accumulation_equals_full_batch(reference):
    config, batches, *ref = reference
    acc = micro_config(grad_accum_steps=4)
    _assert_same(ref, _run(acc, {"data": 1}, jax.devices()[:1], batches))


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    """A state saved from a (8,1,1) mesh restores onto (2,2,2) with every leaf equal and the new
    shardings (orbax reshards on load)."""
    from blip_jax.train.checkpointing import TrainCheckpointer
    config = micro_config()
    a = trainer.build(config, steps_per_epoch=5, mesh=parallel.make_mesh({"data": 8}))
    state, _ = a.step_fn(a.state, parallel.global_batch(random_batch(), a.mesh))
    ckpt = TrainCheckpointer(str(tmp_path), keep=2)
    ckpt.save(1, state, b"iterator-state")
    ckpt.wait()
    b = trainer.build(config, steps_per_epoch=5,
                      mesh=parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    restored, data_state = ckpt.restore(1, b.abstract_state)
    ckpt.close()
    assert data_state == b"iterator-state"
    for x, y, s in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored),
                       jax.tree_util.tree_leaves(b.shardings)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert y.sharding == s


def test_training_starts_from_given_params():
    """config.init_checkpoint's path: the state starts from the given params (momentum copies
    them), not from a random init."""
    from blip_jax.models import init_params
    from train_utils import MICRO
    config = micro_config()
    start = init_params(MICRO, jax.random.key(123))
    setup = trainer.build(config, steps_per_epoch=5, mesh=parallel.make_mesh({"data": 8}),
                          init_params=start)
    got = jax.device_get(setup.state.params)
    for a, b in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), b)
    np.testing.assert_array_equal(
        np.asarray(start["vision"]["block_0"]["fc1"]["kernel"]),
        jax.device_get(setup.state.momentum["vision"]["block_0"]["fc1"]["kernel"]))


def test_momentum_features_use_dropout_in_train_mode():
    """The original runs its momentum encoders inside a model in train mode: their features
    (what the step enqueues and distils from) carry dropout. The step does the same by default
    (loss.momentum_train_mode); with False they are the deterministic features."""
    from blip_jax.models import init_params
    from blip_jax.models.blip import Blip
    from blip_jax.models.variants import momentum_subtree
    from blip_jax.train.step import _momentum_features
    from train_utils import MICRO
    config = micro_config()
    assert trainer.loss_config(config, 5, 0).momentum_train_mode
    cfg = MICRO.replace(text=dataclasses.replace(MICRO.text, dropout_rate=0.3,
                                                 attention_dropout_rate=0.3))
    model = Blip(cfg)
    momentum = momentum_subtree(init_params(cfg, jax.random.key(0)))
    b = random_batch()
    feats = lambda train, seed: _momentum_features(model, momentum, b["image"], b["text_ids"],
                                                   b["text_mask"], train, jax.random.key(seed))
    deterministic = model.apply({"params": momentum}, method=lambda m: m.text_embed(
        m.text_features(b["text_ids"], b["text_mask"])))
    # Unit-norm features: eval mode is the same computation (rounding only); dropout at 0.3
    # moves them by O(0.1), differently per key.
    np.testing.assert_allclose(feats(False, 0)[1], deterministic, rtol=0, atol=REORDER_RTOL)
    assert np.max(np.abs(feats(True, 0)[1] - deterministic)) > 1e-2
    assert np.max(np.abs(feats(True, 0)[1] - feats(True, 1)[1])) > 1e-2
