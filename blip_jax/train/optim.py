"""Optimiser and learning-rate schedules (REFERENCE §2: AdamW, warm-up then per-epoch decay).

A run's lengths (total_steps, steps_per_epoch) may be traced scalars: the trainer passes them to
its jitted step as arguments, so runs of one recipe on data of different sizes compile one
program (trainer.build). The config's own numbers (lr, warm-up steps, ...) stay constants."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def step_decay_schedule(init_lr: float, warmup_lr: float, warmup_steps: int, min_lr: float,
                        decay_rate: float, steps_per_epoch) -> Callable[[jax.Array], jax.Array]:
    """The paper's schedule: linear warm-up from warmup_lr to init_lr over warmup_steps (epoch 0),
    then lr = max(min_lr, init_lr * decay_rate ** epoch), constant within an epoch."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        epoch = jnp.floor(step / steps_per_epoch)
        decayed = jnp.maximum(min_lr, init_lr * decay_rate ** epoch)
        if warmup_steps <= 0:
            return decayed
        warm = warmup_lr + (init_lr - warmup_lr) * jnp.minimum(step, warmup_steps) / warmup_steps
        return jnp.where((epoch == 0) & (step < warmup_steps), warm, decayed)

    return schedule


def epoch_cosine_schedule(init_lr: float, min_lr: float, total_steps,
                          steps_per_epoch) -> Callable[[jax.Array], jax.Array]:
    """The original's fine-tuning schedule (utils.cosine_lr_schedule, called once at the start of
    every epoch by train_caption.py / train_retrieval.py): in epoch e = step // steps_per_epoch,
    lr = (init_lr - min_lr) * 0.5 * (1 + cos(pi * e / max_epoch)) + min_lr, constant within the
    epoch, no warm-up; the last epoch runs above min_lr (min_lr is never reached).

    max_epoch = ceil(total_steps / steps_per_epoch): every epoch the run starts counts, so when
    total_steps is not a multiple of steps_per_epoch the run ends part-way through its last
    epoch, at that epoch's lr (3.2 epochs of steps -> max_epoch 4, lrs for e = 0, 1, 2, 3)."""
    if isinstance(steps_per_epoch, (int, np.integer)) and steps_per_epoch <= 0:  # else traced
        raise ValueError(f"the per-epoch cosine schedule needs steps_per_epoch > 0, got "
                         f"{steps_per_epoch}")
    total_steps = jnp.asarray(total_steps, jnp.int32)
    steps_per_epoch = jnp.asarray(steps_per_epoch, jnp.int32)
    # ceil(total / per_epoch), >= 1 for a zero-step run
    max_epoch = jnp.maximum(1, -(-total_steps // steps_per_epoch)).astype(jnp.float32)

    def schedule(step):
        epoch = (jnp.asarray(step, jnp.int32) // steps_per_epoch).astype(jnp.float32)
        return (init_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / max_epoch)) + min_lr

    return schedule


def warmup_cosine_schedule(warmup_lr: float, init_lr: float, warmup_steps: int, min_lr: float,
                           total_steps) -> Callable[[jax.Array], jax.Array]:
    """Per-step cosine (optax.warmup_cosine_decay_schedule's values, with total_steps allowed
    to be traced): linear warm-up from warmup_lr to init_lr over warmup_steps, then a cosine
    from init_lr to min_lr reached at total_steps (at least warmup_steps + 1), min_lr after."""
    warmup_steps = max(int(warmup_steps), 0)
    decay_steps = (jnp.maximum(jnp.asarray(total_steps, jnp.int32), warmup_steps + 1)
                   - warmup_steps).astype(jnp.float32)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        t = jnp.minimum(step - warmup_steps, decay_steps)
        decayed = min_lr + (init_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / decay_steps))
        if warmup_steps == 0:
            return decayed
        warm = warmup_lr + (init_lr - warmup_lr) * step / warmup_steps
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


def make_schedule(cfg: ml_collections.ConfigDict, total_steps,
                  steps_per_epoch) -> Callable[[jax.Array], jax.Array]:
    """total_steps / steps_per_epoch: Python ints or traced int32 scalars."""
    if cfg.schedule == "cosine_epoch":
        if cfg.warmup_steps > 0:
            raise ValueError(f"config.optim.schedule='cosine_epoch' has no warm-up (the original's "
                             f"fine-tuning schedule): set config.optim.warmup_steps=0 (got "
                             f"{cfg.warmup_steps}) or use schedule='cosine'")
        return epoch_cosine_schedule(cfg.lr, cfg.min_lr, total_steps, steps_per_epoch)
    if cfg.schedule == "step":
        return step_decay_schedule(cfg.lr, cfg.warmup_lr, cfg.warmup_steps, cfg.min_lr,
                                   cfg.decay_rate, steps_per_epoch)
    if cfg.schedule == "cosine":
        return warmup_cosine_schedule(cfg.warmup_lr, cfg.lr, cfg.warmup_steps, cfg.min_lr,
                                      total_steps)
    raise ValueError(f"config.optim.schedule={cfg.schedule!r}: use 'step', 'cosine' or "
                     f"'cosine_epoch'")


def decay_mask(params: Any, which: str) -> Any:
    """'all': weight decay on every parameter (original BLIP); 'matrices': only on >= 2-d
    parameters, i.e. not on biases, LayerNorm scales or the temperature (LAVIS)."""
    if which == "all":
        return jax.tree_util.tree_map(lambda _: True, params)
    if which == "matrices":
        return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)
    raise ValueError(f"config.optim.weight_decay_mask={which!r}: use 'all' or 'matrices'")


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps,
                   steps_per_epoch) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW on make_schedule's schedule (lengths as there); the optimiser state's structure
    does not depend on the lengths."""
    schedule = make_schedule(cfg, total_steps, steps_per_epoch)
    parts = []
    if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=1e-8,
                             weight_decay=cfg.weight_decay,
                             mask=lambda p: decay_mask(p, cfg.weight_decay_mask)))
    return optax.chain(*parts), schedule
