"""Device mesh, logical-axis sharding rules and global batches.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer
state sharded), `tensor` (model parallel over heads / MLP / vocab). Parameters name their
dimensions logically (see models/layers.py); RULES map those names to mesh axes. A mesh axis
that does not divide a dimension is dropped for that dimension (the dimension is replicated
along it), so any model runs on any mesh.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or None: replicated).
PARAM_RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("pos", None),
    ("proj", None),
    ("embed_out", None),
)
BATCH_AXES = ("data", "fsdp")  # the batch dimension of activations and inputs


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh from {'data': d, 'fsdp': f, 'tensor': t}; one entry may be -1 (fills the rest)."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(shape)}: at most one axis may be -1")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(f"mesh {dict(shape)} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"there are {len(devices)}; set config.mesh so the sizes multiply to "
                         f"the device count (one axis may be -1)")
    arr = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _spec_for(shape: Sequence[int], names: Sequence[str | None], mesh: Mesh,
              rules: Mapping[str, Any]) -> P:
    axes = []
    used: set[str] = set()
    for dim, name in zip(shape, names):
        mesh_axis = rules.get(name) if name else None
        if mesh_axis is None or mesh_axis in used or dim % mesh.shape[mesh_axis]:
            axes.append(None)
        else:
            axes.append(mesh_axis)
            used.add(mesh_axis)
    return P(*axes)


def param_shardings(boxed_abstract: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = PARAM_RULES) -> Any:
    """NamedShardings for a tree of nn.LogicallyPartitioned abstract params (unboxed tree
    structure). Leaves without axis names are replicated."""
    rule_map = dict(rules)

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.value
            return NamedSharding(mesh, _spec_for(value.shape, leaf.names, mesh, rule_map))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map(one, boxed_abstract,
                                  is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch (this host's rows) -> global jax.Arrays sharded on the batch
    axes. With several processes each contributes its contiguous slice of the global batch."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in local.items()}
