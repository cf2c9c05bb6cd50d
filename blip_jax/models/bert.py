"""BERT-style text transformer of BLIP: post-LN, word + position embeddings (no token types),
per-layer optional cross-attention to image tokens, bidirectional or causal self-attention,
a key/value cache for incremental decoding and an LM head tied to the word embeddings.

Decoding uses the flax 'cache' collection: call once with `decode=True` on a [B, max_len]
dummy to allocate the cache, then with the prompt (which also stores the cross-attention
keys/values of the image, computed once), then one token at a time with
`encoder_states=None` (the cached cross keys/values are reused).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from blip_jax.models import layers
from blip_jax.models.config import TextConfig


class TextEmbeddings(nn.Module):
    config: TextConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.word_embeddings = nn.Embed(
            c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(
                layers.normal_init(c.init_std), ("vocab", "embed")))
        self.position_embeddings = nn.Embed(
            c.max_position_embeddings, c.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(
                layers.normal_init(c.init_std), ("pos", "embed")))
        self.norm = layers.layer_norm(c.layer_norm_eps, "norm", self.dtype)
        self.dropout = nn.Dropout(c.dropout_rate)

    def __call__(self, ids: jax.Array, positions: jax.Array, deterministic: bool) -> jax.Array:
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        return self.dropout(self.norm(x), deterministic=deterministic)

    def attend(self, x: jax.Array) -> jax.Array:
        """x [..., hidden] -> logits [..., vocab] against the word embedding table."""
        return self.word_embeddings.attend(x)

    def vocab_kernel(self) -> jax.Array:
        """The word embedding table [vocab, hidden] (float32): the LM head's projection."""
        return self.word_embeddings.embedding


class TextAttention(nn.Module):
    """Self- or cross-attention followed by dense, dropout, residual and post-LayerNorm."""

    config: TextConfig
    cross: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array], context: Optional[jax.Array],
                 deterministic: bool, decode: bool) -> jax.Array:
        c = self.config
        heads, width = c.num_heads, c.hidden_size
        q = layers.split_heads(layers.dense(width, ("embed", "heads"), "query", self.dtype, c.init_std)(x), heads)
        project_kv = lambda t: (
            layers.split_heads(layers.dense(width, ("embed", "heads"), "key", self.dtype, c.init_std)(t), heads),
            layers.split_heads(layers.dense(width, ("embed", "heads"), "value", self.dtype, c.init_std)(t), heads))

        if self.cross:
            if decode:
                k, v = self._cached_cross_kv(context, project_kv)
            else:
                k, v = project_kv(context)
        else:
            k, v = project_kv(x)
            if decode:
                k, v, mask = self._extend_self_cache(k, v)

        dropout = nn.Dropout(c.attention_dropout_rate)
        if k.shape[0] == q.shape[0]:
            out = layers.dot_product_attention(q, k, v, mask, dropout, deterministic)
        else:  # beam search: the beams of an image share its cached image keys/values
            out = _grouped_attention(q, k, v, mask, dropout, deterministic)
        out = layers.dense(width, ("heads", "embed"), "out", self.dtype, c.init_std)(out)
        out = nn.Dropout(c.dropout_rate)(out, deterministic=deterministic)
        return layers.layer_norm(c.layer_norm_eps, "norm", self.dtype)(out + x)

    def _cached_cross_kv(self, context, project_kv):
        # The image (or question) keys/values are fixed during decoding: compute them when the
        # context is given (allocation and prompt), reuse them when it is None (each new token).
        if context is not None:
            k, v = project_kv(context)
            ck = self.variable("cache", "cross_key", lambda: k)
            cv = self.variable("cache", "cross_value", lambda: v)
            ck.value, cv.value = k, v
            return k, v
        if not self.has_variable("cache", "cross_key"):
            raise ValueError("decoding step without cached image keys/values: run the prompt first")
        return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

    def _extend_self_cache(self, k, v):
        """Writes the new keys/values at the cache index; returns the whole cache and the causal
        mask of the new queries over it ([1, 1, L_new, max_len])."""
        initialised = self.has_variable("cache", "cached_key")
        ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        length = k.shape[1]
        max_len = ck.value.shape[1]
        if not initialised:
            # Allocation pass over a [B, max_len] dummy: plain causal attention, cache untouched.
            q_pos = jnp.arange(length)
            return k, v, (jnp.arange(length)[None, :] <= q_pos[:, None])[None, None]
        start = index.value
        ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, start, 0, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, start, 0, 0))
        index.value = start + length
        q_pos = start + jnp.arange(length)
        mask = jnp.arange(max_len)[None, :] <= q_pos[:, None]
        return ck.value, cv.value, mask[None, None]


def _grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
                       dropout: nn.Module, deterministic: bool) -> jax.Array:
    """Attention of q [B*G, Lq, H, D] to k/v [B, N, H, D]: each key/value row serves G
    consecutive query rows (the beams of one image). Folding the G rows into the query length
    reads each image's keys/values once per step instead of G times, and turns per-row
    matrix-vector products into small matrix products. Returns [B*G, Lq, H*D]."""
    b, lq = k.shape[0], q.shape[1]
    g = q.shape[0] // b
    if q.shape[0] != b * g:
        raise ValueError(f"{q.shape[0]} query rows do not group over {b} key/value rows")
    if mask is not None and mask.shape[0] == q.shape[0]:
        mask = mask[::g]  # the rows of a group are copies of one example: same mask
    if mask is not None and mask.shape[-2] != 1:
        raise ValueError("grouped attention needs a mask that does not depend on the query")
    out = layers.dot_product_attention(q.reshape(b, g * lq, *q.shape[2:]), k, v, mask, dropout,
                                       deterministic)
    return out.reshape(b * g, lq, -1)


class CrossAttentionBranch(nn.Module):
    """One image's branch of the NLVR2 cross-attention: query/key/value and its output dense,
    before dropout and the residual. x [B, L, hidden], context [B, N, C] -> [B, L, hidden]."""

    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: Optional[jax.Array],
                 deterministic: bool) -> jax.Array:
        c = self.config
        proj = lambda name, t: layers.split_heads(  # noqa: E731
            layers.dense(c.hidden_size, ("embed", "heads"), name, self.dtype, c.init_std)(t),
            c.num_heads)
        out = layers.dot_product_attention(
            proj("query", x), proj("key", context), proj("value", context), mask,
            nn.Dropout(c.attention_dropout_rate), deterministic)
        return layers.dense(c.hidden_size, ("heads", "embed"), "out", self.dtype, c.init_std)(out)


class PairCrossAttention(nn.Module):
    """Cross-attention to an image pair (the NLVR2 model): one branch per image, each with its
    own weights; the branch outputs are averaged or, with `merge`, concatenated and projected
    2*hidden -> hidden (no activation, as the original); then dropout, residual and the one
    shared post-LayerNorm."""

    config: TextConfig
    merge: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, masks: tuple, contexts: tuple,
                 deterministic: bool) -> jax.Array:
        c = self.config
        outs = [CrossAttentionBranch(c, self.dtype, name=f"branch_{i}")(
            x, contexts[i], masks[i], deterministic) for i in range(2)]
        if self.merge:
            h = layers.dense(c.hidden_size, ("mlp", "embed"), "merge", self.dtype, c.init_std)(
                jnp.concatenate(outs, axis=-1))
        else:
            h = (outs[0] + outs[1]) / 2
        h = nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
        return layers.layer_norm(c.layer_norm_eps, "norm", self.dtype)(h + x)


class TextLayer(nn.Module):
    """Self-attention, then (if an image is given) cross-attention, then the feed-forward block.

    `decoder_self_attention`: the layer holds a second, causal self-attention
    (`decoder_attention`) used when `causal=True`: the tied pre-training mode, where everything
    else in the layer is shared between encoder and decoder.
    `image_pair`: the context is a pair of images (tuple) and the cross-attention is a
    PairCrossAttention, whose branches are merged by a projection when `merge_pair`.
    """

    config: TextConfig
    cross_attention: bool
    decoder_self_attention: bool
    causal: bool
    decode: bool
    deterministic: bool
    dtype: Any = jnp.float32
    image_pair: bool = False
    merge_pair: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, context: Optional[jax.Array],
                 context_mask: Optional[jax.Array]) -> jax.Array:
        c = self.config
        self_name = "decoder_attention" if (self.causal and self.decoder_self_attention) else "attention"
        x = TextAttention(c, cross=False, dtype=self.dtype, name=self_name)(
            x, mask, None, self.deterministic, self.decode)
        if self.image_pair and context is not None:
            x = PairCrossAttention(c, self.merge_pair, self.dtype, name="crossattention")(
                x, context_mask or (None, None), context, self.deterministic)
        elif self.cross_attention and (context is not None or self.decode):
            x = TextAttention(c, cross=True, dtype=self.dtype, name="crossattention")(
                x, context_mask, context, self.deterministic, self.decode)
        h = layers.dense(c.intermediate_size, ("embed", "mlp"), "intermediate", self.dtype, c.init_std)(x)
        h = layers.dense(c.hidden_size, ("mlp", "embed"), "output", self.dtype, c.init_std)(layers.gelu(h))
        h = nn.Dropout(c.dropout_rate)(h, deterministic=self.deterministic)
        return layers.layer_norm(c.layer_norm_eps, "output_norm", self.dtype)(h + x)


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> tied word-embedding projection + bias."""

    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, embeddings: TextEmbeddings, project: bool = True):
        """Logits [..., vocab] (float32); project=False: (the transformed states [..., hidden]
        in the computation dtype, the tied projection [vocab, hidden], bias [vocab]), from
        which the logits are (states . table, in the computation dtype) as float32 + bias."""
        c = self.config
        x = layers.dense(c.hidden_size, ("embed", "embed_out"), "transform", self.dtype, c.init_std)(x)
        x = layers.layer_norm(c.layer_norm_eps, "transform_norm", self.dtype)(layers.gelu(x))
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), ("vocab",)), (c.vocab_size,))
        if not project:
            return x, embeddings.vocab_kernel(), bias
        return embeddings.attend(x).astype(jnp.float32) + bias


class TextTransformer(nn.Module):
    """ids [B, L] int32, mask [B, L] (1 = token) -> hidden states [B, L, hidden], or float32
    LM logits [B, L, vocab] with `return_logits=True` (needs `lm_head`), or with
    `return_lm_hidden=True` the LM head's inputs to the vocabulary projection (`LMHead` with
    project=False).

    `context` [B, N, C] turns cross-attention on (image-grounded modes); `causal` selects the
    decoder's causal self-attention. With `image_pair` (the NLVR2 encoder) `context` is a pair
    (left [B, N, C], right [B, N, C]) attended by two branches per layer, averaged in layers
    below `pair_merge_layer` and merged by a projection from it on.
    """

    config: TextConfig
    cross_attention: bool = True
    decoder_self_attention: bool = False
    lm_head: bool = False
    dtype: Any = jnp.float32
    image_pair: bool = False
    pair_merge_layer: int = 6

    @nn.compact
    def __call__(self, ids: jax.Array, mask: Optional[jax.Array] = None, *,
                 context: Optional[jax.Array] = None, context_mask: Optional[jax.Array] = None,
                 causal: bool = False, decode: bool = False, positions: Optional[jax.Array] = None,
                 return_logits: bool = False, return_lm_hidden: bool = False,
                 train: bool = False):
        c = self.config
        if positions is None:
            positions = jnp.arange(ids.shape[1])[None, :]
        embeddings = TextEmbeddings(c, self.dtype, name="embeddings")
        x = embeddings(ids, positions, deterministic=not train)
        if decode:
            attn_mask = None  # the self-attention cache builds the causal mask over its slots
        else:
            attn_mask = (jnp.ones_like(ids, bool) if mask is None else mask.astype(bool))[:, None, None, :]
            if causal:
                length = ids.shape[1]
                attn_mask = attn_mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
        ctx_mask = None
        as_bias = lambda m: None if m is None else m.astype(bool)[:, None, None, :]  # noqa: E731
        if self.image_pair and context_mask is not None:
            ctx_mask = tuple(as_bias(m) for m in context_mask)
        elif context is not None and context_mask is not None:
            ctx_mask = as_bias(context_mask)
        layer_cls = nn.remat(TextLayer) if c.remat else TextLayer
        for i in range(c.num_layers):
            x = layer_cls(c, self.cross_attention, self.decoder_self_attention, causal, decode,
                          not train, self.dtype, image_pair=self.image_pair,
                          merge_pair=i >= self.pair_merge_layer,
                          name=f"layer_{i}")(x, attn_mask, context, ctx_mask)
        if not (return_logits or return_lm_hidden):
            return x
        if not self.lm_head:
            raise ValueError("this text transformer has no LM head (lm_head=False)")
        return LMHead(c, self.dtype, name="lm_head")(x, embeddings, project=not return_lm_hidden)
