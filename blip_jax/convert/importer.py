"""PyTorch BLIP state dicts (HF transformers or the original release) -> blip_jax params."""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np
from flax import linen as nn

from blip_jax.checkpoint import CheckpointMismatchError
from blip_jax.convert import mapping
from blip_jax.models.blip import abstract_params
from blip_jax.models.config import BlipConfig, TextConfig, VisionConfig
from blip_jax.models.vit import resize_pos_embed

# Buffers and bookkeeping tensors that carry no model parameters.
_IGNORED = re.compile(r"(^|\.)position_ids$|^queue_ptr$|^image_queue$|^text_queue$|^idx_queue$"
                      r"|^ptr_queue$|^text_decoder\.cls\.predictions\.decoder\.(weight|bias)$"
                      r"|^text_encoder\.pooler\.|^text_decoder\.bert\.pooler\.")


@dataclasses.dataclass
class ImportReport:
    """What a conversion did besides copying tensors."""
    interpolated: list[str] = dataclasses.field(default_factory=list)
    defaulted: list[str] = dataclasses.field(default_factory=list)
    deduplicated: int = 0
    ignored: list[str] = dataclasses.field(default_factory=list)


def infer_config(sd: Mapping[str, np.ndarray], layout: str) -> BlipConfig:
    """Reads the architecture off the tensor shapes of an original-release state dict (which
    carries no config). Heads are taken as width/64, the ViT-B/L and BERT-base convention."""
    if layout != mapping.ORIGINAL:
        raise ValueError("infer_config reads original-release state dicts; HF ones ship config.json")
    pos = sd["visual_encoder.pos_embed"]
    patch = sd["visual_encoder.patch_embed.proj.weight"]
    width = pos.shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("visual_encoder.blocks."))
    grid = int(round(np.sqrt(pos.shape[1] - 1)))
    vision = VisionConfig(image_size=grid * patch.shape[-1], patch_size=patch.shape[-1], width=width,
                          depth=depth, num_heads=max(1, width // 64),
                          mlp_dim=sd["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0])
    has_enc = any(k.startswith("text_encoder.") for k in sd)
    has_dec = any(k.startswith("text_decoder.") for k in sd)
    prefix = "text_encoder." if has_enc else "text_decoder.bert."
    words = sd[prefix + "embeddings.word_embeddings.weight"]
    hidden = words.shape[1]
    layers = 1 + max(int(k.split("encoder.layer.")[1].split(".")[0]) for k in sd
                     if k.startswith(prefix + "encoder.layer."))
    text = TextConfig(vocab_size=words.shape[0], hidden_size=hidden, num_layers=layers,
                      num_heads=max(1, hidden // 64),
                      intermediate_size=sd[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=sd[prefix + "embeddings.position_embeddings.weight"].shape[0])
    heads = "vision_proj.weight" in sd
    if "cls_head.0.weight" in sd:  # the NLVR2 model (model_base_nlvr.pth)
        merged = [int(k.split("encoder.layer.")[1].split(".")[0]) for k in sd
                  if ".crossattention.output.merge_layer." in k]
        return BlipConfig(vision=vision, text=text, text_decoder=False, itc_itm_heads=False,
                          image_pair=True, pair_merge_layer=min(merged, default=layers))
    tied = has_enc and has_dec and np.array_equal(
        sd["text_encoder.encoder.layer.0.crossattention.self.query.weight"],
        sd["text_decoder.bert.encoder.layer.0.crossattention.self.query.weight"])
    question = has_enc and has_dec and not tied and not heads
    return BlipConfig(vision=vision, text=text,
                      embed_dim=sd["vision_proj.weight"].shape[0] if heads else 256,
                      tie_encoder_decoder=bool(tied), text_encoder=has_enc, text_decoder=has_dec,
                      itc_itm_heads=heads, decoder_context="question" if question else "image")


# The momentum model of pre-training/retrieval files: separate copies of these modules, stored
# under the same names with an `_m` suffix (`visual_encoder_m.*`, `text_encoder_m.*`, ...).
MOMENTUM_MODULES = ("vision", "vision_proj", "text_encoder", "text_proj")


def momentum_config(config: BlipConfig) -> BlipConfig:
    """The config whose tree holds the momentum modules (no decoder, untied)."""
    return config.replace(tie_encoder_decoder=False, text_decoder=False)


def import_state_dict(sd: Mapping[str, np.ndarray], config: BlipConfig, layout: str, *,
                      momentum: bool = False, source: str = "state dict") -> tuple[dict, ImportReport]:
    """Builds blip_jax params for `config` from a flat PyTorch state dict.

    With `momentum=True` it reads the `*_m` copies instead and returns the MOMENTUM_MODULES
    subtree. Position embeddings are interpolated when the file's resolution differs from the
    config's. A state dict that does not fit raises CheckpointMismatchError naming the missing,
    unexpected and mis-shaped keys.
    """
    report = ImportReport()
    tied = config.tie_encoder_decoder and not momentum
    cfg = momentum_config(config) if momentum else config
    template = mapping.flatten(nn.meta.unbox(abstract_params(cfg)))
    if momentum:
        template = {p: s for p, s in template.items() if p[0] in MOMENTUM_MODULES}
    out, used, missing, wrong, differ = {}, set(), [], [], []
    for path, spec in template.items():
        key = mapping.torch_key(path, layout, tied)
        key = _momentum_key(key) if momentum else key
        if key not in sd:
            if path[0] == "temp":  # HF ports drop the temperature: start from the paper's 0.07.
                out[path] = np.asarray(config.temp_init, np.float32)
                report.defaulted.append("temp")
                continue
            missing.append(key)
            continue
        value = mapping.to_jax(path, np.asarray(sd[key], np.float32))
        used.add(key)
        if path[-1] == "pos_embed" and value.shape != tuple(spec.shape) \
                and value.shape[-1] == spec.shape[-1]:
            value = resize_pos_embed(value, config.vision.grid_size)
            report.interpolated.append(f"{key}: {tuple(sd[key].shape)} -> {value.shape}")
        if value.shape != tuple(spec.shape):
            # Both shapes in the file's (PyTorch) layout, the layout the key is named in.
            want = mapping.to_torch(path, np.broadcast_to(np.float32(0), tuple(spec.shape))).shape
            wrong.append(f"{key}: {tuple(np.shape(sd[key]))} in {source}, model wants {tuple(want)}")
            continue
        out[path] = value
        for dup in mapping.tied_duplicates(path, layout) if tied else []:
            if dup in sd:
                used.add(dup)
                if np.shape(sd[dup]) != np.shape(sd[key]) or not np.array_equal(
                        np.asarray(sd[dup], np.float32), np.asarray(sd[key], np.float32)):
                    # Keeping one copy would silently drop the other's weights.
                    differ.append(f"{dup} != {key}")
                else:
                    report.deduplicated += 1
    unexpected = []
    for key in sd:
        is_momentum_key = key.split(".")[0].endswith("_m")
        if key in used or is_momentum_key != momentum:
            continue
        if _IGNORED.search(key):
            report.ignored.append(key)
        else:
            unexpected.append(key)
    if missing or unexpected or wrong or differ:
        lines = [f"{source} does not fit the model configuration (vision width "
                 f"{config.vision.width}, depth {config.vision.depth}; text hidden "
                 f"{config.text.hidden_size}, {config.text.num_layers} layers; "
                 f"text_encoder={config.text_encoder}, text_decoder={config.text_decoder}, "
                 f"tied={tied}{', momentum copies' if momentum else ''}):"]
        lines += mismatch_lines((("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatch", wrong),
                                 ("tied copies that differ (is the file really tied?)", differ)))
        lines.append("Fix: pass the model config that matches the file (e.g. the right preset "
                     "and image size), or check that the file is a BLIP checkpoint.")
        raise CheckpointMismatchError("\n".join(lines))
    return mapping.unflatten(out), report


def mismatch_lines(sections) -> list[str]:
    """'  title (n): a, b, ...' for each non-empty (title, items) section, 20 items at most."""
    lines = []
    for title, items in sections:
        if items:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
    return lines


def _momentum_key(key: str) -> str:
    top, _, rest = key.partition(".")
    return f"{top}_m.{rest}" if rest else f"{top}_m"
