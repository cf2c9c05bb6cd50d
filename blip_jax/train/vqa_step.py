"""The VQA fine-tuning step (config.task = "vqa"): the answer decoder's weighted loss.

Batch (global arrays, batch dimension sharded over data x fsdp; blip_jax/data/vqa_pipeline.py):
    image [B, H, W, 3] float32, question_ids / question_mask [B, Lq] int32 ([CLS] first),
    answer_ids / answer_mask [B, A, La] int32 ([CLS] first, [SEP] last; empty slots all 0),
    answer_weight [B, A] float32 (0 for empty slots).

As the original (models/blip_vqa.py forward, train=True): the question goes through the
image-grounded encoder with [ENC] first; its states are repeated once per answer; the decoder
reads each answer ([DEC] first) cross-attending to them under the question's padding mask; an
answer's loss is its label-smoothed cross-entropy SUMMED over tokens; the batch loss is
sum_i w_i L_i / B. The original packs a variable number of answers per question; the fixed A
slots with zero weights give the same loss with static shapes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from blip_jax import losses, parallel, tokenizer as tok
from blip_jax.models.blip import Blip
from blip_jax.train.step import make_task_step

BATCH_NDIMS = {"image": 4, "question_ids": 2, "question_mask": 2, "answer_ids": 3,
               "answer_mask": 3, "answer_weight": 2}


def vqa_loss(m: Blip, batch: dict, label_smoothing: float, train: bool, mesh=None) -> jax.Array:
    """The weighted answer loss of `batch` (inside model.apply)."""
    image_tokens = m.image_features(batch["image"], train=train)
    q_ids = batch["question_ids"].at[:, 0].set(tok.ENC_ID)
    q_mask = batch["question_mask"]
    states = m.multimodal_features(q_ids, q_mask, image_tokens, train=train)
    b, a, la = batch["answer_ids"].shape
    a_ids = batch["answer_ids"].reshape(b * a, la).at[:, 0].set(tok.DEC_ID)
    a_mask = batch["answer_mask"].reshape(b * a, la)
    # Each answer row reads its question's states: A consecutive rows per question.
    states = jnp.repeat(states, a, axis=0)
    if mesh is not None:
        states = jax.lax.with_sharding_constraint(states, parallel.batch_sharding(mesh, 3))
    logits = m.lm_logits(a_ids, a_mask, states, jnp.repeat(q_mask, a, axis=0), train=train)
    per_answer = losses.sequence_lm_loss(logits, a_ids, a_mask, label_smoothing).reshape(b, a)
    return losses.weighted_answer_loss(per_answer, batch["answer_weight"])


def make_vqa_train_step(model: Blip, tx: optax.GradientTransformation, label_smoothing: float,
                        schedule: Callable, mesh=None) -> Callable:
    """Returns step(state, batch) -> (state, metrics); jit it with `step.jit_train_step`."""
    return make_task_step(
        model, tx, lambda m, batch, train: (vqa_loss(m, batch, label_smoothing, train, mesh), {}),
        schedule, "vqa")
