"""The sharded train step: every mesh gives the single-device result; gradient accumulation
gives the full-batch result; the state has a sharding for every leaf."""

import jax
import numpy as np
import pytest

from blip_jax import parallel
from blip_jax.train import trainer
from train_utils import micro_config, random_batch

STEPS = 2


def _run(config, mesh_shape, devices=None, batches=None):
    mesh = parallel.make_mesh(mesh_shape, devices)
    setup = trainer.build(config, steps_per_epoch=5, mesh=mesh)
    state, history = setup.state, []
    for b in batches:
        state, metrics = setup.step_fn(state, parallel.global_batch(b, setup.mesh))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return jax.device_get(state), history, setup


@pytest.fixture(scope="module")
def reference():
    """One device, full batch."""
    config = micro_config()
    batches = [random_batch(seed=s) for s in range(STEPS)]
    state, history, _ = _run(config, {"data": 1}, jax.devices()[:1], batches)
    return config, batches, state, history


def _assert_same(ref_state, ref_hist, state, hist, loss_rtol=1e-5, param_atol=2e-5):
    # Tolerances: losses and gradient norms agree to float32 reduction-order noise (1e-5
    # relative). Parameters after 2 AdamW steps at lr 1e-4 move by up to ~2e-4; Adam's step
    # is ~lr * sign(g) for |g| >> eps, so entries whose gradient is ~0 can move differently
    # under different summation orders: 2e-5 (10% of the largest move) bounds that.
    for a, b in zip(ref_hist, hist):
        for k in ("loss", "loss_itc", "loss_itm", "loss_lm", "grad_norm"):
            np.testing.assert_allclose(b[k], a[k], rtol=loss_rtol, err_msg=k)
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(x - y))),
                                   ref_state.params, state.params)
    assert max(jax.tree_util.tree_leaves(diffs)) < param_atol
    np.testing.assert_allclose(state.image_queue, ref_state.image_queue, atol=1e-6)
    np.testing.assert_allclose(state.text_queue, ref_state.text_queue, atol=1e-6)


@pytest.mark.parametrize("mesh_shape", [{"data": 8, "fsdp": 1, "tensor": 1},
                                        {"data": 2, "fsdp": 4, "tensor": 1},
                                        {"data": 2, "fsdp": 2, "tensor": 2}])
def test_meshes_match_single_device(reference, mesh_shape):
    config, batches, ref_state, ref_hist = reference
    state, hist, setup = _run(config, mesh_shape, batches=batches)
    _assert_same(ref_state, ref_hist, state, hist)
    # Training really moved: losses of step 2 differ from step 1 and params changed.
    assert hist[1]["loss_itc"] != hist[0]["loss_itc"]


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
    config, batches, ref_state, ref_hist = reference
    acc = micro_config(grad_accum_steps=4)
    state, hist, _ = _run(acc, {"data": 1}, jax.devices()[:1], batches)
    _assert_same(ref_state, ref_hist, state, hist)


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
