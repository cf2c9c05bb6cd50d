"""The state initialisation compiled at XLA:CPU's backend level 2 (blip_jax/xla_options.py) gives
the same bits as at XLA's default level 3, and the option stays off where it was not checked."""

import jax
import numpy as np
from train_utils import micro_config

from blip_jax import parallel, xla_options
from blip_jax.train import trainer

LEVEL = "xla_backend_optimization_level"


def _state_at(monkeypatch, options: dict):
    monkeypatch.setattr(xla_options, "one_shot", lambda backend=None: dict(options))
    config = micro_config()
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    return jax.tree_util.tree_leaves(trainer.build(config, steps_per_epoch=4, mesh=mesh).state)


def test_one_shot_level_gives_the_default_levels_bits(monkeypatch):
    # The suite's own XLA_FLAGS name level 0 (tests/conftest.py); per-program options override it.
    fast = _state_at(monkeypatch, {LEVEL: xla_options.ONE_SHOT_LEVEL})
    default = _state_at(monkeypatch, {LEVEL: 3})
    unoptimised = _state_at(monkeypatch, {LEVEL: 0})
    assert len(fast) == len(default)
    for a, b in zip(fast, default):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The check can tell levels apart: level 0 moves some bits (measured on this model).
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(unoptimised, default))


def test_one_shot_only_on_cpu_and_never_over_the_users_level(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert xla_options.one_shot("cpu") == {LEVEL: xla_options.ONE_SHOT_LEVEL}
    assert xla_options.one_shot("gpu") == {} and xla_options.one_shot("tpu") == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    assert xla_options.one_shot("cpu") == {}
