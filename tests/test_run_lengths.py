"""A run's lengths (total steps, steps per epoch, the alpha ramp) are arguments of the jitted
train step, not constants in it (trainer.build, step.LengthsBoundStep): runs of one recipe on
data of different sizes (the bootstrap experiment's pre-training rows) lower to one program,
which the persistent compilation cache then serves; the schedules still read each run's own
lengths."""

import jax
import numpy as np
import pytest

from blip_jax import losses, parallel
from blip_jax.train import trainer
from train_utils import micro_config, random_batch

# Two runs of one recipe: the second's data gives other epoch and run lengths.
RUNS = ((10, 5), (23, 7))  # (total_steps, steps_per_epoch)


def _build(total_steps: int, steps_per_epoch: int, **optim):
    c = micro_config()
    c.total_steps = total_steps
    c.optim.warmup_steps = 0
    for k, v in optim.items():
        c.optim[k] = v
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    return trainer.build(c, steps_per_epoch=steps_per_epoch, mesh=mesh), mesh


def test_runs_of_other_lengths_share_one_program_and_step_by_their_own_lengths():
    """One program text for both runs (the schedules' traced forms: test_optim.py); lr and
    alpha of every step are the concrete schedules' values for that run's lengths, computed
    outside the program (float32 arithmetic both ways: a few ulp)."""
    texts = []
    for total, per_epoch in RUNS:
        # decay 0.5 per epoch: the lr changes at every epoch boundary of this run.
        setup, mesh = _build(total, per_epoch, schedule="step", decay_rate=0.5, min_lr=1e-7)
        ramp = setup.loss.alpha_ramp_steps
        assert ramp == per_epoch  # micro_config ramps alpha over one epoch
        state, batch = setup.state, parallel.global_batch(random_batch(), mesh)
        texts.append(setup.step_fn.lower(state, batch).as_text())
        for step in range(per_epoch + 2):  # across the first epoch boundary
            state, metrics = setup.step_fn(state, batch)
            np.testing.assert_allclose(float(metrics["lr"]), float(setup.schedule(step)),
                                       rtol=4 * np.finfo(np.float32).eps, err_msg=str(step))
            np.testing.assert_allclose(
                float(metrics["alpha"]),
                float(losses.alpha_at(np.int32(step), setup.loss.alpha, ramp)),
                rtol=4 * np.finfo(np.float32).eps, err_msg=str(step))
        assert float(metrics["lr"]) == pytest.approx(1e-4 * 0.5, rel=1e-6)  # epoch 1
        assert float(metrics["alpha"]) == pytest.approx(setup.loss.alpha, rel=1e-6)
    assert texts[0] == texts[1]
