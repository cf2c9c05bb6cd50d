"""The training loop: data -> global batch -> jitted step -> metrics / checkpoints.

Resumes from the latest checkpoint in the workdir (train state and data iterator), saves on
SIGTERM, stops on a non-finite loss without checkpointing the broken state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.experimental import multihost_utils

from blip_jax import checkpoint as model_checkpoint, decoding, parallel, tokenizer as tok, xla_options
from blip_jax.convert import pretrained_init
from blip_jax.models.blip import Blip, abstract_params, init_params as blip_init_params
from blip_jax.models import variants
from blip_jax.models.config import BlipConfig
from blip_jax.train import nlvr_step, optim, vqa_step
from blip_jax.train.checkpointing import TrainCheckpointer
from blip_jax.train.defaults import base_config
from blip_jax.train.metric_writer import MetricWriter
from blip_jax.train.state import TrainState, build_state, state_shardings
from blip_jax.train.step import LossConfig, LengthsBoundStep, jit_train_step, make_train_step


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


TASKS = ("pretrain", "caption", "retrieval", "vqa", "nlvr")


def check_task(config: ml_collections.ConfigDict) -> None:
    """config.task is known and its losses and model fit it (checked before any data is read)."""
    if config.task in ("video_retrieval", "videoqa"):  # evaluation.tasks.EVAL_ONLY_TASKS
        raise ValueError(f"task {config.task} is zero-shot evaluation of an image-trained model: "
                         f"there is nothing to train. Evaluate a checkpoint with `python -m "
                         f"blip_jax.evaluate --config=... --checkpoint=DIR`")
    if config.task not in TASKS:
        raise ValueError(f"config.task={config.task!r}: use one of {', '.join(TASKS)}")
    if config.task == "vqa":
        lc = config.loss
        if lc.itc_weight or lc.itm_weight or lc.grad_accum_steps > 1:
            raise ValueError("task vqa trains the answer loss alone, in one pass: set "
                             "config.loss.itc_weight = itm_weight = 0 and grad_accum_steps = 1")
        if config.model.decoder_context != "question":
            raise ValueError("task vqa needs the VQA model: config.model.decoder_context="
                             "'question' (the answer decoder reads the question states)")
    elif config.model.decoder_context == "question":
        raise ValueError(f"config.model.decoder_context='question' is the VQA model: use "
                         f"task vqa, or decoder_context='image' for task {config.task}")
    if config.task == "nlvr":
        lc = config.loss
        if lc.itc_weight or lc.itm_weight or lc.grad_accum_steps > 1:
            raise ValueError("task nlvr trains the pair classifier alone, in one pass: set "
                             "config.loss.itc_weight = itm_weight = 0 and grad_accum_steps = 1")
        if not config.model.image_pair:
            raise ValueError("task nlvr needs the NLVR2 model: config.model.image_pair=True, "
                             "text_decoder=False, itc_itm_heads=False")
    elif config.model.image_pair:
        raise ValueError(f"config.model.image_pair=True is the NLVR2 model: use task nlvr, "
                         f"or image_pair=False for task {config.task}")


def loss_config(config: ml_collections.ConfigDict, steps_per_epoch: int,
                prompt_length: int) -> LossConfig:
    lc = config.loss
    if lc.itm_negative_sim not in ("momentum", "online"):
        raise ValueError(f"config.loss.itm_negative_sim={lc.itm_negative_sim!r}: use momentum "
                         f"(pre-training) or online (the original's retrieval fine-tuning)")
    if not lc.itm_negative_floor >= 0:
        raise ValueError(f"config.loss.itm_negative_floor={lc.itm_negative_floor!r}: use a "
                         f"number >= 0 (1e-4 pre-training, 0.0 retrieval fine-tuning)")
    groups = lc.itc_batch_groups
    if not isinstance(groups, int) or groups < 1 or config.batch_size % groups:
        raise ValueError(f"config.loss.itc_batch_groups={groups!r}: use a positive divisor of "
                         f"config.batch_size={config.batch_size} (1 = the whole global batch)")
    return LossConfig(
        itc_weight=lc.itc_weight, itm_weight=lc.itm_weight, lm_weight=lc.lm_weight,
        alpha=lc.alpha, alpha_ramp_steps=int(round(lc.alpha_ramp_epochs * steps_per_epoch)),
        momentum=lc.momentum, momentum_train_mode=lc.momentum_train_mode,
        label_smoothing=lc.label_smoothing,
        use_image_ids=lc.use_image_ids, itm_negatives=lc.itm_negatives,
        itm_negative_sim=lc.itm_negative_sim, itm_negative_floor=float(lc.itm_negative_floor),
        itc_batch_groups=groups,
        prompt_length=prompt_length, grad_accum_steps=lc.grad_accum_steps,
        lm_chunk_tokens=int(lc.lm_chunk_tokens))


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
          init_params: Optional[dict] = None, init_start: Optional[dict] = None,
          optimizer: Optional[optax.GradientTransformation] = None) -> Setup:
    """Model, mesh, sharded initial state and the jitted step for `config`. `init_params` /
    `init_start`: see `initial_params` / `initial_start`. `optimizer` replaces config.optim's
    AdamW (tests use plain SGD, whose update is the gradient itself)."""
    check_task(config)
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
    tx = optimizer or tx
    lengths = {"total_steps": int(config.total_steps), "steps_per_epoch": int(steps_per_epoch),
               "alpha_ramp_steps": int(lc.alpha_ramp_steps)}
    model = Blip(model_cfg)

    def make(rng, boxed, params=init_params, start=None):
        return build_state(rng, model_cfg, tx, use_momentum=lc.uses_itc,
                           queue_size=config.loss.queue_size,
                           use_id_queue=lc.use_image_ids, params=params, start=start,
                           boxed=boxed)

    # Logical axis names come from a (shape-only) random init, whatever the start params.
    abstract_boxed = jax.eval_shape(lambda r: make(r, True, None), jax.random.key(0))
    shardings = state_shardings(abstract_boxed, mesh)
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(lambda r: make(r, False, None), jax.random.key(0)), shardings)
    key = jax.random.key(config.seed)
    once = xla_options.one_shot()  # runs once: compiled faster, the same bits
    if init_params is None:
        state = jax.jit(lambda r: make(r, False, None), out_shardings=shardings,
                        compiler_options=once)(key)
    else:  # params as an argument, not a closure: no multi-GB constants in the program
        state = jax.jit(lambda r, p, s: make(r, False, p, s), out_shardings=shardings,
                        compiler_options=once)(key, init_params,
                                               init_start if lc.uses_itc else None)
    groups = parallel.batch_shards(mesh) if lc.itm_negatives == "local" else 1
    if lc.itm_negatives not in ("global", "local"):
        raise ValueError(f"config.loss.itm_negatives={lc.itm_negatives!r}: use global or local")
    def task_step(lengths: dict):
        """The task's step with the schedules built on the traced lengths (the optimiser's
        state does not depend on them: it is the one `tx` initialised)."""
        run_tx, run_schedule = optim.make_optimizer(config.optim, lengths["total_steps"],
                                                    lengths["steps_per_epoch"])
        run_tx = optimizer or run_tx
        if config.task == "vqa":
            return vqa_step.make_vqa_train_step(model, run_tx, lc.label_smoothing, run_schedule,
                                                mesh)
        if config.task == "nlvr":
            return nlvr_step.make_nlvr_train_step(model, run_tx, run_schedule)
        run_lc = dataclasses.replace(lc, alpha_ramp_steps=lengths["alpha_ramp_steps"])
        return make_train_step(model, run_tx, run_lc, run_schedule, mesh, groups)

    def train_step(state, batch, lengths):
        return task_step(lengths)(state, batch)

    batch_ndims = {"vqa": vqa_step.BATCH_NDIMS, "nlvr": nlvr_step.BATCH_NDIMS}.get(config.task)
    step_fn = LengthsBoundStep(jit_train_step(train_step, shardings, mesh,
                                              batch_ndims=batch_ndims, with_lengths=True),
                               lengths, mesh)
    return Setup(model, model_cfg, mesh, state, shardings, abstract, step_fn, schedule, lc)


def _finite(metrics: dict) -> bool:
    return all(math.isfinite(float(v)) for k, v in metrics.items() if k.startswith("loss"))


def initial_params(config: ml_collections.ConfigDict) -> Optional[dict]:
    """The parameters a run starts from: config.init_checkpoint (a blip_jax checkpoint, adapted
    to the configured variant), or a fresh init with ImageNet ViT / BERT weights loaded
    (config.init.vit / config.init.bert), or None (random init in `build`)."""
    target_cfg = BlipConfig.from_dict(config.model.to_dict())
    vit, bert = config.init.vit, config.init.bert
    if config.init_checkpoint:
        if vit or bert:
            raise ValueError("config.init_checkpoint and config.init.vit/bert are both set: "
                             "start from either a blip_jax checkpoint or ImageNet/BERT weights")
        source_cfg, params = model_checkpoint.load_model(config.init_checkpoint)
        # A pre-trained (tied) model becomes a captioner / retrieval model here.
        params = variants.adapt_params(
            params, source_cfg, target_cfg,
            new_params=lambda: blip_init_params(target_cfg, jax.random.key(config.seed)))
        model_checkpoint.check_params_fit(params, target_cfg,
                                          what=f"init_checkpoint {config.init_checkpoint}")
        return params
    if not (vit or bert):
        return None
    params, _, report = pretrained_init.init_from_pretrained(target_cfg, config.seed,
                                                             vit=vit or None, bert=bert or None)
    if jax.process_index() == 0:
        for line in report.lines() + report.eps_notes(target_cfg):
            print(f"init: {line}", flush=True)
    return params


def initial_start(config: ml_collections.ConfigDict) -> Optional[dict]:
    """What config.init_checkpoint carries besides params, for a run with ITC: its momentum
    encoders and ITC queues (the original's load_checkpoint restores every entry whose shape
    fits). Missing or mis-shaped entries start fresh (copy of params / random queues), with a
    printed line. The queue pointer restarts at 0."""
    if not config.init_checkpoint or not (config.loss.itc_weight > 0 or config.loss.itm_weight > 0):
        return None
    target_cfg = BlipConfig.from_dict(config.model.to_dict())
    extras = model_checkpoint.load_extras(config.init_checkpoint)
    start, notes = {}, []
    if "momentum" in extras:
        momentum = variants.adapt_momentum(extras["momentum"], target_cfg)
        want = variants.momentum_subtree(
            nn.meta.unbox(abstract_params(target_cfg)))
        if jax.tree_util.tree_structure(momentum) == jax.tree_util.tree_structure(want) and all(
                np.shape(a) == b.shape for a, b in zip(jax.tree_util.tree_leaves(momentum),
                                                       jax.tree_util.tree_leaves(want))):
            start["momentum"] = momentum
        else:
            notes.append("its momentum encoders do not fit the model: copying the online ones")
    else:
        notes.append("it has no momentum encoders: copying the online ones")
    queue_shape = (config.loss.queue_size, target_cfg.embed_dim)
    for name in ("image_queue", "text_queue"):
        if name in extras and tuple(np.shape(extras[name])) == queue_shape:
            start[name] = np.asarray(extras[name], np.float32)
        else:
            notes.append(f"no {name} of shape {queue_shape}: starting it random")
    if config.loss.use_image_ids and np.shape(extras.get("idx_queue", ())) == queue_shape[:1]:
        start["idx_queue"] = np.asarray(extras["idx_queue"]).astype(np.int32)
    if jax.process_index() == 0:
        for note in notes:
            print(f"init_checkpoint {config.init_checkpoint}: {note}", flush=True)
    return start


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    from blip_jax.train import input as train_input  # the data stack loads only when training

    check_config_keys(config)
    check_task(config)
    data = train_input.TrainData(config)
    steps_per_epoch = config.steps_per_epoch or max(1, data.num_examples // config.batch_size)
    if config.num_epochs or config.eval.every_epochs:
        config = config.copy_and_resolve_references()
    if config.num_epochs:
        config.total_steps = config.num_epochs * steps_per_epoch
    if config.eval.every_epochs:
        config.eval.every_steps = config.eval.every_epochs * steps_per_epoch
    if config.eval.keep_best and not config.eval.every_steps:
        raise ValueError(f"config.eval.keep_best={config.eval.keep_best!r} selects among "
                         f"evaluations during training: set eval.every_steps or every_epochs")
    setup = build(config, steps_per_epoch, init_params=initial_params(config),
                  init_start=initial_start(config))
    is_main = jax.process_index() == 0
    writer = MetricWriter(workdir, config.total_steps, enabled=is_main)
    ckpt = TrainCheckpointer(workdir, config.keep_checkpoints)
    state, iterator = setup.state, data.iterator()
    start = ckpt.latest_step()
    if start is not None:
        state, data_state = ckpt.restore(start, setup.abstract_state)
        if data_state is not None:
            try:
                iterator.set_state(data_state)
            except ValueError as e:  # grain: the checkpoint's data source is not this run's
                sources = [line for line in str(e).splitlines() if line.startswith("data source")]
                raise ValueError(
                    f"{ckpt.directory} holds step {start} of a run that read other data, so it "
                    f"cannot resume with config.data as given ({'; '.join(sources) or e}). Fix: resume with that run's "
                    f"data settings, or train in a new --workdir.") from e
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
    best = BestModel(os.path.join(workdir, "model_best"), config.eval.keep_best)
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
            eval_now = evaluator is not None and step % config.eval.every_steps == 0
            log_now = step % config.log_every_steps == 0 or step == config.total_steps or eval_now
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
                if eval_now:
                    metrics.update(evaluator(state.params))
                    best.update(step, metrics, state, setup.model_config, config.task)
                writer.write(step, metrics)
                writer.progress(step, metrics)
                last_logged = {"step": step, **metrics}
            if save_now:
                ckpt.save(step, state, iterator.get_state())
        ckpt.wait()
        if step == config.total_steps:
            export_model(os.path.join(workdir, "model"), state, setup.model_config,
                         config.task)
            if config.task == "vqa" and is_main:
                _export_answer_list(os.path.join(workdir, "model"), config, data.sources[0][0])
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpt.close()
        writer.close()
    return last_logged


class BestModel:
    """config.eval.keep_best: the model of the best evaluation so far, in `directory` with
    best.json ({"step", "metric", "value"}); a resumed run reads the record back."""

    def __init__(self, directory: str, metric: str):
        self.directory, self.metric, self.value = directory, metric, None
        record = os.path.join(directory, "best.json")
        if metric and os.path.exists(record):
            with open(record) as f:
                self.value = json.load(f)["value"]

    def update(self, step: int, metrics: dict, state: TrainState, model_config: BlipConfig,
               task: str) -> None:
        if not self.metric:
            return
        key = f"eval/{self.metric}"
        if key not in metrics:
            raise ValueError(f"config.eval.keep_best={self.metric!r} is not a metric of the "
                             f"evaluation; it has {sorted(k[5:] for k in metrics if k.startswith('eval/'))}")
        if self.value is not None and not metrics[key] > self.value:
            return
        self.value = metrics[key]
        export_model(self.directory, state, model_config, task)
        if jax.process_index() == 0:
            with open(os.path.join(self.directory, "best.json"), "w") as f:
                json.dump({"step": step, "metric": self.metric, "value": self.value}, f)


def _export_answer_list(model_dir: str, config: ml_collections.ConfigDict, dataset: str) -> None:
    """A VQA model keeps its training data's answer list next to its params, so rank inference
    (`python -m blip_jax.vqa`) finds the candidates it was trained to rank."""

    from blip_jax.data import vqa_builders
    from blip_jax.train import input as train_input

    answers = vqa_builders.load_answer_list(train_input.data_dir(config), dataset)
    with open(os.path.join(model_dir, "answer_list.json"), "w") as f:
        json.dump(answers, f)


def export_model(directory: str, state: TrainState, model_config: BlipConfig, task: str) -> None:
    """The trained parameters as a model checkpoint (what init_checkpoint, `evaluate`,
    `caption` and CapFilt read), with the momentum encoders and ITC queues as its extras (a
    fine-tuning run starts from them). Every process takes part (orbax writes collectively)."""
    tree = {"params": state.params}
    if state.momentum is not None:
        tree["extras"] = {"momentum": state.momentum, "image_queue": state.image_queue,
                          "text_queue": state.text_queue, "queue_ptr": state.queue_ptr}
        if state.id_queue is not None:
            tree["extras"]["idx_queue"] = state.id_queue
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    tree = jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
    model_checkpoint.save_model(directory, tree["params"], model_config, extras=tree.get("extras"),
                                source=f"blip_jax.train ({task})")
    if jax.process_index() == 0:
        print(f"model written to {directory}", flush=True)


def _should_stop(local_flag: bool) -> bool:
    """All processes must agree to stop at the same step (they save together)."""
    if jax.process_count() == 1:
        return local_flag
    flags = multihost_utils.process_allgather(np.array([local_flag], np.int32))
    return bool(np.any(flags))
