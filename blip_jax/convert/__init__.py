"""Weight import/export between blip_jax and PyTorch BLIP.

    load_hf(dir)             HF transformers directory (config.json + safetensors or .bin)
    load_original(path)      original-release .pth (config read off the tensor shapes)
    export_hf(params, ...)   an HF directory that transformers loads
    convert(src, dst)        either source -> a blip_jax checkpoint (orbax params + config)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Optional

import numpy as np

from blip_jax import checkpoint
from blip_jax.convert import mapping
from blip_jax.convert.importer import (ImportReport, MOMENTUM_MODULES, import_state_dict,
                                       infer_config)
from blip_jax.models.config import BlipConfig, TextConfig, VisionConfig

HF_ARCHITECTURES = {
    "BlipForConditionalGeneration": dict(text_encoder=False, text_decoder=True, itc_itm_heads=False),
    "BlipForImageTextRetrieval": dict(text_encoder=True, text_decoder=False, itc_itm_heads=True),
    "BlipForQuestionAnswering": dict(text_encoder=True, text_decoder=True, itc_itm_heads=False,
                                     decoder_context="question"),
}
EXPORT_NAMES = {"captioning": "BlipForConditionalGeneration",
                "retrieval": "BlipForImageTextRetrieval", "vqa": "BlipForQuestionAnswering"}


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading PyTorch .bin/.pth files needs torch: "
                          "pip install 'torch==2.13.0' (or install blip_jax[test])") from e
    return torch


def _torch_load(path: str) -> dict:
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    return obj


def _to_numpy(sd: Mapping) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if hasattr(v, "detach"):
            v = v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
        out[k] = np.asarray(v)
    return out


# -- HF transformers -------------------------------------------------------------------------

def config_from_hf(hf: Mapping, image_size: Optional[int] = None) -> BlipConfig:
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in HF_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(f"config.json names architectures {archs}; blip_jax converts "
                         f"{sorted(HF_ARCHITECTURES)}")
    v, t = hf.get("vision_config", {}), hf.get("text_config", {})
    vision = VisionConfig(
        image_size=image_size or v.get("image_size", 384), patch_size=v.get("patch_size", 16),
        width=v.get("hidden_size", 768), depth=v.get("num_hidden_layers", 12),
        num_heads=v.get("num_attention_heads", 12), mlp_dim=v.get("intermediate_size", 3072),
        layer_norm_eps=v.get("layer_norm_eps", 1e-5),
        init_std=v.get("initializer_range", 0.02))
    text = TextConfig(
        vocab_size=t.get("vocab_size", 30524), hidden_size=t.get("hidden_size", 768),
        num_layers=t.get("num_hidden_layers", 12), num_heads=t.get("num_attention_heads", 8),
        intermediate_size=t.get("intermediate_size", 3072),
        max_position_embeddings=t.get("max_position_embeddings", 512),
        layer_norm_eps=t.get("layer_norm_eps", 1e-12),
        # transformers' BlipTextConfig defaults (a training config sets its own)
        dropout_rate=t.get("hidden_dropout_prob", 0.0),
        attention_dropout_rate=t.get("attention_probs_dropout_prob", 0.0),
        init_std=t.get("initializer_range", 0.02))
    return BlipConfig(vision=vision, text=text, embed_dim=hf.get("image_text_hidden_size", 256),
                      **HF_ARCHITECTURES[arch])


def read_hf_state_dict(directory: str) -> dict[str, np.ndarray]:
    st = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    binf = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(st):
        from safetensors.numpy import load_file
        return load_file(st)
    if os.path.exists(index):
        from safetensors.numpy import load_file
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for name in files:
            sd.update(load_file(os.path.join(directory, name)))
        return sd
    if os.path.exists(binf):
        return _to_numpy(_torch_load(binf))
    raise FileNotFoundError(f"{directory}: no model.safetensors, model.safetensors.index.json or "
                            f"pytorch_model.bin; is this an HF transformers BLIP directory?")


def load_hf(directory: str, image_size: Optional[int] = None) -> tuple[BlipConfig, dict, ImportReport]:
    """HF transformers BLIP directory -> (config, params, report)."""
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} is missing: not an HF transformers model directory")
    with open(cfg_path) as f:
        config = config_from_hf(json.load(f), image_size)
    sd = read_hf_state_dict(directory)
    params, report = import_state_dict(sd, config, mapping.HF, source=directory)
    return config, params, report


def hf_config_dict(config: BlipConfig, architecture: str) -> dict:
    v, t = config.vision, config.text
    return {
        "architectures": [architecture], "model_type": "blip",
        "image_text_hidden_size": config.embed_dim,
        "vision_config": {"model_type": "blip_vision_model", "hidden_size": v.width,
                          "intermediate_size": v.mlp_dim, "num_hidden_layers": v.depth,
                          "num_attention_heads": v.num_heads, "image_size": v.image_size,
                          "patch_size": v.patch_size, "layer_norm_eps": v.layer_norm_eps,
                          "initializer_range": v.init_std},
        "text_config": {"model_type": "blip_text_model", "vocab_size": t.vocab_size,
                        "hidden_size": t.hidden_size, "num_hidden_layers": t.num_layers,
                        "num_attention_heads": t.num_heads, "intermediate_size": t.intermediate_size,
                        "max_position_embeddings": t.max_position_embeddings,
                        "layer_norm_eps": t.layer_norm_eps, "encoder_hidden_size": v.width,
                        "initializer_range": t.init_std,
                        "hidden_dropout_prob": t.dropout_rate,
                        "attention_probs_dropout_prob": t.attention_dropout_rate,
                        "bos_token_id": 30522, "pad_token_id": 0, "sep_token_id": 102},
    }


def export_hf(params: Mapping, config: BlipConfig, directory: str, task: str) -> None:
    """Writes an HF transformers directory for `task` ('captioning', 'retrieval' or 'vqa'):
    config.json + model.safetensors. A tied pre-training model exports its decoder view."""
    from safetensors.numpy import save_file
    if task not in EXPORT_NAMES:
        raise ValueError(f"task={task!r}: choose one of {sorted(EXPORT_NAMES)}")
    need = {"captioning": ("vision_model.", "text_decoder."),
            "retrieval": ("vision_model.", "text_encoder.", "vision_proj.", "text_proj.", "itm_head."),
            "vqa": ("vision_model.", "text_encoder.", "text_decoder.")}[task]
    if task in ("retrieval", "vqa") and not config.text_encoder:
        raise ValueError(f"{task} export needs the text encoder; this model has none")
    if task in ("captioning", "vqa") and not config.text_decoder:
        raise ValueError(f"{task} export needs the text decoder; this model has none")
    if task == "retrieval" and not config.itc_itm_heads:
        raise ValueError("retrieval export needs vision_proj/text_proj/itm_head; this model has none")
    sd = mapping.export_state_dict(params, mapping.HF, config.tie_encoder_decoder)
    # transformers re-ties the LM output layer to the word embeddings itself.
    sd = {k: np.ascontiguousarray(v) for k, v in sd.items()
          if k.startswith(need) and not k.startswith("text_decoder.cls.predictions.decoder.")}
    os.makedirs(directory, exist_ok=True)
    save_file(sd, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config_dict(config, EXPORT_NAMES[task]), f, indent=2)


# -- original release ----------------------------------------------------------------------------

def load_original(path_or_state_dict, config: Optional[BlipConfig] = None,
                  image_size: Optional[int] = None, momentum: bool = True):
    """Original-release checkpoint (a .pth path or its `model` state dict) ->
    (config, params, extras, report). `extras` holds what a pre-training/retrieval file carries
    besides the model: 'momentum' params (MOMENTUM_MODULES), 'image_queue' and 'text_queue'
    as [queue_size, embed_dim] rows, 'queue_ptr', 'idx_queue' [queue_size]."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        if not os.path.exists(source):
            raise FileNotFoundError(f"checkpoint file {source} does not exist")
        obj = _torch_load(source)
        sd = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    else:
        source, sd = "state dict", path_or_state_dict
    sd = _to_numpy(sd)
    if "visual_encoder.pos_embed" not in sd:
        raise ValueError(f"{source}: no 'visual_encoder.pos_embed'; not an original-release BLIP "
                         f"checkpoint (for an HF directory use load_hf)")
    if config is None:
        config = infer_config(sd, mapping.ORIGINAL)
    if image_size is not None:
        config = config.replace(vision=dataclasses.replace(config.vision, image_size=image_size))
    params, report = import_state_dict(sd, config, mapping.ORIGINAL, source=source)
    extras: dict = {}
    if momentum and any(k.startswith("visual_encoder_m.") for k in sd):
        extras["momentum"], _ = import_state_dict(sd, config, mapping.ORIGINAL, momentum=True,
                                                  source=source)
    for name in ("image_queue", "text_queue"):
        if name in sd:
            extras[name] = np.ascontiguousarray(sd[name].T.astype(np.float32))
    if "queue_ptr" in sd:
        extras["queue_ptr"] = np.asarray(sd["queue_ptr"]).reshape(()).astype(np.int32)
    if "idx_queue" in sd:
        extras["idx_queue"] = np.asarray(sd["idx_queue"]).reshape(-1).astype(np.int64)
    return config, params, extras, report


def convert(src: str, dst: str, image_size: Optional[int] = None) -> tuple[BlipConfig, ImportReport]:
    """Converts an HF directory or an original .pth into a blip_jax checkpoint at `dst`."""
    if os.path.isdir(src):
        config, params, report = load_hf(src, image_size)
        extras = None
    elif os.path.exists(src):
        config, params, extras, report = load_original(src, image_size=image_size)
    else:
        raise FileNotFoundError(f"{src} does not exist (expected an HF directory or a .pth file)")
    checkpoint.save_model(dst, params, config, extras=extras or None, source=os.path.abspath(src))
    return config, report


__all__ = ["EXPORT_NAMES", "HF_ARCHITECTURES", "ImportReport", "MOMENTUM_MODULES", "config_from_hf",
           "convert", "export_hf", "import_state_dict", "infer_config", "load_hf", "load_original"]

# Pre-training initialisation from ImageNet ViT / BERT weights (after the readers above it uses).
from blip_jax.convert.pretrained_init import (InitReport, apply_pretrained,  # noqa: E402
                                              convert_init, init_from_pretrained)

__all__ += ["InitReport", "apply_pretrained", "convert_init", "init_from_pretrained"]
