"""The training loop: data -> global batch -> jitted step -> metrics / checkpoints.

Resumes from the latest checkpoint in the workdir (train state and data iterator), saves on
SIGTERM, stops on a non-finite loss without checkpointing the broken state.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from blip_jax import checkpoint as model_checkpoint, decoding, parallel, tokenizer as tok
from blip_jax.models.blip import Blip
from blip_jax.models import variants
from blip_jax.models.config import BlipConfig
from blip_jax.train import optim
from blip_jax.train.checkpointing import TrainCheckpointer
from blip_jax.train.defaults import base_config
from blip_jax.train.metric_writer import MetricWriter
from blip_jax.train.state import build_state, state_shardings
from blip_jax.train.step import LossConfig, jit_train_step, make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf."""


class ConfigKeyError(KeyError):
    """A config key the trainer does not know (a typo must not pass silently)."""


def check_config_keys(config: ml_collections.ConfigDict) -> None:
    """Rejects keys that base_config() does not define (model keys are checked by BlipConfig)."""
    reference = base_config("tiny")

    def walk(cfg, ref, where):
        for key in cfg.keys():
            if key == "model":
                continue
            if key not in ref:
                raise ConfigKeyError(f"unknown config key '{where}{key}'; valid keys at this "
                                     f"level: {sorted(ref.keys())}")
            if isinstance(cfg[key], ml_collections.ConfigDict) and key != "mesh":
                walk(cfg[key], ref[key], f"{where}{key}.")

    walk(config, reference, "config.")


def loss_config(config: ml_collections.ConfigDict, steps_per_epoch: int,
                prompt_length: int) -> LossConfig:
    lc = config.loss
    return LossConfig(
        itc_weight=lc.itc_weight, itm_weight=lc.itm_weight, lm_weight=lc.lm_weight,
        alpha=lc.alpha, alpha_ramp_steps=int(round(lc.alpha_ramp_epochs * steps_per_epoch)),
        momentum=lc.momentum, label_smoothing=lc.label_smoothing,
        use_image_ids=lc.use_image_ids, itm_negatives=lc.itm_negatives,
        prompt_length=prompt_length, grad_accum_steps=lc.grad_accum_steps)


@dataclasses.dataclass
class Setup:
    """Everything built from a config before the loop starts (also used by tests/benchmarks)."""

    model: Blip
    model_config: BlipConfig
    mesh: Any
    state: Any
    shardings: Any
    abstract_state: Any
    step_fn: Any
    schedule: Any
    loss: LossConfig


def build(config: ml_collections.ConfigDict, steps_per_epoch: int, mesh=None,
          init_params: Optional[dict] = None) -> Setup:
    """Model, mesh, sharded initial state and the jitted step for `config`."""
    model_cfg = BlipConfig.from_dict(config.model.to_dict())
    mesh = mesh or parallel.make_mesh(dict(config.mesh))
    # Captioning prompt: its tokens after [DEC] are not LM targets.
    prompt_length = len(decoding.prompt_ids(tok.BlipTokenizer(), config.loss.prompt)) - 1
    lc = loss_config(config, steps_per_epoch, prompt_length)
    if lc.uses_itc and config.loss.queue_size % config.batch_size:
        raise ValueError(f"config.loss.queue_size={config.loss.queue_size} must be a multiple of "
                         f"config.batch_size={config.batch_size} (whole batches are enqueued)")
    if config.batch_size % parallel.batch_shards(mesh):
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                         f"{parallel.batch_shards(mesh)} data x fsdp devices of the mesh")
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps, steps_per_epoch)
    model = Blip(model_cfg)

    def make(rng, boxed, params=init_params):
        return build_state(rng, model_cfg, tx, use_momentum=lc.uses_itc,
                           queue_size=config.loss.queue_size,
                           use_id_queue=lc.use_image_ids, params=params, boxed=boxed)

    # Logical axis names come from a (shape-only) random init, whatever the start params.
    abstract_boxed = jax.eval_shape(lambda r: make(r, True, None), jax.random.key(0))
    shardings = state_shardings(abstract_boxed, mesh)
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(lambda r: make(r, False, None), jax.random.key(0)), shardings)
    key = jax.random.key(config.seed)
    if init_params is None:
        state = jax.jit(lambda r: make(r, False, None), out_shardings=shardings)(key)
    else:  # params as an argument, not a closure: no multi-GB constants in the program
        state = jax.jit(lambda r, p: make(r, False, p), out_shardings=shardings)(key, init_params)
    groups = parallel.batch_shards(mesh) if lc.itm_negatives == "local" else 1
    if lc.itm_negatives not in ("global", "local"):
        raise ValueError(f"config.loss.itm_negatives={lc.itm_negatives!r}: use global or local")
    step_fn = jit_train_step(make_train_step(model, tx, lc, schedule, mesh, groups), shardings, mesh)
    return Setup(model, model_cfg, mesh, state, shardings, abstract, step_fn, schedule, lc)


def _finite(metrics: dict) -> bool:
    return all(math.isfinite(float(v)) for k, v in metrics.items() if k.startswith("loss"))


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    from blip_jax.train import input as train_input  # the data stack loads only when training

    check_config_keys(config)
    data = train_input.TrainData(config)
    steps_per_epoch = config.steps_per_epoch or max(1, data.num_examples // config.batch_size)
    init_params = None
    if config.init_checkpoint:
        source_cfg, init_params = model_checkpoint.load_model(config.init_checkpoint)
        target_cfg = BlipConfig.from_dict(config.model.to_dict())
        # A pre-trained (tied) model becomes a captioner / retrieval model here.
        init_params = variants.adapt_params(init_params, source_cfg, target_cfg)
        model_checkpoint.check_params_fit(init_params, target_cfg,
                                          what=f"init_checkpoint {config.init_checkpoint}")
    setup = build(config, steps_per_epoch, init_params=init_params)
    is_main = jax.process_index() == 0
    writer = MetricWriter(workdir, config.total_steps, enabled=is_main)
    ckpt = TrainCheckpointer(workdir, config.keep_checkpoints)
    state, iterator = setup.state, data.iterator()
    start = ckpt.latest_step()
    if start is not None:
        state, data_state = ckpt.restore(start, setup.abstract_state)
        if data_state is not None:
            iterator.set_state(data_state)
        if is_main:
            print(f"resumed from step {start} in {ckpt.directory}", flush=True)
    start = start or 0
    if is_main:
        print(f"training {config.task}: {config.total_steps} steps, global batch "
              f"{config.batch_size}, {steps_per_epoch} steps/epoch, mesh {dict(setup.mesh.shape)}, "
              f"{jax.device_count()} devices / {jax.process_count()} processes", flush=True)

    stop = {"sigterm": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
    evaluator = (train_input.make_evaluator(config, setup, os.path.join(workdir, "eval"))
                 if config.eval.every_steps else None)
    last_logged: dict = {}
    t0, done_at_t0 = time.time(), start
    try:
        step = start
        while step < config.total_steps:
            if _should_stop(stop["sigterm"]):
                ckpt.save(step, state, iterator.get_state())
                ckpt.wait()
                if is_main:
                    print(f"SIGTERM: saved checkpoint at step {step}; exiting", flush=True)
                break
            batch = parallel.global_batch(next(iterator), setup.mesh)
            state, metrics = setup.step_fn(state, batch)
            step += 1
            log_now = step % config.log_every_steps == 0 or step == config.total_steps
            save_now = step % config.checkpoint_every_steps == 0 or step == config.total_steps
            if log_now or save_now:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not _finite(metrics):
                    ckpt.wait()
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step}: "
                        f"{ {k: v for k, v in metrics.items() if k.startswith('loss')} }. "
                        f"Stopped without saving; the last good checkpoint is step "
                        f"{ckpt.latest_step()} in {ckpt.directory}. Lower config.optim.lr, set "
                        f"config.optim.grad_clip_norm, or check the data.")
            if log_now:
                # Throughput over the last logging window (the first one includes compilation).
                now = time.time()
                rate = (step - done_at_t0) * config.batch_size / max(now - t0, 1e-9)
                t0, done_at_t0 = now, step
                metrics["examples_per_sec"] = rate
                metrics["eta_sec"] = (config.total_steps - step) * config.batch_size / max(rate, 1e-9)
                if evaluator is not None and step % config.eval.every_steps == 0:
                    metrics.update(evaluator(state.params))
                writer.write(step, metrics)
                writer.progress(step, metrics)
                last_logged = {"step": step, **metrics}
            if save_now:
                ckpt.save(step, state, iterator.get_state())
        ckpt.wait()
        if step == config.total_steps:
            export_model(os.path.join(workdir, "model"), state.params, setup.model_config,
                         config.task)
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpt.close()
        writer.close()
    return last_logged


def export_model(directory: str, params: Any, model_config: BlipConfig, task: str) -> None:
    """The trained parameters as a model checkpoint (what init_checkpoint, `evaluate`,
    `caption` and CapFilt read). Every process takes part (orbax writes collectively)."""
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
    model_checkpoint.save_model(directory, params, model_config, source=f"blip_jax.train ({task})")
    if jax.process_index() == 0:
        print(f"model written to {directory}", flush=True)


def _should_stop(local_flag: bool) -> bool:
    """All processes must agree to stop at the same step (they save together)."""
    if jax.process_count() == 1:
        return local_flag
    flags = multihost_utils.process_allgather(np.array([local_flag], np.int32))
    return bool(np.any(flags))
