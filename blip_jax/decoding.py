"""Caption decoding with a key/value cache, under jit with static shapes.

The image cross-attention keys/values are computed once (prompt pass) and reused at every
step; the self-attention cache grows one slot per token. Output token arrays always have
`max_length` columns: the prompt (starting with [DEC]), the generated tokens, [SEP] where a
sequence ended, then padding (0).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax import tokenizer as tok
from blip_jax.models.blip import Blip


def prompt_ids(tokenizer: tok.BlipTokenizer, prompt: str = "") -> np.ndarray:
    """[DEC] followed by the prompt's tokens (no [SEP]): the decoder's prefix."""
    if not prompt.strip():
        return np.array([tok.DEC_ID], np.int32)
    ids, mask = tokenizer.encode([prompt], max_length=64, bos_id=tok.DEC_ID, add_eos=False)
    return ids[0, : int(mask[0].sum())]


def init_cache(model: Blip, params, context: jax.Array, max_length: int):
    """Zero decoding cache for a batch of `context` ([B, N, C] image tokens), `max_length` slots."""
    batch = context.shape[0]
    shapes = jax.eval_shape(
        lambda p, c: model.apply({"params": p}, jnp.zeros((batch, max_length), jnp.int32),
                                 jnp.arange(max_length)[None], c, method=Blip.decode_logits,
                                 mutable=["cache"])[1]["cache"], params, context)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _run(model: Blip, params, cache, ids, positions, context):
    logits, state = model.apply({"params": params, "cache": cache}, ids, positions, context,
                                method=Blip.decode_logits, mutable=["cache"])
    return logits[:, -1], state["cache"]


@functools.partial(jax.jit, static_argnames=("model", "max_length", "min_length"))
def greedy_decode(model: Blip, params, context: jax.Array, prefix: jax.Array, *,
                  max_length: int = 20, min_length: int = 0) -> jax.Array:
    """Greedy captions. context [B, N, C] image tokens; prefix [P] int32 ([DEC] + prompt).

    Returns int32 tokens [B, max_length]; `min_length` counts the prefix, as HF does.
    """
    batch, plen = context.shape[0], prefix.shape[0]
    cache = init_cache(model, params, context, max_length)
    ids = jnp.broadcast_to(prefix[None], (batch, plen)).astype(jnp.int32)
    logits, cache = _run(model, params, cache, ids, jnp.arange(plen)[None], context)
    tokens = jnp.zeros((batch, max_length), jnp.int32).at[:, :plen].set(ids)
    done = jnp.zeros((batch,), bool)

    def cond(state):
        _, length, done, _, _ = state
        return (length < max_length) & ~jnp.all(done)

    def body(state):
        tokens, length, done, cache, logits = state
        # [SEP] is forbidden until the sequence (prefix included) reaches min_length.
        logits = jnp.where((length < min_length) & (jnp.arange(logits.shape[-1]) == tok.SEP_ID),
                           -jnp.inf, logits)
        nxt = jnp.where(done, tok.PAD_ID, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, length))
        done = done | (nxt == tok.SEP_ID)
        logits, cache = _run(model, params, cache, nxt[:, None], jnp.full((1, 1), length), None)
        return tokens, length + 1, done, cache, logits

    tokens, *_ = jax.lax.while_loop(cond, body, (tokens, jnp.int32(plen), done, cache, logits))
    return tokens


def strip_and_decode(tokenizer: tok.BlipTokenizer, tokens: np.ndarray,
                     prefix_length: int) -> list[str]:
    """Caption strings without the [DEC]+prompt prefix, cut at [SEP]."""
    return tokenizer.batch_decode(np.asarray(tokens)[:, prefix_length:])


def caption_tokens_list(tokens: np.ndarray) -> list[list[int]]:
    """Per-row token ids up to and including [SEP] (padding dropped)."""
    out = []
    for row in np.asarray(tokens).tolist():
        end = row.index(tok.SEP_ID) + 1 if tok.SEP_ID in row else len(row)
        out.append([t for t in row[:end]])
    return out


__all__: Sequence[str] = ["caption_tokens_list", "greedy_decode", "init_cache", "prompt_ids",
                          "strip_and_decode"]
