"""BLIP's three pre-training objectives as pure functions of arrays (REFERENCE §2).

Shapes: B batch, E embed_dim, Q queue size, L text length, V vocab. Features are
L2-normalised float32. Nothing here touches parameters: the train step composes these with
the model's forward passes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


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


def alpha_at(step: jax.Array, alpha: float, ramp_steps: int) -> jax.Array:
    """Distillation weight: alpha * min(1, step / ramp_steps) (ramp over the first 2 epochs)."""
    if ramp_steps <= 0:
        return jnp.float32(alpha)
    return alpha * jnp.minimum(1.0, step.astype(jnp.float32) / ramp_steps)
