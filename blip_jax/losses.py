"""BLIP's three pre-training objectives as pure functions of arrays (REFERENCE §2).

Shapes: B batch, E embed_dim, Q queue size, L text length, V vocab. Features are
L2-normalised float32. Nothing here touches parameters: the train step composes these with
the model's forward passes.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def itc_targets(sim_m: jax.Array, positives: jax.Array, alpha: jax.Array) -> jax.Array:
    """Momentum-distillation targets: alpha * softmax(sim_m) + (1 - alpha) * positives, where
    `positives` [B, B+Q] rows sum to 1 (the diagonal, or same-image-id pairs normalised)."""
    return alpha * jax.nn.softmax(sim_m, axis=-1) + (1.0 - alpha) * positives


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-mean_i sum_j targets_ij log_softmax(logits)_ij."""
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


# Logit given to the in-batch ITC columns of other groups (itc_batch_groups > 1): finite, so
# that their zero targets times their log-probabilities stay 0, and exp() of it is exactly 0.
_MASKED_LOGIT = -1e9


def itc_batch_columns(batch: int, queue: int, groups: int = 1) -> jax.Array:
    """[B, B+Q] bool: the ITC columns each row sees. groups = 1: all of them. groups = N: the
    batch is N contiguous groups of B/N rows (the original's per-GPU batches); row i sees the
    batch columns of its own group and the whole queue (which the original gathers globally)."""
    if groups < 1 or batch % groups:
        raise ValueError(f"config.loss.itc_batch_groups={groups}: the batch of {batch} must split "
                         f"into that many equal groups (a positive divisor of the batch size)")
    group = jnp.arange(batch) // (batch // groups)
    in_batch = group[:, None] == group[None, :]
    return jnp.concatenate([in_batch, jnp.ones((batch, queue), bool)], axis=1)


def mask_other_groups(sim: jax.Array, groups: int, batch: Optional[int] = None,
                      rows: Optional[slice] = None) -> jax.Array:
    """ITC logits with the batch columns of other groups set to a vanishing logit (no-op for
    groups = 1): softmax and log_softmax over a row then equal those over its group + queue.
    sim is [B, B+Q], or the rows `rows` of it (then pass `batch` = B)."""
    if groups == 1:
        return sim
    batch = sim.shape[0] if batch is None else batch
    keep = itc_batch_columns(batch, sim.shape[1] - batch, groups)
    if rows is not None:
        keep = keep[rows]
    return jnp.where(keep, sim, jnp.asarray(_MASKED_LOGIT, sim.dtype))


def itc_positive_targets(batch: int, queue: int, image_ids: Optional[jax.Array] = None,
                         id_queue: Optional[jax.Array] = None, groups: int = 1) -> jax.Array:
    """[B, B+Q] positive-pair targets with rows summing to 1.

    Pre-training: one-hot on the diagonal (queue columns are negatives). Retrieval
    fine-tuning: every column with the same image id (batch and id queue) is a positive;
    with `groups` > 1 only the batch columns of the row's own group count (as the original's
    per-GPU idx_all = [local ids; id queue])."""
    if image_ids is None:
        return jnp.eye(batch, batch + queue, dtype=jnp.float32)
    all_ids = jnp.concatenate([image_ids, id_queue])
    pos = (image_ids[:, None] == all_ids[None, :]) & itc_batch_columns(batch, queue, groups)
    pos = pos.astype(jnp.float32)
    return pos / jnp.sum(pos, axis=-1, keepdims=True)


def itc_loss(image_feat: jax.Array, text_feat: jax.Array, image_feat_m: jax.Array,
             text_feat_m: jax.Array, image_queue: jax.Array, text_queue: jax.Array,
             temp: jax.Array, alpha: jax.Array, image_ids: Optional[jax.Array] = None,
             id_queue: Optional[jax.Array] = None, groups: int = 1) -> tuple[jax.Array, dict]:
    """ITC with momentum encoders, queues and momentum distillation.

    image_feat, text_feat [B, E] online; *_m [B, E] momentum (no gradient); queues [Q, E].
    `groups` (config.loss.itc_batch_groups): each row's in-batch columns and distillation
    targets are its own group's (`itc_batch_columns`), so the loss is the mean over groups of
    each group's loss alone with the queue. Returns (loss, aux) with aux['sim_i2t'],
    aux['sim_t2i'] [B, B+Q] (the online logits, other groups' columns masked).
    """
    image_feat_m = jax.lax.stop_gradient(image_feat_m)
    text_feat_m = jax.lax.stop_gradient(text_feat_m)
    text_all = jnp.concatenate([text_feat_m, jax.lax.stop_gradient(text_queue)], axis=0)
    image_all = jnp.concatenate([image_feat_m, jax.lax.stop_gradient(image_queue)], axis=0)
    sim_i2t = mask_other_groups(image_feat @ text_all.T / temp, groups)
    sim_t2i = mask_other_groups(text_feat @ image_all.T / temp, groups)
    sim_i2t_m = jax.lax.stop_gradient(mask_other_groups(image_feat_m @ text_all.T / temp, groups))
    sim_t2i_m = jax.lax.stop_gradient(mask_other_groups(text_feat_m @ image_all.T / temp, groups))
    positives = itc_positive_targets(image_feat.shape[0], image_queue.shape[0], image_ids, id_queue,
                                     groups)
    loss_i2t = soft_cross_entropy(sim_i2t, itc_targets(sim_i2t_m, positives, alpha))
    loss_t2i = soft_cross_entropy(sim_t2i, itc_targets(sim_t2i_m, positives, alpha))
    return (loss_i2t + loss_t2i) / 2, {"sim_i2t": sim_i2t, "sim_t2i": sim_t2i}


def negative_similarities(image_feat: jax.Array, text_feat: jax.Array, image_feat_m: jax.Array,
                          text_feat_m: jax.Array, temp: jax.Array,
                          source: str = "momentum") -> tuple[jax.Array, jax.Array]:
    """(sim_i2t, sim_t2i) [B, B] that ITM hard negatives are drawn from
    (config.loss.itm_negative_sim): "momentum" = online x momentum features (the original's
    pre-training, the batch block of its ITC logits); "online" = online x online (its
    retrieval fine-tuning, both negative_all_rank branches)."""
    if source == "momentum":
        txt, img = text_feat_m, image_feat_m
    elif source == "online":
        txt, img = text_feat, image_feat
    else:
        raise ValueError(f"config.loss.itm_negative_sim={source!r}: use 'momentum' or 'online'")
    sims = (image_feat @ txt.T / temp, text_feat @ img.T / temp)
    return jax.tree_util.tree_map(jax.lax.stop_gradient, sims)


def _same_pairs(batch: int, image_ids: Optional[jax.Array]) -> jax.Array:
    if image_ids is None:
        return jnp.eye(batch, dtype=bool)
    return image_ids[:, None] == image_ids[None, :]


def hard_negative_weights(sim: jax.Array, image_ids: Optional[jax.Array] = None,
                          floor: float = 1e-4) -> jax.Array:
    """Sampling weights [B, B] from the batch block of a similarity matrix: softmax + floor
    (config.loss.itm_negative_floor: 1e-4 in the original's pre-training, 0 in its retrieval
    fine-tuning), with the positive (the diagonal, or every same-id pair) set to 0."""
    batch = sim.shape[0]
    w = jax.nn.softmax(jax.lax.stop_gradient(sim[:, :batch]).astype(jnp.float32), axis=-1) + floor
    return jnp.where(_same_pairs(batch, image_ids), 0.0, w)


def hard_negative_log_weights(sim: jax.Array, image_ids: Optional[jax.Array] = None,
                              floor: float = 1e-4) -> jax.Array:
    """log(hard_negative_weights) (-inf for positives), the logits the sampler draws from.
    With floor 0 it is log_softmax itself, so negatives whose softmax underflows to 0 in
    float32 keep their (tiny) probability instead of leaving a row of zeros."""
    if floor > 0:
        return jnp.log(hard_negative_weights(sim, image_ids, floor))  # log(0) = -inf: positives
    batch = sim.shape[0]
    logw = jax.nn.log_softmax(jax.lax.stop_gradient(sim[:, :batch]).astype(jnp.float32), -1)
    return jnp.where(_same_pairs(batch, image_ids), -jnp.inf, logw)


def sample_hard_negatives(rng: jax.Array, sim_i2t: jax.Array, sim_t2i: jax.Array,
                          image_ids: Optional[jax.Array] = None, groups: int = 1,
                          floor: float = 1e-4) -> tuple[jax.Array, jax.Array]:
    """One negative image per text and one negative text per image, drawn with probability
    proportional to `hard_negative_weights` (with `floor`).

    `groups` > 1 samples within each of `groups` equal contiguous slices of the batch (the
    original's per-GPU sampling); 1 samples over the whole (global) batch.
    Returns (neg_image_for_text [B], neg_text_for_image [B]) as global batch indices.
    """
    batch = sim_i2t.shape[0]
    if batch % groups:
        raise ValueError(f"batch {batch} is not divisible into {groups} negative-sampling groups")
    size = batch // groups
    offsets = jnp.arange(groups) * size
    rng_img, rng_txt = jax.random.split(rng)

    def draw(key, sim):
        # sim [B, B+Q] -> per-group blocks [G, size, size]; index within the group's block.
        rows = sim[:, :batch].reshape(groups, size, batch)
        blocks = jnp.stack([rows[g, :, g * size:(g + 1) * size] for g in range(groups)])
        ids = None if image_ids is None else image_ids.reshape(groups, size)
        logw = jax.vmap(lambda b, i: hard_negative_log_weights(b, i, floor))(blocks, ids)
        pick = jax.random.categorical(key, logw, axis=-1)  # [G, size]; ids None: empty pytree
        return (pick + offsets[:, None]).reshape(batch)

    return draw(rng_img, sim_t2i), draw(rng_txt, sim_i2t)


def itm_loss(logits_pos: jax.Array, logits_neg: jax.Array) -> jax.Array:
    """Cross-entropy over [B, 2] positive logits (label 1) and [2B, 2] negatives (label 0),
    averaged over all 3B pairs."""
    logp_pos = jax.nn.log_softmax(logits_pos.astype(jnp.float32), -1)[:, 1]
    logp_neg = jax.nn.log_softmax(logits_neg.astype(jnp.float32), -1)[:, 0]
    return -(jnp.sum(logp_pos) + jnp.sum(logp_neg)) / (logp_pos.shape[0] + logp_neg.shape[0])


def lm_token_losses(logits: jax.Array, ids: jax.Array, mask: jax.Array,
                    label_smoothing: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """Per-token next-token cross-entropy with label smoothing and its weights.

    logits [B, L, V] at positions 0..L-1 predict ids 1..L-1. Returns (loss [B, L-1] float32,
    weight [B, L-1] float32: 1 for a target token, 0 for padding). Smoothing as torch's
    CrossEntropyLoss: (1-eps) * nll + eps * mean_v(-log p_v).
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    smooth = -jnp.mean(logp, axis=-1)
    per_token = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    return per_token, mask[:, 1:].astype(jnp.float32)


def lm_loss(logits: jax.Array, ids: jax.Array, mask: jax.Array, label_smoothing: float = 0.1,
            ignore_prefix: int = 0) -> jax.Array:
    """`lm_token_losses` averaged over target tokens; padding (mask 0) and the first
    `ignore_prefix` target tokens (a prompt such as 'a picture of') are excluded."""
    per_token, weight = lm_token_losses(logits, ids, mask, label_smoothing)
    if ignore_prefix:
        weight = weight * (jnp.arange(weight.shape[1]) >= ignore_prefix)[None]
    return jnp.sum(per_token * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _lm_target_weights(mask: jax.Array, ignore_prefix: int) -> jax.Array:
    """[B, L-1] float32: 1 for a target token of `lm_loss`, 0 for padding and the prefix."""
    weight = mask[:, 1:].astype(jnp.float32)
    if ignore_prefix:
        weight = weight * (jnp.arange(weight.shape[1]) >= ignore_prefix)[None]
    return weight


def chunked_lm_loss(hidden: jax.Array, kernel: jax.Array, bias: jax.Array, ids: jax.Array,
                    mask: jax.Array, label_smoothing: float = 0.1, ignore_prefix: int = 0,
                    chunk_tokens: int = 128, vocab_first: bool = True, mesh=None,
                    unroll: int | bool = 1) -> jax.Array:
    """`lm_loss` of logits = hidden . W + bias, without ever holding the [B, L, V] logits.

    hidden [B, L, D]: the decoder's states before the vocabulary projection (after the LM
    head's transform; computation dtype). kernel: the projection, [V, D] (`vocab_first`: the
    tied word-embedding table, as `Blip.lm_hidden` returns it) or [D, V] (a Dense kernel);
    float32 parameters, cast to hidden's dtype for the dot as nn.Embed.attend does. bias [V].
    Logits are (hidden . W in hidden's dtype) as float32 + bias, those of `Blip.lm_logits`.
    Positions 0..L-2 predict ids 1..L-1 (the last position's logits are never computed). The
    value equals `lm_loss(logits, ids, mask, label_smoothing, ignore_prefix)` up to float32
    summation order, and so do the gradients.

    Chunks hold about `chunk_tokens` tokens: max(1, chunk_tokens // B) positions of every
    row, so a chunk spans the batch and a batch sharded over devices stays sharded in every
    chunk; a chunk whose targets are all padding is skipped. Under differentiation the
    forward pass also forms each chunk's logit gradient and reduces it at once into
    dhidden, dW and dbias (a loss is differentiated once and its gradient is linear in the
    output cotangent, which the backward pass multiplies in): the matmul FLOPs of autodiff
    through materialised logits, no recomputation, no [B, L, V] array. Differentiate once
    (no higher-order derivatives).

    `mesh` (the train step's; optional): the batch is split into its data x fsdp shards and
    each shard's dW / dbias are accumulated on their own over the chunks and summed once at
    the end (one reduction per step, as through materialised logits, not one per chunk); the
    projection is gathered over fsdp once, outside the loop, and stays split over the vocabulary
    as the 'vocab' rule of `parallel.PARAM_RULES` shards it (softmax statistics are then
    reduced over the tensor axis). Without it XLA partitions the loop as it sees fit, correctly.
    `unroll`: lax.scan's (XLA's cost analysis counts a loop body once; unroll=True lets it
    see every chunk).
    """
    if not vocab_first:
        kernel = kernel.T
    if hidden.ndim != 3 or kernel.ndim != 2 or kernel.shape[1] != hidden.shape[-1]:
        raise ValueError(f"chunked_lm_loss: hidden {hidden.shape} [B, L, D] and kernel "
                         f"{kernel.shape} [V, D] do not fit")
    if chunk_tokens < 1:
        raise ValueError(f"chunked_lm_loss: chunk_tokens={chunk_tokens!r}, use >= 1")
    weight = _lm_target_weights(mask, ignore_prefix)
    scale = weight / jnp.maximum(jnp.sum(weight), 1.0)  # each target's share of the mean
    rows, positions = weight.shape
    per_chunk = min(positions, max(1, int(chunk_tokens) // rows))
    chunks = -(-positions // per_chunk)
    pad = chunks * per_chunk - positions
    shards = _LoopShardings.make(mesh, rows, kernel.shape[0])

    def blocks(x):  # [B, L-1, ...] -> [chunks, S, B/S, per_chunk, ...], the padding weight 0
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(shards.count, rows // shards.count, chunks, per_chunk, *x.shape[2:])
        return shards.constrain(jnp.moveaxis(x, 2, 0), "blocks")

    return _chunked_ce(blocks(hidden[:, :-1]), kernel, bias.astype(jnp.float32),
                       blocks(ids[:, 1:].astype(jnp.int32)), blocks(scale),
                       float(label_smoothing), shards, unroll)


class _LoopShardings:
    """Sharding hints of the chunk loop (hashable: a static argument of the custom VJP).
    count: S, the batch shards whose dW / dbias are accumulated apart (1 without a mesh)."""

    def __init__(self, mesh, count: int, vocab_axis):
        self.mesh, self.count, self.vocab_axis = mesh, count, vocab_axis

    @classmethod
    def make(cls, mesh, rows: int, vocab: int) -> "_LoopShardings":
        if mesh is None:
            return cls(None, 1, None)
        from blip_jax import parallel  # noqa: PLC0415 (keeps this module free of mesh code)
        count = parallel.batch_shards(mesh)
        vocab_axis = parallel._spec_for((vocab,), ("vocab",), mesh, dict(parallel.PARAM_RULES))[0]
        return cls(mesh, count if rows % count == 0 else 1, vocab_axis)

    def _key(self):
        return (self.mesh, self.count, self.vocab_axis)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _LoopShardings) and self._key() == other._key()

    def constrain(self, x: jax.Array, kind: str) -> jax.Array:
        """kind: 'blocks' [chunks, S, ...]; 'kernel' [V, D]; 'partial' [S, V] (db);
        'partial_t' [S, D, V] (dW transposed); 'logits' [S, B/S, C, V]."""
        if self.mesh is None:
            return x
        from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415

        from blip_jax import parallel  # noqa: PLC0415
        batch = parallel.BATCH_AXES if self.count > 1 else None
        spec = {"blocks": P(None, batch), "kernel": P(self.vocab_axis, None),
                "partial": P(batch, self.vocab_axis), "partial_t": P(batch, None, self.vocab_axis),
                "logits": P(batch, None, None, self.vocab_axis)}[kind]
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


def _chunk_terms(h, w, b, w_mean, b_mean, targets, scale, eps: float, shards: _LoopShardings,
                 with_grads: bool):
    """One chunk: h [S, R, C, D], w [V, D] (h's dtype), b [V] f32, w_mean [D] f32 and b_mean []
    (the vocabulary means of w and b), targets / scale [S, R, C]. Returns (sum of scale * token
    loss, and with_grads the logit gradient [S, R, C, V] f32)."""
    logits = shards.constrain(jnp.einsum("srcd,vd->srcv", h, w).astype(jnp.float32) + b, "logits")
    # As jax.nn.log_softmax: logp = shifted - log(sum(exp(shifted))), shifted = logits - max.
    top = jnp.max(logits, axis=-1, keepdims=True)
    shifted = logits - top
    exp = jnp.exp(shifted)
    total = jnp.sum(exp, axis=-1)
    target_shifted = jnp.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
    # mean_v logits = h . mean_v(w) + mean(b): a [T, D] product, not another pass over [T, V]
    # (equal up to float32 summation order; with bfloat16 states it is the mean of the exact
    # products, not of their bfloat16 roundings, i.e. within one bfloat16 ulp of a logit).
    mean_shifted = jnp.einsum("srcd,d->src", h.astype(jnp.float32), w_mean) + b_mean - top[..., 0]
    # -(1-eps) logp[target] - eps mean_v logp[v]: torch's CrossEntropyLoss(label_smoothing=eps)
    per_token = jnp.log(total) - (1.0 - eps) * target_shifted - eps * mean_shifted
    value = jnp.sum(per_token * scale)
    if not with_grads:
        return value, None
    # d token loss / d logits = softmax - (1-eps) onehot(target) - eps / V
    vocab = logits.shape[-1]
    hit = jnp.arange(vocab, dtype=targets.dtype) == targets[..., None]
    w = scale[..., None]
    dlogits = exp * (w / total[..., None]) - (jnp.where(hit, 1.0 - eps, 0.0) + eps / vocab) * w
    return value, dlogits


def _chunk_scan(h, w, b, targets, scale, eps: float, shards: _LoopShardings, unroll,
                with_grads: bool):
    """The loop over chunks ([chunks, S, R, C, ...] inputs). Returns (loss, dh [chunks, S, R,
    C, D] f32, dw [V, D] f32 (summed as [D, V], transposed once), db [V] f32), or (loss, None,
    None, None) without gradients.
    The first chunk is computed before the loop and starts the sums (no zero-filled [V, D]
    accumulator; a single chunk has no loop at all)."""
    wc = shards.constrain(w.astype(h.dtype), "kernel")
    w_mean, b_mean = jnp.mean(wc.astype(jnp.float32), axis=0), jnp.mean(b)
    # float32: dbias is one more row of the dW dot (the states with a column of ones appended),
    # not a separate pass over each chunk's [T, V] gradient. bfloat16 states keep the float32
    # sum: autodiff sums the float32 logit gradient, not its bfloat16 rounding.
    fold_db = h.dtype == jnp.float32

    def chunk(h_c, t_c, s_c):  # (loss, dh, dw, db) of one chunk: dw [S, D (+1), V], db [S, V]
        value, dlogits = _chunk_terms(h_c, wc, b, w_mean, b_mean, t_c, s_c, eps, shards,
                                      with_grads)
        if not with_grads:
            return value, None, None, None
        g = dlogits.astype(h.dtype)  # as autodiff of the cast logits: cotangent in h's dtype
        dh = jnp.einsum("srcv,vd->srcd", g, wc).astype(jnp.float32)
        # dW^T [S, D, V]: with the vocabulary minor, XLA:CPU's dot reads g [.., V] as it is
        # (dW [S, V, D] made it transpose g, the chunk's largest array, in every chunk); the
        # tokens flattened to one contracting dimension (as two, XLA transposed them in g).
        s, r, c, v = g.shape
        h_t = h_c.reshape(s, r * c, -1)
        if fold_db:
            h_t = jnp.concatenate([h_t, jnp.ones((s, r * c, 1), h_t.dtype)], axis=-1)
        dw = shards.constrain(jnp.einsum("stv,std->sdv", g.reshape(s, r * c, v),
                                         h_t).astype(jnp.float32), "partial_t")
        db = None if fold_db else shards.constrain(jnp.sum(dlogits, axis=(1, 2)), "partial")
        return value, dh, dw, db

    loss, dh0, dw, db = chunk(h[0], targets[0], scale[0])
    if h.shape[0] > 1:
        def body(carry, xs):
            def compute(carry):
                value, dh, dw, db = chunk(*xs)
                if not with_grads:
                    return (carry[0] + value,), jnp.zeros((0,), jnp.float32)
                return (carry[0] + value, shards.constrain(carry[1] + dw, "partial_t"),
                        None if db is None else shards.constrain(carry[2] + db, "partial")), dh

            def skip(carry):  # every target of the chunk is padding: nothing to add
                return carry, (jnp.zeros(xs[0].shape, jnp.float32) if with_grads
                               else jnp.zeros((0,), jnp.float32))

            return jax.lax.cond(jnp.any(xs[2] != 0), compute, skip, carry)

        carry = (loss, dw, db) if with_grads else (loss,)
        carry, dh_rest = jax.lax.scan(body, carry, (h[1:], targets[1:], scale[1:]),
                                      unroll=unroll)
        loss = carry[0]
        if with_grads:
            dw, db = carry[1], carry[2]
            dh0 = jnp.concatenate([dh0[None], dh_rest])
    elif with_grads:
        dh0 = dh0[None]
    if not with_grads:
        return loss, None, None, None
    dw = jnp.sum(dw, axis=0)
    if fold_db:
        dw, db = dw[:-1], dw[-1]
    else:
        db = jnp.sum(db, axis=0)
    return loss, dh0, dw.T, db


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _chunked_ce(h, w, b, targets, scale, eps: float, shards: _LoopShardings, unroll):
    return _chunk_scan(h, w, b, targets, scale, eps, shards, unroll, with_grads=False)[0]


def _chunked_ce_fwd(h, w, b, targets, scale, eps, shards, unroll):
    loss, dh, dw, db = _chunk_scan(h, w, b, targets, scale, eps, shards, unroll, with_grads=True)
    # The empty arrays carry the input dtypes (the float32 sums are cast back to them).
    dtypes = (jnp.zeros((0,), h.dtype), jnp.zeros((0,), w.dtype))
    return loss, (dh, dw, db, dtypes, targets, scale)


def _chunked_ce_bwd(eps, shards, unroll, res, g):
    dh, dw, db, (h_like, w_like), targets, scale = res
    float0 = np.zeros(targets.shape, jax.dtypes.float0)
    return ((g * dh).astype(h_like.dtype), (g * dw).astype(w_like.dtype), g * db, float0,
            jnp.zeros_like(scale))


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def sequence_lm_loss(logits: jax.Array, ids: jax.Array, mask: jax.Array,
                     label_smoothing: float = 0.1) -> jax.Array:
    """`lm_token_losses` SUMMED over each row's target tokens, no length normalisation: [B].
    The original's answer decoder loss (reduction='none'); its negation is the (smoothed)
    sequence log-likelihood that VQA's rank inference scores answers by."""
    per_token, weight = lm_token_losses(logits, ids, mask, label_smoothing)
    return jnp.sum(per_token * weight, axis=1)


def weighted_answer_loss(answer_losses: jax.Array, weights: jax.Array) -> jax.Array:
    """VQA: sum_i w_i L_i over every answer of the batch, divided by the number of questions.
    answer_losses / weights [B, A] (padding answers have weight 0)."""
    return jnp.sum(answer_losses * weights) / answer_losses.shape[0]


def enqueue(queue: jax.Array, ptr: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes `values` [B, ...] at rows ptr..ptr+B of `queue` [Q, ...]; returns (queue, ptr').
    Q must be a multiple of B (checked when the train state is built), so no write wraps."""
    queue = jax.lax.dynamic_update_slice_in_dim(queue, values.astype(queue.dtype), ptr, axis=0)
    return queue, (ptr + values.shape[0]) % queue.shape[0]


def alpha_at(step: jax.Array, alpha: float, ramp_steps) -> jax.Array:
    """Distillation weight: alpha * min(1, step / ramp_steps) (ramp over the first 2 epochs);
    alpha throughout when ramp_steps <= 0. ramp_steps: an int or a traced int32 scalar."""
    if isinstance(ramp_steps, (int, np.integer)) and ramp_steps <= 0:
        return jnp.float32(alpha)
    ramp = jnp.asarray(ramp_steps, jnp.float32)
    ramped = alpha * jnp.minimum(1.0, step.astype(jnp.float32) / jnp.maximum(ramp, 1.0))
    return jnp.where(ramp > 0, ramped, jnp.float32(alpha))
