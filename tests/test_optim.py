"""Learning-rate schedules of blip_jax/train/optim.py against the original's formulas.

The original's fine-tuning schedule (utils.cosine_lr_schedule, called by train_caption.py and
train_retrieval.py once at the start of each epoch e = 0 .. max_epoch - 1):
    lr = (init_lr - min_lr) * 0.5 * (1 + cos(pi * e / max_epoch)) + min_lr
constant within an epoch, no warm-up, min_lr never reached.
"""

import importlib.util
import math
import os

import jax
import numpy as np
import pytest

from blip_jax.experiments import tiny
from blip_jax.train import optim
from blip_jax.train.defaults import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_STEPS_PER_EPOCH = 3000 // 32  # train_clean: 600 images x 5 captions, batch 32


def original_lr(epoch, max_epoch, init_lr, min_lr):
    return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / max_epoch)) + min_lr


def optim_cfg(schedule="cosine_epoch", lr=1e-5, min_lr=0.0, warmup_steps=0):
    c = base_config("tiny").optim
    c.schedule, c.lr, c.min_lr, c.warmup_steps = schedule, lr, min_lr, warmup_steps
    return c


def values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


@pytest.mark.parametrize("min_lr", [0.0, 1e-6])
def test_cosine_epoch_is_the_original_per_epoch_rule(min_lr):
    spe, epochs, lr = 7, 5, 1e-5
    sched = optim.make_schedule(optim_cfg(lr=lr, min_lr=min_lr), epochs * spe, spe)
    steps = np.arange(epochs * spe)
    expected = [original_lr(s // spe, epochs, lr, min_lr) for s in steps]
    np.testing.assert_allclose(values(sched, steps), expected, rtol=1e-6, atol=1e-13)
    got = values(sched, steps).reshape(epochs, spe)
    assert np.all(got == got[:, :1])                        # constant within each epoch
    assert np.all(np.diff(got[:, 0]) < 0)                   # decreasing epoch by epoch
    np.testing.assert_allclose(got[0, 0], lr, rtol=1e-6)    # epoch 0: init_lr (no warm-up)
    assert got[-1, -1] > min_lr + 0.05 * (lr - min_lr)      # the last step is far from min_lr
    # ... and it works under jit with a traced step.
    np.testing.assert_allclose(float(jax.jit(sched)(np.int32(3 * spe + 2))),
                               original_lr(3, epochs, lr, min_lr), rtol=1e-6)


def test_cosine_epoch_partial_last_epoch_counts_as_an_epoch():
    # 3.2 epochs of steps (the tiny captioner: 300 steps of 93): max_epoch = ceil(3.2) = 4,
    # the last 21 steps run at epoch 3's lr.
    spe, total, lr = 93, 300, 5e-4
    sched = optim.make_schedule(optim_cfg(lr=lr), total, spe)
    steps = np.arange(total)
    np.testing.assert_allclose(values(sched, steps),
                               [original_lr(s // spe, 4, lr, 0.0) for s in steps], rtol=1e-6)
    # A zero-step run (zero-shot evaluation of the filter recipe) builds a schedule too.
    np.testing.assert_allclose(float(optim.make_schedule(optim_cfg(lr=lr), 0, spe)(0)), lr)


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.mark.parametrize("name,epochs", [("caption_coco", 5), ("retrieval_coco", 6),
                                         ("retrieval_flickr", 6), ("tiny_caption", 4),
                                         ("tiny_retrieval", 7)])
def test_finetune_configs_step_the_cosine_once_per_epoch(name, epochs):
    if name.startswith("tiny_"):
        c = getattr(tiny, name[5:])()
        spe = TINY_STEPS_PER_EPOCH
    else:
        c = load_config(name)
        spe = c.steps_per_epoch
    assert math.ceil(c.total_steps / spe) == epochs
    sched = optim.make_schedule(c.optim, c.total_steps, spe)
    # First and last step of every epoch, and one inside it.
    starts = np.arange(epochs) * spe
    steps = sorted({int(s) for s in np.concatenate([starts, starts + spe // 2, starts + spe - 1])
                    if s < c.total_steps} | {c.total_steps - 1})
    expected = [original_lr(s // spe, epochs, c.optim.lr, c.optim.min_lr) for s in steps]
    np.testing.assert_allclose(values(sched, steps), expected, rtol=1e-5)


def test_per_step_cosine_kept_and_errors_name_the_key():
    spe, total, lr = 10, 50, 1e-3
    sched = optim.make_schedule(optim_cfg("cosine", lr=lr, min_lr=1e-5), total, spe)
    got = values(sched, [0, 5, total])
    np.testing.assert_allclose(got[0], lr, rtol=1e-6)
    assert got[1] < lr                      # decays within the first epoch
    np.testing.assert_allclose(got[2], 1e-5, rtol=1e-5)  # reaches min_lr at the end
    with pytest.raises(ValueError, match="warmup_steps=0"):
        optim.make_schedule(optim_cfg(warmup_steps=100), total, spe)
    with pytest.raises(ValueError, match="cosine_epoch"):
        optim.make_schedule(optim_cfg("linear"), total, spe)


@pytest.mark.parametrize("warmup_steps", [0, 7])
def test_per_step_cosine_is_optax_warmup_cosine(warmup_steps):
    """optim.warmup_cosine_schedule (total_steps may be traced) against the library's
    optax.warmup_cosine_decay_schedule: the same formula in float32, a few ulp of the peak."""
    import optax
    warmup_lr, lr, min_lr, total = 1e-6, 3e-4, 1e-5, 40
    ours = optim.warmup_cosine_schedule(warmup_lr, lr, warmup_steps, min_lr, total)
    ref = optax.warmup_cosine_decay_schedule(warmup_lr, lr, warmup_steps,
                                             max(total, warmup_steps + 1), end_value=min_lr)
    steps = np.arange(total + 5)  # past the end: min_lr
    np.testing.assert_allclose(values(ours, steps), values(ref, steps), rtol=0,
                               atol=8 * np.finfo(np.float32).eps * lr)


@pytest.mark.parametrize("schedule", ["step", "cosine_epoch", "cosine"])
def test_schedules_take_traced_lengths(schedule):
    """The trainer passes total_steps and steps_per_epoch to the jitted step as int32 arrays:
    the values are the concrete schedule's (same float32 formula; equal up to rounding)."""
    c = base_config("tiny").optim
    c.schedule, c.warmup_steps = schedule, (0 if schedule == "cosine_epoch" else 5)
    c.lr, c.min_lr, c.decay_rate = 2e-4, 1e-6, 0.5
    for total, spe in ((30, 7), (50, 12)):
        concrete = optim.make_schedule(c, total, spe)
        traced = jax.jit(lambda s, t, e: optim.make_schedule(c, t, e)(s))
        steps = np.arange(total)
        got = np.array([float(traced(np.int32(s), np.int32(total), np.int32(spe))) for s in steps])
        np.testing.assert_allclose(got, values(concrete, steps), rtol=4 * np.finfo(np.float32).eps)


def test_step_schedule_is_the_originals():
    """Pre-training (pretrain.py:51,129; utils.py:8-17): in epoch 0 the lr is
    min(lr, warmup_lr + (lr - warmup_lr) * i / warmup_steps) at step i; from epoch e >= 1 it
    is max(min_lr, lr * decay_rate ** e), set once at the epoch start."""
    c = base_config("tiny").optim
    c.schedule, c.lr, c.warmup_lr, c.warmup_steps, c.min_lr, c.decay_rate = (
        "step", 3e-4, 1e-6, 30, 1e-5, 0.5)
    spe = 20  # warm-up longer than epoch 0: it stops at the epoch's end, as the original
    sched = optim.make_schedule(c, 200, spe)
    for step in range(200):
        epoch, i = divmod(step, spe)
        if epoch == 0:
            want = min(c.lr, c.warmup_lr + (c.lr - c.warmup_lr) * i / c.warmup_steps)
        else:
            want = max(c.min_lr, c.lr * c.decay_rate ** epoch)
        # float32 schedule arithmetic: a few ulp (8 eps ~ 1e-6).
        np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6, err_msg=str(step))


def test_weight_decay_applies_to_every_parameter_by_default():
    """The original's AdamW(model.parameters(), weight_decay=0.05) decays biases, LayerNorm
    scales and the temperature too; "matrices" (LAVIS) is the alternative."""
    params = {"kernel": np.ones((2, 2)), "bias": np.ones(2), "temp": np.ones(())}
    assert base_config("tiny").optim.weight_decay_mask == "all"
    assert all(jax.tree_util.tree_leaves(optim.decay_mask(params, "all")))
    assert optim.decay_mask(params, "matrices") == {"kernel": True, "bias": False, "temp": False}


def test_ema_update_is_the_originals():
    """models/blip_pretrain.py:225-228: theta_m <- m * theta_m + (1 - m) * theta."""
    from blip_jax.train.state import ema_update
    rng = np.random.default_rng(0)
    tree = lambda: {"vision": rng.normal(size=3), "vision_proj": rng.normal(size=2),
                    "text_proj": rng.normal(size=2),
                    "text_encoder": {"embeddings": rng.normal(size=2),
                                     "layer_0": {"attention": rng.normal(size=2),
                                                 "crossattention": rng.normal(size=2)}}}
    params, momentum = tree(), tree()
    del momentum["text_encoder"]["layer_0"]["crossattention"]  # not in the momentum model
    out = ema_update(momentum, params, 0.995)
    np.testing.assert_allclose(out["vision"], 0.995 * momentum["vision"] + 0.005 * params["vision"],
                               rtol=1e-6)
    np.testing.assert_allclose(out["text_encoder"]["layer_0"]["attention"],
                               0.995 * momentum["text_encoder"]["layer_0"]["attention"]
                               + 0.005 * params["text_encoder"]["layer_0"]["attention"], rtol=1e-6)
