"""Name and layout mapping between blip_jax parameters and PyTorch BLIP state dicts.

Two PyTorch layouts exist (REFERENCE §5): the original release (`visual_encoder.blocks.N...`)
and HF transformers (`vision_model.encoder.layers.N...`). Text keys are the same in both.
Every blip_jax leaf maps to exactly one PyTorch key plus a transform (Linear weights are
transposed, conv kernels moved to HWIO), so import and export are the same table read both ways.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

ORIGINAL = "original"
HF = "hf"

Path = tuple[str, ...]


def _vision_key(rest: Path, layout: str) -> str:
    hf = layout == HF
    head = rest[0]
    if head == "patch_embed":
        return ("vision_model.embeddings.patch_embedding." if hf else "visual_encoder.patch_embed.proj.") \
            + _leaf(rest[-1])
    if head == "cls_token":
        return "vision_model.embeddings.class_embedding" if hf else "visual_encoder.cls_token"
    if head == "pos_embed":
        return "vision_model.embeddings.position_embedding" if hf else "visual_encoder.pos_embed"
    if head == "norm":
        return ("vision_model.post_layernorm." if hf else "visual_encoder.norm.") + _leaf(rest[-1])
    if head.startswith("block_"):
        n = head.split("_")[1]
        sub = rest[1:-1]
        names_hf = {("norm1",): "layer_norm1", ("norm2",): "layer_norm2", ("fc1",): "mlp.fc1",
                    ("fc2",): "mlp.fc2", ("attn", "qkv"): "self_attn.qkv",
                    ("attn", "proj"): "self_attn.projection"}
        names_orig = {("norm1",): "norm1", ("norm2",): "norm2", ("fc1",): "mlp.fc1",
                      ("fc2",): "mlp.fc2", ("attn", "qkv"): "attn.qkv", ("attn", "proj"): "attn.proj"}
        if hf:
            return f"vision_model.encoder.layers.{n}.{names_hf[sub]}.{_leaf(rest[-1])}"
        return f"visual_encoder.blocks.{n}.{names_orig[sub]}.{_leaf(rest[-1])}"
    raise KeyError(rest)


_ATTN_NAMES = {"query": "self.query", "key": "self.key", "value": "self.value",
               "out": "output.dense", "norm": "output.LayerNorm"}


def _text_key(rest: Path, prefix: str, lm_prefix: str) -> str:
    """rest: path inside a TextTransformer; prefix e.g. 'text_encoder.' or 'text_decoder.bert.'."""
    head = rest[0]
    leaf = _leaf(rest[-1])
    if head == "embeddings":
        sub = {"word_embeddings": "word_embeddings", "position_embeddings": "position_embeddings",
               "norm": "LayerNorm"}[rest[1]]
        return f"{prefix}embeddings.{sub}.{leaf}"
    if head == "lm_head":
        if rest[1] == "bias":
            return f"{lm_prefix}bias"
        sub = {"transform": "transform.dense", "transform_norm": "transform.LayerNorm"}[rest[1]]
        return f"{lm_prefix}{sub}.{leaf}"
    if head.startswith("layer_"):
        n = head.split("_")[1]
        block = rest[1]
        base = f"{prefix}encoder.layer.{n}."
        if block == "crossattention" and rest[2].startswith("branch_"):
            # NLVR2's two-image cross-attention: self0/self1 and output.dense0/dense1 per image,
            # output.merge_layer, one output.LayerNorm (the original's models/nlvr_encoder.py).
            i = rest[2].split("_")[1]
            sub = {"query": f"self{i}.query", "key": f"self{i}.key", "value": f"self{i}.value",
                   "out": f"output.dense{i}"}[rest[3]]
            return f"{base}{block}.{sub}.{leaf}"
        if block == "crossattention" and rest[2] == "merge":
            return f"{base}{block}.output.merge_layer.{leaf}"
        if block in ("attention", "crossattention"):
            return f"{base}{block}.{_ATTN_NAMES[rest[2]]}.{leaf}"
        sub = {"intermediate": "intermediate.dense", "output": "output.dense",
               "output_norm": "output.LayerNorm"}[block]
        return f"{base}{sub}.{leaf}"
    raise KeyError(rest)


def _leaf(name: str) -> str:
    return {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}[name]


def torch_key(path: Path, layout: str, tied: bool) -> str:
    """The PyTorch key holding blip_jax parameter `path` (a tuple of tree keys)."""
    top, rest = path[0], path[1:]
    if top == "vision":
        return _vision_key(rest, layout)
    if top in ("vision_proj", "text_proj", "itm_head"):
        return f"{top}.{_leaf(rest[-1])}"
    if top == "temp":
        return "temp"
    if top == "cls_head":  # NLVR2's nn.Sequential(Linear, ReLU, Linear)
        return f"cls_head.{ {'hidden': 0, 'out': 2}[rest[0]] }.{_leaf(rest[-1])}"
    lm_prefix = "text_decoder.cls.predictions."
    if top == "text_encoder":
        if tied and rest[0].startswith("layer_") and rest[1] == "decoder_attention":
            # The decoder's own causal self-attention in the tied pre-training model.
            return _text_key((rest[0], "attention") + rest[2:], "text_decoder.bert.", lm_prefix)
        return _text_key(rest, "text_encoder.", lm_prefix)
    if top == "text_decoder":
        return _text_key(rest, "text_decoder.bert.", lm_prefix)
    raise KeyError(path)


def tied_duplicates(path: Path, layout: str) -> list[str]:
    """Keys that hold a copy of a tied parameter in a PyTorch pre-training state dict (the
    decoder's view of the shared encoder tensor); they must equal the encoder's copy."""
    if path[0] != "text_encoder" or path[1] == "lm_head":
        return []
    rest = path[1:]
    if rest[0].startswith("layer_") and rest[1] in ("attention", "decoder_attention"):
        return []
    keys = [_text_key(rest, "text_decoder.bert.", "")]
    if rest == ("embeddings", "word_embeddings", "embedding"):
        keys.append("text_decoder.cls.predictions.decoder.weight")
    return keys


def to_jax(path: Path, value: np.ndarray) -> np.ndarray:
    """PyTorch tensor -> blip_jax layout."""
    if path[-1] == "kernel":
        if value.ndim == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
            return value.transpose(2, 3, 1, 0)
        return value.T
    return value


def to_torch(path: Path, value: np.ndarray) -> np.ndarray:
    """blip_jax layout -> PyTorch tensor."""
    if path[-1] == "kernel":
        if value.ndim == 4:
            return value.transpose(3, 2, 0, 1)
        return value.T
    return value


def flatten(tree: Mapping) -> dict[Path, object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            for sub, leaf in flatten(v).items():
                out[(k,) + sub] = leaf
        else:
            out[(k,)] = v
    return out


def unflatten(flat: Mapping[Path, object]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def path_str(path: Iterable[str]) -> str:
    return "/".join(path)


def export_state_dict(params: Mapping, layout: str, tied: bool,
                      extra: Callable[[Path, np.ndarray], dict] | None = None) -> dict[str, np.ndarray]:
    """blip_jax params -> flat PyTorch state dict (numpy). In tied mode the shared tensors are
    written under both encoder and decoder prefixes, as the original release stores them."""
    sd: dict[str, np.ndarray] = {}
    for path, value in flatten(params).items():
        arr = to_torch(path, np.asarray(value, np.float32))
        sd[torch_key(path, layout, tied)] = arr
        if tied:
            for dup in tied_duplicates(path, layout):
                sd[dup] = arr
    if "text_decoder.cls.predictions.bias" in sd:
        # The LM output layer is tied to the word embeddings and its bias to predictions.bias.
        key = "text_encoder.embeddings.word_embeddings.weight" if tied else \
            "text_decoder.bert.embeddings.word_embeddings.weight"
        sd["text_decoder.cls.predictions.decoder.weight"] = sd[key]
        sd["text_decoder.cls.predictions.decoder.bias"] = sd["text_decoder.cls.predictions.bias"]
    return sd
