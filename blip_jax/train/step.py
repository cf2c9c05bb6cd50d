"""One jitted train step: ITC + ITM + LM from one batch, gradients, AdamW, momentum EMA and
the queue update.

Batch (global arrays, batch dimension sharded over data x fsdp):
    image [B, H, W, 3] float32, text_ids [B, L] int32 ([CLS] first), text_mask [B, L] int32,
    image_id [B] int32 (retrieval fine-tuning positives; ignored otherwise).

Gradient accumulation splits the batch into micro-batches without changing the objective:
ITC and ITM still see the whole batch (negatives and distillation targets over all of it).
It works in three passes (the GradCache idea): (1) without gradients, the image tokens and the
online/momentum features of every micro-batch; (2) per micro-batch, gradients of its share of
the loss with respect to the text-side parameters and to the (cached) image tokens, which the
hard negatives may take from any micro-batch; (3) per micro-batch, those image-token
gradients pulled back through the ViT.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from blip_jax import losses, parallel, tokenizer as tok
from blip_jax.models.blip import Blip
from blip_jax.train.state import TrainState, ema_update


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which objectives the task trains and how (read from config.loss)."""

    itc_weight: float = 1.0
    itm_weight: float = 1.0
    lm_weight: float = 1.0
    alpha: float = 0.4
    alpha_ramp_steps: int = 0
    momentum: float = 0.995
    momentum_train_mode: bool = True  # momentum encoders with dropout/drop-path (original)
    label_smoothing: float = 0.1
    use_image_ids: bool = False     # retrieval: same-id pairs are positives / not negatives
    itm_negatives: str = "global"   # or 'local': sample within each data shard
    itm_negative_sim: str = "momentum"  # or 'online' (the original's retrieval fine-tuning)
    itm_negative_floor: float = 1e-4    # added to the softmax (0.0 in retrieval fine-tuning)
    itc_batch_groups: int = 1       # ITC in-batch columns per group of rows (N = N GPUs)
    prompt_length: int = 0          # LM targets to skip (captioning prompt tokens)
    lm_chunk_tokens: int = 128      # > 0: losses.chunked_lm_loss, ~N tokens a chunk; 0: logits
    grad_accum_steps: int = 1

    def __post_init__(self):
        if not isinstance(self.lm_chunk_tokens, int) or self.lm_chunk_tokens < 0:
            raise ValueError(f"config.loss.lm_chunk_tokens={self.lm_chunk_tokens!r}: use an "
                             f"integer >= 0 (0 = materialised logits)")

    @property
    def uses_itc(self) -> bool:
        return self.itc_weight > 0 or self.itm_weight > 0


def _constrain(x: jax.Array, mesh) -> jax.Array:
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh, x.ndim))


def _features(m: Blip, images, ids, mask, mesh, train, with_itc: bool = True):
    """Online image tokens, ITC features and unimodal text features (None without ITC/ITM:
    a captioner may have no text encoder at all)."""
    image_tokens = _constrain(m.image_features(images, train=train), mesh)
    if not with_itc:
        return image_tokens, None, None
    text_hidden = _constrain(m.text_features(ids, mask, train=train), mesh)
    return image_tokens, m.image_embed(image_tokens), m.text_embed(text_hidden)


def _momentum_features(model: Blip, momentum, images, ids, mask, train: bool, rng):
    """ITC features of the momentum encoders. train=True runs them with dropout / drop-path
    as the original does (its momentum copies are submodules of a model in train mode)."""
    def fwd(m: Blip):
        return (m.image_embed(m.image_features(images, train=train)),
                m.text_embed(m.text_features(ids, mask, train=train)))
    feats = model.apply({"params": momentum}, method=fwd, rngs={"dropout": rng})
    return jax.tree_util.tree_map(jax.lax.stop_gradient, feats)


def _head_losses(m: Blip, lc: LossConfig, image_tokens, image_feat, text_feat, feats_m, batch,
                 negatives, state: TrainState, alpha, rows: Optional[slice], mesh, train):
    """ITC/ITM/LM for the batch rows `rows` (None = all). image_tokens [B, N, D] cover the
    WHOLE batch (ITM negatives may come from any row); image_feat/text_feat [rows, E] are the
    online features of the rows. Returns (weighted sum, per-loss dict) where each loss is
    this slice's share of the whole-batch mean, so slices add up to the full-batch loss."""
    ids, mask = batch["text_ids"], batch["text_mask"]
    total_rows = ids.shape[0]
    sl = rows or slice(0, total_rows)
    frac = (sl.stop - sl.start) / total_rows
    out = {}
    total = 0.0
    if lc.itc_weight > 0:
        image_ids = batch["image_id"] if lc.use_image_ids else None
        id_queue = state.id_queue if lc.use_image_ids else None
        # Rows of the ITC loss are independent given the momentum features: slice them.
        loss_i2t, loss_t2i = _itc_rows(image_feat, text_feat, feats_m, state, m.temperature(),
                                       alpha, image_ids, id_queue, sl, lc.itc_batch_groups)
        out["loss_itc"] = (loss_i2t + loss_t2i) / 2 * frac
        total = total + lc.itc_weight * out["loss_itc"]
    if lc.itm_weight > 0:
        neg_image, neg_text = negatives
        enc_ids = ids.at[:, 0].set(tok.ENC_ID)
        rows_ids, rows_mask = enc_ids[sl], mask[sl]
        pos = m.itm_logits(rows_ids, rows_mask, image_tokens[sl], train=train)
        neg_ids = jnp.concatenate([rows_ids, enc_ids[neg_text[sl]]])
        neg_mask = jnp.concatenate([rows_mask, mask[neg_text[sl]]])
        neg_imgs = jnp.concatenate([image_tokens[neg_image[sl]], image_tokens[sl]])
        neg = m.itm_logits(neg_ids, neg_mask, _constrain(neg_imgs, mesh), train=train)
        out["loss_itm"] = losses.itm_loss(pos, neg) * frac
        total = total + lc.itm_weight * out["loss_itm"]
    if lc.lm_weight > 0:
        dec_ids = ids[sl].at[:, 0].set(tok.DEC_ID)
        lm = _lm_loss(m, lc, dec_ids, mask[sl], image_tokens[sl], mesh, train)
        # Token-mean over the whole batch: weight this slice by its share of target tokens.
        out["loss_lm"] = lm * _token_share(mask, sl, lc.prompt_length)
        total = total + lc.lm_weight * out["loss_lm"]
    return total, out


def _lm_loss(m: Blip, lc: LossConfig, dec_ids, mask, image_tokens, mesh, train):
    """The captioning loss of the rows given: from materialised [B, L, V] logits
    (lm_chunk_tokens = 0), or chunked from the states before the vocabulary projection
    (`losses.chunked_lm_loss`: the same value and gradients, no [B, L, V] array)."""
    if lc.lm_chunk_tokens > 0:
        hidden, table, bias = m.lm_hidden(dec_ids, mask, image_tokens, train=train)
        return losses.chunked_lm_loss(hidden, table, bias, dec_ids, mask, lc.label_smoothing,
                                      lc.prompt_length, lc.lm_chunk_tokens, mesh=mesh)
    logits = m.lm_logits(dec_ids, mask, image_tokens, train=train)
    return losses.lm_loss(logits, dec_ids, mask, lc.label_smoothing, lc.prompt_length)


def _token_share(mask, sl, prompt_length):
    def count(mk):
        w = mk[:, 1:].astype(jnp.float32)
        if prompt_length:
            w = w * (jnp.arange(w.shape[1]) >= prompt_length)[None]
        return jnp.maximum(jnp.sum(w), 1.0)
    return count(mask[sl]) / count(mask)


def _itc_rows(image_feat, text_feat, feats_m, state, temp, alpha, image_ids, id_queue, sl,
              groups: int = 1):
    """(i2t, t2i) ITC losses averaged over rows `sl`; image_feat/text_feat are those rows'
    online features, the momentum features and queues cover the whole batch. `groups`
    (itc_batch_groups) masks, per global row, the batch columns of other groups."""
    image_feat_m, text_feat_m = feats_m
    text_all = jnp.concatenate([text_feat_m, state.text_queue])
    image_all = jnp.concatenate([image_feat_m, state.image_queue])
    batch, queue = text_feat_m.shape[0], state.image_queue.shape[0]
    pos = losses.itc_positive_targets(batch, queue, image_ids, id_queue, groups)[sl]

    def rows(sim):  # sim [rows of sl, B+Q] -> other groups' batch columns masked
        return losses.mask_other_groups(sim, groups, batch, sl)

    sim_i2t = rows(image_feat @ text_all.T / temp)
    sim_t2i = rows(text_feat @ image_all.T / temp)
    tgt_i2t = losses.itc_targets(rows(image_feat_m[sl] @ text_all.T / temp), pos, alpha)
    tgt_t2i = losses.itc_targets(rows(text_feat_m[sl] @ image_all.T / temp), pos, alpha)
    tgt_i2t, tgt_t2i = jax.lax.stop_gradient(tgt_i2t), jax.lax.stop_gradient(tgt_t2i)
    return losses.soft_cross_entropy(sim_i2t, tgt_i2t), losses.soft_cross_entropy(sim_t2i, tgt_t2i)


def _sample_negatives(lc: LossConfig, rng, image_feat, text_feat, feats_m, state, temp, batch,
                      groups):
    image_feat_m, text_feat_m = feats_m
    sim_i2t, sim_t2i = losses.negative_similarities(image_feat, text_feat, image_feat_m,
                                                    text_feat_m, temp, lc.itm_negative_sim)
    ids = batch["image_id"] if lc.use_image_ids else None
    return losses.sample_hard_negatives(rng, sim_i2t, sim_t2i, ids, groups,
                                        lc.itm_negative_floor)


def make_train_step(model: Blip, tx: optax.GradientTransformation, lc: LossConfig,
                    schedule: Callable, mesh=None, negative_groups: int = 1):
    """Returns step(state, batch) -> (state, metrics); jit it with shardings (see `jit_train_step`)."""

    def step_fn(state: TrainState, batch: dict):
        rng = jax.random.wrap_key_data(state.rng)
        rng, neg_rng, drop_rng, momentum_rng = jax.random.split(rng, 4)
        params = state.params
        momentum = ema_update(state.momentum, params, lc.momentum) if lc.uses_itc else None
        alpha = losses.alpha_at(state.step, lc.alpha, lc.alpha_ramp_steps)
        images, ids, mask = batch["image"], batch["text_ids"], batch["text_mask"]
        feats_m = (_momentum_features(model, momentum, images, ids, mask, lc.momentum_train_mode,
                                      momentum_rng) if lc.uses_itc else None)

        if lc.grad_accum_steps <= 1:
            def loss_fn(p):
                def fwd(m: Blip):
                    image_tokens, image_feat, text_feat = _features(m, images, ids, mask, mesh, True,
                                                                    lc.uses_itc)
                    negatives = None
                    if lc.itm_weight > 0:
                        negatives = _sample_negatives(lc, neg_rng, image_feat, text_feat, feats_m,
                                                      state, m.temperature(), batch,
                                                      negative_groups)
                    return _head_losses(m, lc, image_tokens, image_feat, text_feat, feats_m,
                                        batch, negatives, state, alpha, None, mesh, True)
                return model.apply({"params": p}, method=fwd, rngs={"dropout": drop_rng})

            (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        else:
            loss, parts, grads = _accumulated_grads(model, lc, params, state, batch, feats_m,
                                                    alpha, neg_rng, drop_rng, mesh,
                                                    negative_groups)

        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if "temp" in new_params:  # the original clamps the parameter itself every step
            new_params = {**new_params,
                          "temp": {"value": jnp.clip(new_params["temp"]["value"], 0.001, 0.5)}}
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state,
                                  momentum=momentum, rng=jax.random.key_data(rng))
        if lc.uses_itc:
            image_queue, ptr = losses.enqueue(state.image_queue, state.queue_ptr, feats_m[0])
            text_queue, _ = losses.enqueue(state.text_queue, state.queue_ptr, feats_m[1])
            id_queue = state.id_queue
            if id_queue is not None:
                id_queue, _ = losses.enqueue(id_queue, state.queue_ptr, batch["image_id"])
            new_state = new_state.replace(image_queue=image_queue, text_queue=text_queue,
                                          queue_ptr=ptr, id_queue=id_queue)
        metrics = {"loss": loss, **parts, "lr": schedule(state.step), "alpha": alpha,
                   "grad_norm": optax.global_norm(grads)}
        if "temp" in params:
            metrics["temp"] = jnp.clip(params["temp"]["value"], 0.001, 0.5)
        return new_state, metrics

    return step_fn


def _accumulated_grads(model: Blip, lc: LossConfig, params, state, batch, feats_m, alpha,
                       neg_rng, drop_rng, mesh, negative_groups):
    images, ids, mask = batch["image"], batch["text_ids"], batch["text_mask"]
    n = lc.grad_accum_steps
    total = images.shape[0]
    if total % n:
        raise ValueError(f"batch {total} is not divisible into {n} micro-batches")
    size = total // n
    vision_params = {"vision": params["vision"]}
    rest = {k: v for k, v in params.items() if k != "vision"}

    def vit(vp, imgs, key):
        return model.apply({"params": vp}, imgs, True, method=Blip.image_features,
                           rngs={"dropout": key})

    mb_keys = jax.random.split(drop_rng, n)
    # Pass 1: image tokens (no gradient) of every micro-batch, in order.
    tokens = jnp.concatenate([vit(vision_params, images[i * size:(i + 1) * size], mb_keys[i])
                              for i in range(n)])
    tokens = _constrain(jax.lax.stop_gradient(tokens), mesh)

    def feats(p, tk):
        def fwd(m: Blip):
            hidden = m.text_features(ids, mask, train=True)
            return m.image_embed(tk), m.text_embed(hidden), m.temperature()
        return model.apply({"params": p}, method=fwd, rngs={"dropout": drop_rng})

    negatives = None
    if lc.itm_weight > 0:
        image_feat, text_feat, temp = jax.lax.stop_gradient(feats(params, tokens))
        negatives = _sample_negatives(lc, neg_rng, image_feat, text_feat, feats_m, state, temp,
                                      batch, negative_groups)

    # Pass 2: per micro-batch, gradients wrt the non-ViT params and all image tokens.
    def slice_loss(rp, tk, i):
        sl = slice(i * size, (i + 1) * size)

        def fwd(m: Blip):
            image_feat = text_feat = None
            if lc.uses_itc:
                image_feat = m.image_embed(tk[sl])
                text_feat = m.text_embed(m.text_features(ids[sl], mask[sl], train=True))
            return _head_losses(m, lc, tk, image_feat, text_feat, feats_m, batch, negatives,
                                state, alpha, sl, mesh, True)
        return model.apply({"params": rp}, method=fwd, rngs={"dropout": mb_keys[i]})

    grad_rest = jax.tree_util.tree_map(jnp.zeros_like, rest)
    grad_tokens = jnp.zeros_like(tokens)
    loss, parts = 0.0, None
    for i in range(n):
        (l, p), (g_rest, g_tok) = jax.value_and_grad(slice_loss, argnums=(0, 1), has_aux=True)(
            rest, tokens, i)
        grad_rest = jax.tree_util.tree_map(jnp.add, grad_rest, g_rest)
        grad_tokens = grad_tokens + g_tok
        loss = loss + l
        parts = p if parts is None else jax.tree_util.tree_map(jnp.add, parts, p)

    # Pass 3: pull the image-token gradients back through the ViT, micro-batch by micro-batch.
    grad_vision = jax.tree_util.tree_map(jnp.zeros_like, vision_params)
    for i in range(n):
        sl = slice(i * size, (i + 1) * size)
        _, pull = jax.vjp(lambda vp: vit(vp, images[sl], mb_keys[i]), vision_params)
        (g,) = pull(grad_tokens[sl])
        grad_vision = jax.tree_util.tree_map(jnp.add, grad_vision, g)
    return loss, parts, {**grad_rest, **grad_vision}


def make_task_step(model: Blip, tx: optax.GradientTransformation, loss: Callable,
                   schedule: Callable, name: str) -> Callable:
    """The step of a fine-tuning task with one loss and no momentum model (VQA, NLVR2).
    `loss(m, batch, train)` runs inside model.apply and returns (loss, extra metrics); the
    metrics are loss, loss_<name>, the extras, lr and grad_norm. Returns step(state, batch) ->
    (state, metrics); jit it with `jit_train_step`."""

    def step_fn(state: TrainState, batch: dict):
        rng = jax.random.wrap_key_data(state.rng)
        rng, drop_rng = jax.random.split(rng)

        def loss_fn(p):
            return model.apply({"params": p}, method=lambda m: loss(m, batch, True),
                               rngs={"dropout": drop_rng})

        (value, extras), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1,
                                  params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, rng=jax.random.key_data(rng))
        metrics = {"loss": value, f"loss_{name}": value, **extras, "lr": schedule(state.step),
                   "grad_norm": optax.global_norm(grads)}
        return new_state, metrics

    return step_fn


PAIR_BATCH_NDIMS = {"image": 4, "text_ids": 2, "text_mask": 2, "image_id": 1}


def jit_train_step(step_fn, state_shardings, mesh, donate: bool = True,
                   batch_ndims: dict[str, int] | None = None, with_lengths: bool = False):
    """jax.jit with explicit shardings: state in/out by its rules, batch on the batch axes
    (`batch_ndims`: the task's batch fields and their ranks, image-text pairs by default),
    metrics replicated; the state is donated (updated in place). with_lengths: step_fn is
    step(state, batch, lengths) with `lengths` a dict of replicated int32 scalars (see
    `LengthsBoundStep`)."""
    batch_shardings = {k: parallel.batch_sharding(mesh, n)
                       for k, n in (batch_ndims or PAIR_BATCH_NDIMS).items()}
    in_shardings = (state_shardings, batch_shardings)
    if with_lengths:
        in_shardings += (parallel.replicated(mesh),)
    return jax.jit(step_fn, in_shardings=in_shardings,
                   out_shardings=(state_shardings, parallel.replicated(mesh)),
                   donate_argnums=(0,) if donate else ())


class LengthsBoundStep:
    """A jitted step(state, batch, lengths) called as step(state, batch). The run's lengths
    (total steps, steps per epoch, alpha ramp: what the schedules read) are arguments of the
    program, not constants in it, so runs of one recipe that differ only in their data's size
    (the bootstrap experiment's pre-training rows) lower to the same program and the persistent
    compilation cache serves all but the first."""

    def __init__(self, jitted, lengths: dict[str, int], mesh) -> None:
        self.jitted = jitted
        # Global (replicated) scalars: every process of a multi-host run passes the same ones.
        self.lengths = {k: jax.make_array_from_callback(
            (), parallel.replicated(mesh), lambda _, v=v: np.asarray(v, np.int32))
            for k, v in lengths.items()}

    def __call__(self, state, batch):
        return self.jitted(state, batch, self.lengths)

    def lower(self, state, batch):
        return self.jitted.lower(state, batch, self.lengths)

    def compile(self, state, batch) -> Callable:
        """The compiled program, called as compiled(state, batch) (benchmarks time it)."""
        compiled = self.lower(state, batch).compile()
        return lambda s, b: compiled(s, b, self.lengths)
