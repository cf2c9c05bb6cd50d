"""Model checkpoints on disk: an orbax PyTree of the params plus `config.json` (the BlipConfig).

Layout of a checkpoint directory:
    config.json     {"model": BlipConfig.to_dict(), "source": where it came from}
    params/         orbax StandardCheckpointer tree of float32 params
    extras/         optional orbax tree: 'momentum' (the momentum encoders' params),
                    'image_queue' / 'text_queue' [Q, E], 'queue_ptr' [], 'idx_queue' [Q]
                    (written by training runs with ITC and by converting original .pth files;
                    fine-tuning starts its momentum model and queues from them)
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from blip_jax.models.blip import abstract_params
from blip_jax.models.config import BlipConfig
from flax import linen as nn


class CheckpointMismatchError(ValueError):
    """Params that do not fit the model: lists missing, unexpected and mis-shaped entries."""


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flat(v, name))
        else:
            out[name] = v
    return out


def check_params_fit(params: Mapping, config: BlipConfig, what: str = "checkpoint") -> None:
    """Raises CheckpointMismatchError naming every missing/unexpected key and wrong shape."""
    expected = _flat(nn.meta.unbox(abstract_params(config)))
    got = _flat(params)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k}: {tuple(np.shape(got[k]))} in {what}, model wants {tuple(expected[k].shape)}"
             for k in sorted(set(expected) & set(got))
             if tuple(np.shape(got[k])) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        lines = [f"{what} does not fit the model configuration "
                 f"(vision width {config.vision.width}, depth {config.vision.depth}, image "
                 f"{config.vision.image_size}px; text hidden {config.text.hidden_size}, "
                 f"{config.text.num_layers} layers; tied={config.tie_encoder_decoder}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        lines.append("Fix: use the model config the checkpoint was made with (see its "
                     "config.json), or convert it again with the intended config.")
        raise CheckpointMismatchError("\n".join(lines))


def save_model(directory: str, params: Mapping, config: BlipConfig,
               extras: Optional[Mapping] = None, source: str = "") -> None:
    """Writes params (and optional extras) with orbax and the config as JSON."""
    directory = os.path.abspath(directory)
    check_params_fit(params, config, what="params to save")
    os.makedirs(directory, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(directory, "params"), jax.tree_util.tree_map(np.asarray, params),
               force=True)
    if extras:
        ckptr.save(os.path.join(directory, "extras"), jax.tree_util.tree_map(np.asarray, extras),
                   force=True)
    ckptr.wait_until_finished()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model": config.to_dict(), "source": source}, f, indent=2)


def load_config(directory: str) -> BlipConfig:
    path = os.path.join(os.path.abspath(directory), "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no model checkpoint at {directory!r}: {path} is missing. Create one with "
            f"`python -m blip_jax.convert SRC {directory}` or by training.")
    with open(path) as f:
        return BlipConfig.from_dict(json.load(f)["model"])


def load_model(directory: str, with_extras: bool = False):
    """Returns (config, params) or (config, params, extras) read from `directory`."""
    config = load_config(directory)
    directory = os.path.abspath(directory)
    ckptr = ocp.StandardCheckpointer()
    params = ckptr.restore(os.path.join(directory, "params"))
    check_params_fit(params, config, what=f"checkpoint {directory}")
    if not with_extras:
        return config, params
    return config, params, load_extras(directory)


def load_extras(directory: str) -> dict:
    """The checkpoint's extras tree ({} when it has none)."""
    extras_dir = os.path.join(os.path.abspath(directory), "extras")
    if not os.path.exists(extras_dir):
        return {}
    return ocp.StandardCheckpointer().restore(extras_dir)
