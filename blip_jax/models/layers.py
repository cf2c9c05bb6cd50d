"""Building blocks shared by the vision and text towers.

Every parameter carries logical axis names so a train step can shard it by rules
(`blip_jax.parallel`): 'embed' (model width), 'heads' (flattened attention heads),
'mlp' (feed-forward hidden), 'vocab', 'pos' (position table rows). Parameters are float32;
`dtype` is the computation dtype.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

def normal_init(std: float):
    """BERT and ViT initialise weights with a truncated normal, std 0.02 at their widths (the
    config's init_std; small models need a larger one, see models/config.py)."""
    return nn.initializers.truncated_normal(stddev=std)


def dense(features: int, axes: tuple[str, str], name: str, dtype: Dtype, init_std: float,
          use_bias: bool = True):
    """nn.Dense whose kernel and bias carry logical axis names."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(normal_init(init_std), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def layer_norm(eps: float, name: str, dtype: Dtype):
    # Statistics in float32 whatever the compute dtype: bf16 variance is too coarse.
    return nn.LayerNorm(
        epsilon=eps,
        dtype=jnp.float32 if dtype == jnp.float32 else dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


gelu = functools.partial(nn.gelu, approximate=False)  # BERT and timm ViT use the exact erf form.


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """[B, L, H*Dh] -> [B, L, H, Dh]."""
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: Optional[jax.Array], dropout: nn.Module | None = None,
                          deterministic: bool = True) -> jax.Array:
    """Softmax attention over [B, L, H, Dh] inputs; `mask` is boolean, broadcastable to
    [B, H, Lq, Lk] (True = attend). Scores and softmax in float32. Returns [B, Lq, H*Dh]."""
    depth = q.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(depth))
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    return out.reshape(*out.shape[:2], -1)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per example with probability `rate`."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))
