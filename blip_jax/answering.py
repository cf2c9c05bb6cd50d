"""VQA inference with the answer decoder: rank a fixed answer list, or generate free text.

The VQA model (BlipConfig(decoder_context="question")) encodes the question with the
image-grounded encoder ([ENC] first, cross-attending to the image tokens); the answer decoder
([DEC] first) cross-attends to those question states. Two ways to answer, as the original
(salesforce/BLIP models/blip_vqa.py) offers:

- `rank_answers` (the paper's): every candidate's first-token probability from [DEC] alone,
  the top k candidates re-scored by their whole label-smoothed sequence log-likelihood (minus the
  decoder's summed loss, smoothing 0.1 as the original's decoder applies it), the best wins.
  The question mask applies to the decoder's cross-attention.
- `generate_answers`: beam search (3 beams, max 10 tokens, min 1) with decoding.beam_search.
  The original generates with an all-ones question mask over questions padded to the longest in
  the batch; the states are trimmed the same way here, so the answers are the original's.

Shapes: Q questions, Lq question tokens, D hidden, N candidate answers, La answer tokens, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax import decoding, losses, tokenizer as tok
from blip_jax.models.blip import Blip

GENERATE_DEFAULTS = {"num_beams": 3, "max_length": 10, "min_length": 1}  # the original's


@dataclasses.dataclass(frozen=True)
class AnswerCandidates:
    """An answer list tokenised once: ids [N, La] ([DEC] first, [SEP] last, 0 padding to the
    longest answer, as the original pads the list) and mask [N, La]."""

    answers: tuple[str, ...]
    ids: np.ndarray
    mask: np.ndarray

    @classmethod
    def build(cls, answers: Sequence[str], tokenizer: tok.BlipTokenizer | None = None,
              max_tokens: int = 64) -> "AnswerCandidates":
        if not answers:
            raise ValueError("the answer list is empty: rank inference needs candidate answers")
        tokenizer = tokenizer or tok.BlipTokenizer()
        ids, mask = tokenizer.encode(list(answers), max_tokens, bos_id=tok.DEC_ID)
        longest = int(mask.sum(1).max())
        return cls(tuple(answers), ids[:, :longest], mask[:, :longest])

    def tokens(self, index: int) -> list[int]:
        """Candidate `index`'s ids without padding ([DEC] ... [SEP])."""
        return self.ids[index, : int(self.mask[index].sum())].tolist()


def question_states(model: Blip, params, images: jax.Array, question_ids: jax.Array,
                    question_mask: jax.Array, train: bool = False) -> jax.Array:
    """images [Q, H, W, 3] (or videos [Q, F, H, W, 3]: the frames' tokens concatenated, the
    paper's zero-shot video QA) + question ids/mask [Q, Lq] ([CLS] or [ENC] first) -> [Q, Lq, D]."""
    def fwd(m: Blip):
        if images.ndim == 5:
            image_tokens = m.video_features(images, train=train)
        else:
            image_tokens = m.image_features(images, train=train)
        ids = question_ids.at[:, 0].set(tok.ENC_ID)
        return m.multimodal_features(ids, question_mask, image_tokens, train=train)
    return model.apply({"params": params}, method=fwd)


encode_questions = jax.jit(question_states, static_argnames=("model", "train"))


@functools.partial(jax.jit, static_argnames=("model", "k", "label_smoothing"))
def rank_answers(model: Blip, params, states: jax.Array, question_mask: jax.Array,
                 answer_ids: jax.Array, answer_mask: jax.Array, *, k: int = 128,
                 label_smoothing: float = 0.1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The original's rank_answer. states [Q, Lq, D], question_mask [Q, Lq], answer_ids /
    answer_mask [N, La] ([DEC] first). k is clipped to N.

    Returns (best [Q] int32 index into the answers, top_ids [Q, k] candidate indices in
    first-token order, top_scores [Q, k] their sequence log-likelihoods)."""
    k = min(k, answer_ids.shape[0])
    num_q = states.shape[0]
    start = jnp.full((num_q, 1), tok.DEC_ID, jnp.int32)

    def decoder_logits(ids, mask, context, context_mask):
        return model.apply({"params": params}, ids, mask, context, context_mask,
                           method=Blip.lm_logits)

    first = decoder_logits(start, jnp.ones_like(start), states, question_mask)[:, 0]
    probs = jax.nn.softmax(first, axis=-1)[:, answer_ids[:, 1]]  # [Q, N]
    _, top_ids = jax.lax.top_k(probs, k)

    def one_question(args):
        state, qmask, ids = args  # [Lq, D], [Lq], [k]
        # The k answers share the question's cross-attention keys/values: one context row,
        # grouped over the k answer rows (models/bert.py _grouped_attention).
        logits = decoder_logits(answer_ids[ids], answer_mask[ids], state[None], qmask[None])
        return -losses.sequence_lm_loss(logits, answer_ids[ids], answer_mask[ids],
                                        label_smoothing)

    # One question at a time keeps the [k, La, V] logits, not [Q*k, La, V], in memory.
    scores = jax.lax.map(one_question, (states, question_mask, top_ids))
    best = jnp.take_along_axis(top_ids, jnp.argmax(scores, axis=1)[:, None], axis=1)[:, 0]
    return best, top_ids, scores


def trim_questions(states: np.ndarray | jax.Array, question_mask: np.ndarray) -> jax.Array:
    """Question states cut to the batch's longest question (the original pads a batch to its
    longest question and generates with an all-ones mask over that length)."""
    longest = max(1, int(np.asarray(question_mask).sum(1).max()))
    return states[:, :longest]


def generate_answers(model: Blip, params, states: jax.Array, question_mask: np.ndarray,
                     tokenizer: tok.BlipTokenizer | None = None, **options) -> tuple[list[str], np.ndarray]:
    """Beam-search answers (GENERATE_DEFAULTS unless `options` change them) for question
    states [Q, Lq, D]. Returns (answer strings, int32 tokens [Q, max_length], [DEC] first)."""
    options = {**GENERATE_DEFAULTS, "length_norm": "original", **options}
    tokenizer = tokenizer or tok.BlipTokenizer()
    prefix = jnp.asarray([tok.DEC_ID], jnp.int32)
    tokens = np.asarray(decoding.beam_search(model, params, trim_questions(states, question_mask),
                                             prefix, **options))
    return decoding.strip_and_decode(tokenizer, tokens, 1), tokens


__all__ = ["AnswerCandidates", "GENERATE_DEFAULTS", "encode_questions", "generate_answers",
           "question_states", "rank_answers", "trim_questions"]
