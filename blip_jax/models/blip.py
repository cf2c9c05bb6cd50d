"""The BLIP model (MED): ViT + one BERT text transformer used four ways.

| method            | first token | attention     | cross-attn | output                 |
| text_embed        | [CLS]       | bidirectional | off        | normalised text_proj   |
| itm_logits        | [ENC]       | bidirectional | on         | itm_head on token 0    |
| lm_logits         | [DEC]       | causal        | on         | LM logits              |
| pair_logits       | [ENC]       | bidirectional | two images | cls_head on token 0    |

With `tie_encoder_decoder` the decoder *is* the encoder module called in causal mode with its
own self-attention (`decoder_attention`) and LM head: one copy of every shared parameter.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from blip_jax.models import layers
from blip_jax.models.bert import TextTransformer
from blip_jax.models.config import BlipConfig
from blip_jax.models.vit import VisionTransformer


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    # Same clamp as torch.nn.functional.normalize: x / max(||x||, eps).
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class Scalar(nn.Module):
    """One learnable scalar, created lazily (a setup-time param would be demanded by every
    apply, including the momentum model's, which has no temperature)."""

    init_value: float

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("value", nn.initializers.constant(self.init_value), ())


def _torch_linear_init(fan_in: int):
    # PyTorch's nn.Linear default (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)) for
    # weight and bias alike; the original's NLVR2 classifier is plain nn.Linear layers.
    bound = 1.0 / fan_in**0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class PairClassifier(nn.Module):
    """NLVR2 head: [ENC] state [B, hidden] -> dense -> ReLU -> dense -> logits [B, 2] (float32)."""

    hidden_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for name, features, axes in (("hidden", self.hidden_size, ("embed", "mlp")),
                                     ("out", 2, ("mlp", None))):
            init = _torch_linear_init(x.shape[-1])
            x = nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32, name=name,
                         kernel_init=nn.with_logical_partitioning(init, axes),
                         bias_init=nn.with_logical_partitioning(init, (axes[1],)))(x)
            if name == "hidden":
                x = nn.relu(x)
        return x.astype(jnp.float32)


class Blip(nn.Module):
    config: BlipConfig

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        self.vision = VisionTransformer(c.vision, dtype)
        if c.text_encoder:
            self.text_encoder = TextTransformer(
                c.text, cross_attention=True, decoder_self_attention=c.tie_encoder_decoder,
                lm_head=c.tie_encoder_decoder, dtype=dtype, image_pair=c.image_pair,
                pair_merge_layer=c.pair_merge_layer)
        if c.image_pair:
            self.cls_head = PairClassifier(c.text.hidden_size, dtype)
        if c.text_decoder and not c.tie_encoder_decoder:
            self.text_decoder = TextTransformer(c.text, cross_attention=True, lm_head=True, dtype=dtype)
        if c.itc_itm_heads:
            std = c.text.init_std
            self.vision_proj = layers.dense(c.embed_dim, ("embed", "proj"), "vision_proj", dtype, std)
            self.text_proj = layers.dense(c.embed_dim, ("embed", "proj"), "text_proj", dtype, std)
            self.itm_head = layers.dense(2, ("embed", None), "itm_head", dtype, std)
            self.temp = Scalar(c.temp_init)

    @property
    def _decoder(self) -> TextTransformer:
        return self.text_encoder if self.config.tie_encoder_decoder else self.text_decoder

    # -- unimodal ---------------------------------------------------------------------------
    def image_features(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images [B, H, W, 3] normalised -> image tokens [B, N, vision width]."""
        return self.vision(images, train=train)

    def image_embed(self, image_tokens: jax.Array) -> jax.Array:
        """image tokens [B, N, Dv] -> L2-normalised ITC features [B, embed_dim] (float32)."""
        return l2_normalize(self.vision_proj(image_tokens[:, 0]))

    def video_features(self, frames: jax.Array, train: bool = False) -> jax.Array:
        """frames [B, F, H, W, 3] normalised -> video tokens [B, F*N, vision width]: every frame
        through the ViT alone, the frames' tokens concatenated in frame order with no temporal
        embedding (the original's zero-shot video input to the image-grounded encoder)."""
        b, f = frames.shape[:2]
        tokens = self.image_features(frames.reshape(b * f, *frames.shape[2:]), train)
        return tokens.reshape(b, f * tokens.shape[1], tokens.shape[2])

    def video_embed(self, video_tokens: jax.Array, num_frames: int) -> jax.Array:
        """video tokens [B, F*N, Dv] -> L2-normalised ITC features [B, embed_dim] (float32): the
        mean over frames of each frame's projected (not yet normalised) [CLS] feature."""
        b, n = video_tokens.shape[:2]
        cls = video_tokens.reshape(b, num_frames, n // num_frames, -1)[:, :, 0]
        return l2_normalize(jnp.mean(self.vision_proj(cls).astype(jnp.float32), axis=1))

    def text_features(self, ids: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
        """Unimodal text encoder ([CLS] first): hidden states [B, L, hidden]."""
        return self.text_encoder(ids, mask, train=train)

    def text_embed(self, text_hidden: jax.Array) -> jax.Array:
        """text hidden [B, L, hidden] -> L2-normalised ITC features [B, embed_dim] (float32)."""
        return l2_normalize(self.text_proj(text_hidden[:, 0]))

    def temperature(self) -> jax.Array:
        """ITC temperature, clamped to [0.001, 0.5] as in the original."""
        return jnp.clip(self.temp(), 0.001, 0.5)

    # -- image-grounded -----------------------------------------------------------------------
    def multimodal_features(self, ids: jax.Array, mask: jax.Array, image_tokens: jax.Array,
                            image_mask: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
        """Image-grounded encoder (ids start with [ENC]): hidden states [B, L, hidden]."""
        return self.text_encoder(ids, mask, context=image_tokens, context_mask=image_mask,
                                 train=train)

    def itm_logits(self, ids: jax.Array, mask: jax.Array, image_tokens: jax.Array,
                   image_mask: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
        """ITM logits [B, 2] (float32): index 1 is 'match'. ids start with [ENC]."""
        hidden = self.multimodal_features(ids, mask, image_tokens, image_mask, train)
        return self.itm_head(hidden[:, 0]).astype(jnp.float32)

    def lm_logits(self, ids: jax.Array, mask: jax.Array, context: jax.Array,
                  context_mask: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
        """Image-grounded decoder (ids start with [DEC]): LM logits [B, L, vocab] (float32).

        `context` is the image tokens (or, for a VQA answer decoder, the question states)."""
        return self._decoder(ids, mask, context=context, context_mask=context_mask, causal=True,
                             return_logits=True, train=train)

    def lm_hidden(self, ids: jax.Array, mask: jax.Array, context: jax.Array,
                  context_mask: Optional[jax.Array] = None,
                  train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`lm_logits` stopped before the vocabulary projection: (states [B, L, hidden] after
        the LM head's transform, in the computation dtype; the tied word-embedding table
        [vocab, hidden]; the bias [vocab]). lm_logits = (states . table^T in the computation
        dtype) as float32 + bias; `losses.chunked_lm_loss` takes these three."""
        return self._decoder(ids, mask, context=context, context_mask=context_mask, causal=True,
                             return_lm_hidden=True, train=train)

    def decode_logits(self, ids: jax.Array, positions: jax.Array,
                      context: Optional[jax.Array] = None) -> jax.Array:
        """Incremental decoding with the 'cache' collection (mutable). ids [B, L] are the new
        tokens at `positions` [1, L]; pass `context` on the allocation and prompt calls and None
        on every later step. Returns LM logits [B, L, vocab] (float32)."""
        return self._decoder(ids, None, context=context, causal=True, decode=True,
                             positions=positions, return_logits=True)

    def pair_image_features(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """images [B, 2, H, W, 3] (left, right) -> (left tokens, right tokens), each [B, N, Dv],
        from one ViT pass over all 2B images as the original."""
        b = images.shape[0]
        tokens = self.image_features(images.reshape(2 * b, *images.shape[2:]), train)
        tokens = tokens.reshape(b, 2, *tokens.shape[1:])
        return tokens[:, 0], tokens[:, 1]

    def pair_logits(self, ids: jax.Array, mask: jax.Array, pair_tokens: tuple[jax.Array, jax.Array],
                    train: bool = False) -> jax.Array:
        """NLVR2: image-grounded encoder over an image pair (ids start with [ENC]) -> class
        logits [B, 2] (float32; class 1 = the sentence is true of the pair)."""
        hidden = self.text_encoder(ids, mask, context=pair_tokens, train=train)
        return self.cls_head(hidden[:, 0])

    # -- initialisation ------------------------------------------------------------------------
    def __call__(self, images: jax.Array, ids: jax.Array, mask: jax.Array,
                 train: bool = False) -> dict[str, jax.Array]:
        """Runs every path the config enables (used by `init` to create all parameters)."""
        c = self.config
        image_tokens = self.image_features(images, train)
        out = {"image_tokens": image_tokens}
        if c.image_pair:  # `images` stand for both sides of the pair
            out["pair_logits"] = self.pair_logits(ids, mask, (image_tokens, image_tokens), train)
            return out
        if c.text_encoder:
            text_hidden = self.text_features(ids, mask, train)
            out["multimodal"] = self.multimodal_features(ids, mask, image_tokens, train=train)
            if c.itc_itm_heads:
                out["image_embed"] = self.image_embed(image_tokens)
                out["text_embed"] = self.text_embed(text_hidden)
                out["itm_logits"] = self.itm_logits(ids, mask, image_tokens, train=train)
                out["temp"] = self.temperature()
        if c.text_decoder:
            context = out["multimodal"] if c.decoder_context == "question" else image_tokens
            out["lm_logits"] = self.lm_logits(ids, mask, context, train=train)
        return out


def init_params(config: BlipConfig, rng: jax.Array, text_length: int = 8,
                batch: int = 1) -> dict:
    """Random float32 parameters (unboxed) for `config`."""
    model = Blip(config)
    size = config.vision.image_size
    images = jnp.zeros((batch, size, size, 3), jnp.float32)
    ids = jnp.zeros((batch, text_length), jnp.int32)
    variables = model.init(rng, images, ids, jnp.ones_like(ids))
    return nn.meta.unbox(variables["params"])


def abstract_params(config: BlipConfig) -> dict:
    """Shapes/dtypes of the parameters with their logical-axis boxes, computing nothing."""
    model = Blip(config)
    size = config.vision.image_size

    def init(rng):
        ids = jnp.zeros((1, 8), jnp.int32)
        return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), ids, jnp.ones_like(ids))

    return jax.eval_shape(init, jax.random.key(0))["params"]
