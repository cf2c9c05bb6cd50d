"""ViT image encoder (pre-norm blocks, fused qkv, class token, learned positions)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from blip_jax.models import layers
from blip_jax.models.config import VisionConfig


class VitAttention(nn.Module):
    num_heads: int
    dtype: Any
    init_std: float
    chunk_bytes: int = 0  # layers.dot_product_attention's; 0: all heads at once

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        # One fused projection, output ordered [q | k | v], each head-major like the original.
        qkv = layers.dense(3 * width, ("embed", "heads"), "qkv", self.dtype, self.init_std)(x)
        q, k, v = (layers.split_heads(t, self.num_heads) for t in jnp.split(qkv, 3, axis=-1))
        out = layers.dot_product_attention(q, k, v, mask=None, chunk_bytes=self.chunk_bytes)
        return layers.dense(width, ("heads", "embed"), "proj", self.dtype, self.init_std)(out)


class VitBlock(nn.Module):
    config: VisionConfig
    drop_path: float
    deterministic: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        drop = layers.DropPath(self.drop_path)
        h = layers.layer_norm(c.layer_norm_eps, "norm1", self.dtype)(x)
        # Chunked attention on CPU only: on an accelerator the chunk loop would serialise what
        # runs in parallel there.
        chunk_mib = c.attention_chunk_mib if layers.on_cpu() else 0
        attn = VitAttention(c.num_heads, self.dtype, c.init_std, chunk_mib << 20, name="attn")
        x = x + drop(attn(h), self.deterministic)
        h = layers.layer_norm(c.layer_norm_eps, "norm2", self.dtype)(x)
        h = layers.dense(c.mlp_dim, ("embed", "mlp"), "fc1", self.dtype, c.init_std)(h)
        h = layers.dense(c.width, ("mlp", "embed"), "fc2", self.dtype, c.init_std)(layers.gelu(h))
        return x + drop(h, self.deterministic)


class VisionTransformer(nn.Module):
    """images [B, H, W, 3] (normalised, channels last) -> tokens [B, 1 + (H/p)*(W/p), width],
    all tokens after the final LayerNorm; token 0 is the class token."""

    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        c = self.config
        if images.shape[1:3] != (c.image_size, c.image_size):
            raise ValueError(
                f"images are {images.shape[1]}x{images.shape[2]} but the model is configured for "
                f"{c.image_size}x{c.image_size}; resize the images or convert the checkpoint to the "
                f"new resolution (position embeddings are interpolated on conversion)")
        x = nn.Conv(
            c.width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
            padding="VALID", dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(
                layers.normal_init(c.init_std), (None, None, None, "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            name="patch_embed")(images.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, c.width)
        cls = self.param("cls_token", nn.with_logical_partitioning(
            layers.normal_init(c.init_std), (None, None, "embed")), (1, 1, c.width))
        pos = self.param("pos_embed", nn.with_logical_partitioning(
            layers.normal_init(c.init_std), (None, "pos", "embed")), (1, c.num_tokens, c.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, c.width)).astype(x.dtype), x], 1)
        x = x + pos.astype(x.dtype)

        # Stochastic depth rises linearly from 0 at the first block to drop_path_rate at the last.
        rates = np.linspace(0.0, c.drop_path_rate, c.depth)
        for i in range(c.depth):
            block = VitBlock
            if i >= c.depth - c.remat_layers:
                block = nn.remat(VitBlock)
            x = block(c, float(rates[i]), not train, self.dtype, name=f"block_{i}")(x)
        return layers.layer_norm(c.layer_norm_eps, "norm", self.dtype)(x)


def resize_pos_embed(pos_embed: np.ndarray, new_grid: int) -> np.ndarray:
    """Resizes a [1, 1 + g*g, D] position table to [1, 1 + new_grid**2, D].

    The patch grid is interpolated bicubically exactly as PyTorch's
    `interpolate(mode='bicubic', align_corners=False)` does (cubic coefficient -0.75, clamped
    borders), so converted checkpoints match the original release's own resizing bit for bit
    up to float rounding; the class-token entry is kept as is.
    """
    pos_embed = np.asarray(pos_embed, np.float32)
    old_grid = int(round(np.sqrt(pos_embed.shape[1] - 1)))
    if old_grid * old_grid != pos_embed.shape[1] - 1:
        raise ValueError(f"position table of {pos_embed.shape[1]} rows is not 1 + a square grid")
    if old_grid == new_grid:
        return pos_embed
    grid = pos_embed[0, 1:].reshape(old_grid, old_grid, -1)
    w = _torch_bicubic_matrix(old_grid, new_grid)
    grid = np.einsum("ih,jw,hwd->ijd", w, w, grid.astype(np.float64)).astype(np.float32)
    return np.concatenate([pos_embed[:, :1], grid.reshape(1, new_grid * new_grid, -1)], axis=1)


def _torch_bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] weights of 1-D bicubic resampling with half-pixel centres."""

    def cubic(t):
        t = np.abs(t)
        return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                        np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))

    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        frac = src - base
        for off in range(-1, 3):
            m[i, min(max(base + off, 0), n_in - 1)] += cubic(off - frac)
    return m
