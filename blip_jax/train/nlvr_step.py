"""The NLVR2 fine-tuning step (config.task = "nlvr"): is the sentence true of the image pair?

Batch (global arrays, batch dimension sharded over data x fsdp; blip_jax/data/nlvr_pipeline.py):
    images [B, 2, H, W, 3] float32 (left, right), ids / mask [B, L] int32 ([CLS] first),
    label [B] int32 (1 = true).

As the original (models/blip_nlvr.py forward): one ViT pass over all 2B images, the
image-grounded encoder with [ENC] first and one cross-attention branch per image, the
classifier on the [ENC] state, plain (unsmoothed) cross-entropy averaged over the batch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from blip_jax import tokenizer as tok
from blip_jax.models.blip import Blip
from blip_jax.train.step import make_task_step

BATCH_NDIMS = {"images": 5, "ids": 2, "mask": 2, "label": 1}


def nlvr_logits(m: Blip, batch: dict, train: bool) -> jax.Array:
    """Class logits [B, 2] (float32) of `batch` (inside model.apply)."""
    pair = m.pair_image_features(batch["images"], train=train)
    return m.pair_logits(batch["ids"].at[:, 0].set(tok.ENC_ID), batch["mask"], pair, train=train)


def nlvr_loss(m: Blip, batch: dict, train: bool) -> tuple[jax.Array, dict]:
    """(mean cross-entropy, {"accuracy": percent of the batch classified right})."""
    logits = nlvr_logits(m, batch, train)
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = 100.0 * jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return loss, {"accuracy": accuracy}


def make_nlvr_train_step(model: Blip, tx: optax.GradientTransformation,
                         schedule: Callable) -> Callable:
    """Returns step(state, batch) -> (state, metrics); jit it with `step.jit_train_step`."""
    return make_task_step(model, tx, nlvr_loss, schedule, "nlvr")
