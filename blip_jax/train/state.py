"""The train state: one pytree holding everything a step reads and writes, every leaf sharded."""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from blip_jax import parallel
from blip_jax.models.blip import Blip
from blip_jax.models.config import BlipConfig
from blip_jax.models.variants import momentum_subtree


@flax.struct.dataclass
class TrainState:
    """step int32 []; params; momentum (EMA copies of the unimodal encoders and projections,
    or None when the task has no ITC); opt_state; image_queue/text_queue [Q, E] float32 and
    queue_ptr int32 [] (ITC queues); id_queue [Q] int32 (image ids of the queued features,
    retrieval fine-tuning; -1 = empty); rng uint32 [2]."""

    step: jax.Array
    params: Any
    momentum: Any
    opt_state: Any
    image_queue: Optional[jax.Array]
    text_queue: Optional[jax.Array]
    queue_ptr: Optional[jax.Array]
    id_queue: Optional[jax.Array]
    rng: jax.Array


def ema_update(momentum: Any, params: dict, decay: float) -> Any:
    """theta_m <- decay * theta_m + (1 - decay) * theta, over the momentum subtree."""
    return jax.tree_util.tree_map(lambda m, p: decay * m + (1.0 - decay) * p, momentum,
                                  momentum_subtree(params))


def _random_queue(rng: jax.Array, size: int, dim: int) -> jax.Array:
    q = jax.random.normal(rng, (size, dim), jnp.float32)
    return q / jnp.linalg.norm(q, axis=-1, keepdims=True)


def build_state(rng: jax.Array, config: BlipConfig, tx: optax.GradientTransformation, *,
                use_momentum: bool, queue_size: int, use_id_queue: bool,
                params: Optional[dict] = None, start: Optional[dict] = None,
                boxed: bool = False) -> TrainState:
    """A fresh state. `params`: start from these (a converted or pre-trained checkpoint)
    instead of random init. `start`: what else the checkpoint carries, as the original's
    load_checkpoint restores it: 'momentum' (the momentum subtree; default a copy of params),
    'image_queue' / 'text_queue' [queue_size, E], 'idx_queue' [queue_size] (default random
    unit vectors and -1 ids). `boxed`: keep the logical-axis boxes (for computing shardings
    under eval_shape)."""
    start = start or {}
    init_rng, queue_rng, state_rng = jax.random.split(rng, 3)
    if params is None:
        size = config.vision.image_size
        ids = jnp.zeros((1, 8), jnp.int32)
        params = Blip(config).init(init_rng, jnp.zeros((1, size, size, 3)), ids,
                                   jnp.ones_like(ids))["params"]
        params = flax.core.unfreeze(params)
        if not boxed:
            params = nn.meta.unbox(params)
    momentum = None
    image_queue = text_queue = queue_ptr = id_queue = None
    if use_momentum:
        momentum = jax.tree_util.tree_map(jnp.asarray,
                                          start.get("momentum") or momentum_subtree(params))
        k1, k2 = jax.random.split(queue_rng)
        image_queue = start.get("image_queue", _random_queue(k1, queue_size, config.embed_dim))
        text_queue = start.get("text_queue", _random_queue(k2, queue_size, config.embed_dim))
        image_queue, text_queue = jnp.asarray(image_queue), jnp.asarray(text_queue)
        queue_ptr = jnp.zeros((), jnp.int32)
        if use_id_queue:
            id_queue = jnp.asarray(start.get("idx_queue", jnp.full((queue_size,), -1)), jnp.int32)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, momentum=momentum,
                      opt_state=tx.init(params), image_queue=image_queue, text_queue=text_queue,
                      queue_ptr=queue_ptr, id_queue=id_queue,
                      rng=jax.random.key_data(state_rng))


def state_shardings(abstract_boxed_state: TrainState, mesh) -> TrainState:
    """NamedShardings for every leaf: params, momentum and optimizer moments by the logical
    rules; queues, step, rng replicated."""
    return parallel.param_shardings(abstract_boxed_state, mesh)
