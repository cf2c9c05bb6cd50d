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


def f32_accumulating_dot(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                         preferred_element_type=None) -> jax.Array:
    """lax.dot_general summed in float32 and rounded once to the inputs' dtype. For bfloat16 on
    XLA:CPU this is also the fast kernel: a bfloat16-out dot ran at 320-360 GFLOP/s against
    ~1,000 for bfloat16-in, float32-out (2048^3, 2-core Zen 5 with AVX512-BF16)."""
    out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                              preferred_element_type=jnp.float32)
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


def on_cpu() -> bool:
    """Whether programs are traced for XLA:CPU, where the model takes its CPU-only choices
    (cpu_bf16, the ViT's attention chunks)."""
    return jax.default_backend() == "cpu"


def cpu_bf16(dtype: Dtype) -> bool:
    """Whether bfloat16 products take float32 accumulation explicitly (f32_accumulating_dot):
    on CPU only. GPU/TPU dots already sum bfloat16 in float32, and there the explicit form would
    make the backward pass's matmuls float32."""
    return jnp.dtype(dtype) == jnp.bfloat16 and on_cpu()


def dense(features: int, axes: tuple[str, str], name: str, dtype: Dtype, init_std: float,
          use_bias: bool = True):
    """nn.Dense whose kernel and bias carry logical axis names."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        dot_general=f32_accumulating_dot if cpu_bf16(dtype) else None,
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
                          deterministic: bool = True, chunk_bytes: int = 0) -> jax.Array:
    """Softmax attention over [B, L, H, Dh] inputs; `mask` is boolean, broadcastable to
    [B, H, Lq, Lk] (True = attend). Scores and softmax in float32. Returns [B, Lq, H*Dh].

    `chunk_bytes` > 0 (no mask, no dropout): the heads go through a few at a time, as many as
    keep a chunk's float32 scores [B, n, Lq, Lk] within that many bytes. The whole batch's
    scores at 384 px (577 tokens, batch 8: 128 MB a layer) stream through memory three times;
    a chunk that stays in cache made the base ViT's attention ~1.7x faster on a Zen 5 core
    (benchmarks/vit_forward.py). Chunks of heads, not of examples: the batch may be sharded
    over devices, and a loop over it would gather it onto each (8 fake CPU devices: 8x slower).
    Each (example, head)'s ops are the same, so are its values (tests/test_vit_attention_chunks.py);
    the gradient is the same function, its kernels may sum in another order (float32 rounding)."""
    if chunk_bytes > 0:
        if mask is not None or dropout is not None:
            raise ValueError("chunked attention takes no mask and no dropout")
        per_head = 4 * q.shape[0] * q.shape[1] * k.shape[1]
        heads = max(1, chunk_bytes // per_head)
        if heads < q.shape[2]:
            one = lambda t: dot_product_attention(t[0][:, :, None], t[1][:, :, None], t[2][:, :, None], None)
            out = jax.lax.map(one, tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v)), batch_size=heads)
            return jnp.moveaxis(out, 0, 2).reshape(*q.shape[:2], -1)  # [H, B, Lq, Dh] -> [B, Lq, H*Dh]
    depth = q.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(depth))
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32 if cpu_bf16(v.dtype) else None).astype(v.dtype)
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
