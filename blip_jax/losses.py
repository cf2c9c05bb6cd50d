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


def itc_positive_targets(batch: int, queue: int, image_ids: Optional[jax.Array] = None,
                         id_queue: Optional[jax.Array] = None) -> jax.Array:
    """[B, B+Q] positive-pair targets with rows summing to 1.

    Pre-training: one-hot on the diagonal (queue columns are negatives). Retrieval
    fine-tuning: every column with the same image id (batch and id queue) is a positive."""
    if image_ids is None:
        return jnp.eye(batch, batch + queue, dtype=jnp.float32)
    all_ids = jnp.concatenate([image_ids, id_queue])
    pos = (image_ids[:, None] == all_ids[None, :]).astype(jnp.float32)
    return pos / jnp.sum(pos, axis=-1, keepdims=True)


def itc_loss(image_feat: jax.Array, text_feat: jax.Array, image_feat_m: jax.Array,
             text_feat_m: jax.Array, image_queue: jax.Array, text_queue: jax.Array,
             temp: jax.Array, alpha: jax.Array, image_ids: Optional[jax.Array] = None,
             id_queue: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
    """ITC with momentum encoders, queues and momentum distillation.

    image_feat, text_feat [B, E] online; *_m [B, E] momentum (no gradient); queues [Q, E].
    Returns (loss, aux) with aux['sim_i2t'], aux['sim_t2i'] [B, B+Q] (the online logits,
    which also drive ITM's hard-negative sampling).
    """
    image_feat_m = jax.lax.stop_gradient(image_feat_m)
    text_feat_m = jax.lax.stop_gradient(text_feat_m)
    text_all = jnp.concatenate([text_feat_m, jax.lax.stop_gradient(text_queue)], axis=0)
    image_all = jnp.concatenate([image_feat_m, jax.lax.stop_gradient(image_queue)], axis=0)
    sim_i2t = image_feat @ text_all.T / temp
    sim_t2i = text_feat @ image_all.T / temp
    sim_i2t_m = jax.lax.stop_gradient(image_feat_m @ text_all.T / temp)
    sim_t2i_m = jax.lax.stop_gradient(text_feat_m @ image_all.T / temp)
    positives = itc_positive_targets(image_feat.shape[0], image_queue.shape[0], image_ids, id_queue)
    loss_i2t = soft_cross_entropy(sim_i2t, itc_targets(sim_i2t_m, positives, alpha))
    loss_t2i = soft_cross_entropy(sim_t2i, itc_targets(sim_t2i_m, positives, alpha))
    return (loss_i2t + loss_t2i) / 2, {"sim_i2t": sim_i2t, "sim_t2i": sim_t2i}


def hard_negative_weights(sim: jax.Array, image_ids: Optional[jax.Array] = None) -> jax.Array:
    """Sampling weights [B, B] from the batch block of a similarity matrix: softmax + 1e-4,
    with the positive (the diagonal, or every same-id pair) set to 0."""
    batch = sim.shape[0]
    w = jax.nn.softmax(jax.lax.stop_gradient(sim[:, :batch]).astype(jnp.float32), axis=-1) + 1e-4
    if image_ids is None:
        same = jnp.eye(batch, dtype=bool)
    else:
        same = image_ids[:, None] == image_ids[None, :]
    return jnp.where(same, 0.0, w)


def sample_hard_negatives(rng: jax.Array, sim_i2t: jax.Array, sim_t2i: jax.Array,
                          image_ids: Optional[jax.Array] = None,
                          groups: int = 1) -> tuple[jax.Array, jax.Array]:
    """One negative image per text and one negative text per image, drawn with probability
    proportional to `hard_negative_weights`.

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
        w = jax.vmap(hard_negative_weights)(blocks, ids)  # ids None: an empty pytree
        pick = jax.random.categorical(key, jnp.log(w), axis=-1)  # [G, size]
        return (pick + offsets[:, None]).reshape(batch)

    return draw(rng_img, sim_t2i), draw(rng_txt, sim_i2t)


def itm_loss(logits_pos: jax.Array, logits_neg: jax.Array) -> jax.Array:
    """Cross-entropy over [B, 2] positive logits (label 1) and [2B, 2] negatives (label 0),
    averaged over all 3B pairs."""
    logp_pos = jax.nn.log_softmax(logits_pos.astype(jnp.float32), -1)[:, 1]
    logp_neg = jax.nn.log_softmax(logits_neg.astype(jnp.float32), -1)[:, 0]
    return -(jnp.sum(logp_pos) + jnp.sum(logp_neg)) / (logp_pos.shape[0] + logp_neg.shape[0])


def lm_loss(logits: jax.Array, ids: jax.Array, mask: jax.Array, label_smoothing: float = 0.1,
            ignore_prefix: int = 0) -> jax.Array:
    """Next-token cross-entropy with label smoothing, mean over target tokens.

    logits [B, L, V] at positions 0..L-1 predict ids 1..L-1; padding (mask 0) and the first
    `ignore_prefix` target tokens (a prompt such as 'a picture of') are excluded.
    Smoothing as torch's CrossEntropyLoss: (1-eps) * nll + eps * mean_v(-log p_v).
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets = ids[:, 1:]
    weight = mask[:, 1:].astype(jnp.float32)
    if ignore_prefix:
        weight = weight * (jnp.arange(targets.shape[1]) >= ignore_prefix)[None]
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    smooth = -jnp.mean(logp, axis=-1)
    per_token = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    return jnp.sum(per_token * weight) / jnp.maximum(jnp.sum(weight), 1.0)


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
