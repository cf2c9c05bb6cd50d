"""Initialisation for pre-training from ImageNet ViT and BERT weights, as the original release
starts (REFERENCE §8): the ViT from DeiT-B/16 (ViT-B) or ViT-L/16 in21k (ViT-L), the text
encoder and the decoder (its own self-attention too) from bert-base-uncased.

    apply_pretrained(params, config, vit=PATH, bert=PATH) -> (params, config, InitReport)
    init_from_pretrained(config, seed, vit=..., bert=...)    fresh random init, then the above
    convert_init(dst, preset, vit=..., bert=...)             a blip_jax checkpoint to pre-train from

Sources are read from local disk; nothing is downloaded.
- ViT (`vit=`): an HF transformers directory (ViTModel, DeiTModel, ViT/DeiTForImageClassification
  (WithTeacher): config.json + safetensors or pytorch_model.bin; pooler and heads ignored); a
  timm-layout state dict (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.{norm1,
  attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`) as a .pth/.bin (bare, or under
  'model' as DeiT's torch-hub files, or 'state_dict'), a .safetensors file or a timm hub
  directory; or an .npz in the layout of Google's original JAX ViT (`embedding`, `cls`,
  `Transformer/encoderblock_N/...`, optional `opt/target/` prefix), the format the original
  loads for ViT-L (its models/vit.py `_load_weights`). A DeiT distillation token is dropped
  with its position row (BLIP's ViT has none; the original starts from the non-distilled DeiT).
  Position tables are resized bicubically to the model's grid (models/vit.resize_pos_embed).
- Text (`bert=`): an HF BertModel / BertForMaskedLM / BertLMHeadModel / BertForPreTraining
  directory (old `LayerNorm.gamma/beta` names accepted). Every text tower in the tree gets
  BERT's embeddings, self-attention and FFN; in the tied pre-training tree `decoder_attention`
  gets BERT's self-attention too; the LM head comes from `cls.predictions` when the file has
  it. Token-type embeddings, pooler and NSP head are dropped (BLIP's text model has none).
  A smaller vocabulary (bert-base-uncased: 30522) is grown to the model's (30524: [DEC],
  [ENC]) as `resize_token_embeddings` does: old rows copied, new rows keep their fresh random
  init, new LM-bias entries 0.
- Left at the fresh init: cross-attention (unless the file has it), vision_proj, text_proj,
  itm_head, temp, and the LM head of a plain BertModel; `InitReport.random` lists them.

LayerNorm eps: the returned config carries the source's (HF config.json; 1e-6 for timm and
JAX files, which carry none), so blip_jax computes what the source computes. A training run
(config.init.*) keeps config.model's eps and prints where the source's differs.

Not read (they fail naming the keys): big_vision's newer npz naming (`MlpBlock_0`, scanned
blocks), ViTs without qkv bias or with layer scale / register tokens, relative positions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Mapping, Optional

import jax
import numpy as np

from blip_jax.checkpoint import CheckpointMismatchError, check_params_fit, save_model
from blip_jax.convert import mapping
from blip_jax.convert.importer import mismatch_lines
from blip_jax.models.blip import init_params
from blip_jax.models.config import BlipConfig, preset
from blip_jax.models.vit import resize_pos_embed

TIMM_EPS = 1e-6  # timm's ViT/DeiT and the JAX ViT (flax LayerNorm default); the files carry none


@dataclasses.dataclass
class InitReport:
    """What apply_pretrained did. Paths are blip_jax tree paths ('vision/block_0/attn/qkv/kernel')."""
    loaded: dict = dataclasses.field(default_factory=dict)  # path -> source key(s)
    random: list = dataclasses.field(default_factory=list)  # paths wholly at their fresh init
    ignored: list = dataclasses.field(default_factory=list)  # source keys not used (heads, ...)
    notes: list = dataclasses.field(default_factory=list)  # resizes, dropped tokens, partial rows
    layer_norm_eps: dict = dataclasses.field(default_factory=dict)  # 'vision'/'text' -> source eps

    def lines(self) -> list[str]:
        """A short human summary: counts, notes, and the random paths with layer numbers folded."""
        random = sorted({re.sub(r"(layer|block)_\d+", r"\1_*", p) for p in self.random})
        return ([f"{len(self.loaded)} tensors loaded, {len(self.random)} left at their random init"]
                + self.notes + [f"random: {p}" for p in random]
                + ([f"ignored {len(self.ignored)} source entries (heads, pooler, token types, "
                    f"tied copies)"] if self.ignored else []))

    def eps_notes(self, run_config: BlipConfig) -> list[str]:
        """Where the source's LayerNorm eps differs from the config a run computes with."""
        have = {"vision": run_config.vision.layer_norm_eps, "text": run_config.text.layer_norm_eps}
        return [f"the {tower} source computes LayerNorm with eps {eps:g}; this model uses "
                f"config.model.{tower}.layer_norm_eps={have[tower]:g} (set it to {eps:g} to "
                f"compute exactly as the source)"
                for tower, eps in self.layer_norm_eps.items() if eps != have[tower]]


class _Missing(KeyError):
    pass


class _Source:
    """A state dict read from disk plus how it names things; records which keys were used."""

    def __init__(self, path: str, sd: Mapping, kind: str, eps: float, heads: Optional[int] = None,
                 prefix: str = "", ignore: str = r"(?!)", origin: Optional[dict] = None):
        self.path, self.sd, self.kind, self.eps, self.heads = path, dict(sd), kind, eps, heads
        self.prefix, self.ignore, self.origin = prefix, re.compile(ignore), origin or {}
        self.used: set = set()

    def name(self, key: str) -> str:
        if key in self.origin:
            return self.origin[key]
        # A key the file lacks, named as the file would (BERT files may use a 'bert.' prefix).
        bert_prefixed = self.kind == "bert" and any(v.startswith("bert.") for v in self.origin.values())
        return f"bert.{key}" if bert_prefixed and not key.startswith("cls.") else key

    def get(self, *keys: str) -> list[np.ndarray]:
        absent = [self.name(k) for k in keys if k not in self.sd]
        if absent:
            raise _Missing(absent)
        self.used.update(keys)
        return [np.asarray(self.sd[k], np.float32) for k in keys]

    def leftover(self) -> tuple[list[str], list[str]]:
        rest = sorted(k for k in self.sd if k not in self.used)
        return ([self.name(k) for k in rest if self.ignore.search(k)],
                [self.name(k) for k in rest if not self.ignore.search(k)])


# -- reading sources ---------------------------------------------------------------------------

def _read_state_dict(path: str) -> dict:
    from safetensors import SafetensorError
    try:
        return _read_any(path)
    except SafetensorError as e:  # a truncated or corrupt download: name the file
        raise ValueError(f"{path}: unreadable safetensors weights ({e})") from e


def _read_any(path: str) -> dict:
    from blip_jax.convert import _to_numpy, _torch_load, read_hf_state_dict
    if os.path.isdir(path):
        return read_hf_state_dict(path)
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return load_file(path)
    obj = _torch_load(path)
    for wrapper in ("model", "state_dict"):  # DeiT's torch-hub files: {'model': state_dict}
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    return _to_numpy(obj)


def _hf_config(path: str, model_types: tuple[str, ...]) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} is missing: not an HF transformers model directory")
    with open(cfg_path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON ({e})") from e
    if cfg.get("model_type") not in model_types:
        raise ValueError(f"{path}: config.json has model_type {cfg.get('model_type')!r}; "
                         f"expected one of {list(model_types)}")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {cfg['hidden_act']!r}; BLIP uses exact GELU ('gelu')")
    return cfg


def read_vit(path: str) -> _Source:
    """A ViT/DeiT checkpoint in any supported layout (see the module doc)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"ViT weights {path} do not exist")
    sd = _read_state_dict(path)
    if path.endswith(".npz"):
        prefix = "opt/target/" if "opt/target/embedding/kernel" in sd else ""
        ignore = rf"^{prefix}(head|pre_logits)/" + (r"|^(?!opt/target/)" if prefix else "")
        return _Source(path, sd, "npz", TIMM_EPS, prefix=prefix, ignore=ignore)
    if any(k.startswith(("blocks.", "patch_embed.")) for k in sd):
        return _Source(path, sd, "timm", TIMM_EPS, ignore=r"^(head|head_dist|pre_logits)\.")
    if not os.path.isdir(path) or not any(".patch_embeddings." in k for k in sd):
        raise ValueError(f"{path}: neither a timm-layout ViT state dict (blocks.N..., "
                         f"patch_embed.proj...) nor an HF transformers ViT/DeiT directory")
    cfg = _hf_config(path, ("vit", "deit"))
    prefix = next((p for p in ("vit.", "deit.") if any(k.startswith(p) for k in sd)), "")
    return _Source(path, sd, "hf", cfg.get("layer_norm_eps", 1e-12),
                   heads=cfg.get("num_attention_heads"), prefix=prefix,
                   ignore=r"^((vit|deit)\.)?(pooler\.|embeddings\.mask_token$)"
                          r"|^(classifier|cls_classifier|distillation_classifier)\.")


def read_bert(path: str) -> _Source:
    """An HF BERT directory; keys normalised to BertModel names ('bert.' prefix dropped,
    gamma/beta -> weight/bias), the file's own names kept for messages."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"BERT weights {path}: expected an HF transformers directory "
                                f"(config.json + model.safetensors or pytorch_model.bin)")
    cfg = _hf_config(path, ("bert",))
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: position_embedding_type {cfg['position_embedding_type']!r}; "
                         f"BLIP uses absolute position embeddings")
    sd, origin = {}, {}
    for key, value in _read_state_dict(path).items():
        new = key[len("bert."):] if key.startswith("bert.") else key
        new = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", new))
        sd[new], origin[new] = value, key
    return _Source(path, sd, "bert", cfg.get("layer_norm_eps", 1e-12),
                   heads=cfg.get("num_attention_heads"), origin=origin,
                   ignore=r"^pooler\.|^embeddings\.(token_type_embeddings\.weight|position_ids)$"
                          r"|^cls\.seq_relationship\.|^cls\.predictions\.decoder\.(weight|bias)$")


# -- ViT key layouts: every format is read through timm names ---------------------------------

# HF names: files (transformers <= 5 saves these) and the newer in-memory names (`layers.N`).
_HF_VIT = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
           "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
           "patch_embed.proj": "embeddings.patch_embeddings.projection", "norm": "layernorm",
           "block": "encoder.layer.", "qkv": "attention.attention.{}", "q": "query", "k": "key", "v": "value"}
_HF_VIT_NEW = {**_HF_VIT, "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
               "block": "layers.", "qkv": "attention.{}_proj", "q": "q", "k": "k", "v": "v"}
_NPZ = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_2", "mlp.fc1": "MlpBlock_3/Dense_0",
        "mlp.fc2": "MlpBlock_3/Dense_1", "attn.proj": "MultiHeadDotProductAttention_1/out"}
_QKV = ("query", "key", "value")
_DIST = {"timm": "dist_token", "hf": "embeddings.distillation_token"}


def _vit_fetch(src: _Source, key: str) -> tuple[np.ndarray, str]:
    """The tensor for timm key `key` in PyTorch layout, and the source name(s) it came from."""
    p = src.prefix
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if src.kind == "timm":
        return src.get(key)[0], key
    if src.kind == "hf":
        t = _HF_VIT_NEW if any(k.startswith(p + "layers.") for k in src.sd) else _HF_VIT
        if key in ("cls_token", "pos_embed"):
            name = p + {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings"}[key]
            return src.get(name)[0], name
        if block and block[2] == "attn.qkv":
            names = [f"{p}{t['block']}{block[1]}.{t['qkv'].format(t[x])}.{block[3]}" for x in "qkv"]
            shown = ",".join(t[x] for x in "qkv")
            return (np.concatenate(src.get(*names), 0),
                    f"{p}{t['block']}{block[1]}.{t['qkv'].format('{' + shown + '}')}.{block[3]}")
        base, leaf = key.rsplit(".", 1)
        name = (f"{p}{t['block']}{block[1]}.{t[block[2]]}.{leaf}" if block else f"{p}{t[base]}.{leaf}")
        return src.get(name)[0], name
    # npz: the original JAX ViT (kernels [in, out], attention [D, heads, head_dim]).
    if key in ("cls_token", "pos_embed"):
        name = p + {"cls_token": "cls", "pos_embed": "Transformer/posembed_input/pos_embedding"}[key]
        return src.get(name)[0], name
    if key.startswith("patch_embed.proj."):
        name = p + "embedding/" + ("kernel" if key.endswith("weight") else "bias")
        value = src.get(name)[0]
        return (value.transpose(3, 2, 0, 1) if value.ndim == 4 else value), name
    is_norm = key.startswith("norm.") or (block is not None and block[2] in ("norm1", "norm2"))
    leaf = ("scale" if is_norm else "kernel") if key.endswith("weight") else "bias"
    if not block:
        name = f"{p}Transformer/encoder_norm/{leaf}"
        return src.get(name)[0], name
    base = f"{p}Transformer/encoderblock_{block[1]}/"
    if block[2] == "attn.qkv":
        names = [f"{base}MultiHeadDotProductAttention_1/{n}/{leaf}" for n in _QKV]
        parts = src.get(*names)
        parts = [a.reshape(a.shape[0], -1).T if leaf == "kernel" else a.reshape(-1) for a in parts]
        return np.concatenate(parts, 0), f"{base}MultiHeadDotProductAttention_1/{{query,key,value}}/{leaf}"
    name = f"{base}{_NPZ[block[2]]}/{leaf}"
    value = src.get(name)[0]
    if leaf == "kernel":
        value = value.reshape(-1, value.shape[-1]).T  # out/kernel [heads, head_dim, D] too
    return value, name


def _bert_key(rest: tuple) -> str:
    if rest[0].startswith("layer_") and rest[1] == "decoder_attention":
        rest = (rest[0], "attention") + rest[2:]  # the decoder's causal self-attention <- BERT's
    return mapping._text_key(rest, "", "cls.predictions.")


# -- applying ----------------------------------------------------------------------------------

def _torch_shape(path, shape) -> tuple:
    return tuple(mapping.to_torch(path, np.broadcast_to(np.float32(0), tuple(shape))).shape)


def _apply(flat: dict, src: _Source, paths: list, config: BlipConfig, report: InitReport, what: str):
    missing, wrong = [], []
    if src.heads is not None:
        want = config.vision.num_heads if what == "vision" else config.text.num_heads
        if src.heads != want:
            wrong.append(f"num_attention_heads: {src.heads} in {src.path}/config.json, model wants {want}")
    vocab = None
    for path in paths:
        rest = path[1:]
        if what == "vision":
            key = mapping.torch_key(path, mapping.ORIGINAL, False)[len("visual_encoder."):]
        else:
            key = _bert_key(rest)
            if (rest[0] == "lm_head" and "cls.predictions.bias" not in src.sd) or (
                    rest[1] == "crossattention" and not any(".crossattention." in k for k in src.sd)):
                continue  # BERT has no cross-attention; a BertModel has no MLM head
        try:
            value, name = _vit_fetch(src, key) if what == "vision" else (src.get(key)[0], src.name(key))
        except _Missing as e:
            missing.extend(e.args[0])
            continue
        value = mapping.to_jax(path, value)
        fresh = flat[path]
        if key == "pos_embed":
            dist = _DIST.get(src.kind, "")
            if src.prefix + dist in src.sd and value.shape[1] >= 2:
                src.used.add(src.prefix + dist)
                value = np.delete(value, 1, axis=1)
                report.notes.append(f"dropped the distillation token ({src.name(src.prefix + dist)}) "
                                    f"and its position row from {src.path}")
            if value.shape[1] != fresh.shape[1] and value.shape[-1] == fresh.shape[-1]:
                old = value.shape
                value = resize_pos_embed(value, config.vision.grid_size)
                report.notes.append(f"{name}: position table {old} resized bicubically to {value.shape}")
        rows = value.shape[0]
        if (rest in (("embeddings", "word_embeddings", "embedding"), ("lm_head", "bias"))
                and rows < fresh.shape[0] and value.shape[1:] == fresh.shape[1:]):
            # resize_token_embeddings: old rows copied; new rows ([DEC], [ENC]) keep their fresh
            # init (word embeddings) or start at 0 (LM bias, padded with zeros by transformers).
            grown = np.array(fresh, np.float32) if rest[0] == "embeddings" else np.zeros(fresh.shape, np.float32)
            grown[:rows] = value
            value, vocab = grown, (rows, fresh.shape[0])
        if value.shape != fresh.shape:
            wrong.append(f"{name}: {_torch_shape(path, value.shape)}, model wants "
                         f"{_torch_shape(path, fresh.shape)}")
            continue
        flat[path] = value
        report.loaded[mapping.path_str(path)] = name
    if vocab:
        report.notes.append(f"vocabulary {vocab[0]} -> {vocab[1]}: word-embedding rows {vocab[0]}.."
                            f"{vocab[1] - 1} keep their random init, LM-bias entries set to 0")
    differ = _check_tied_lm(src) if what == "text" else []
    ignored, unexpected = src.leftover()
    report.ignored += ignored
    if missing or unexpected or wrong or differ:
        if what == "vision":
            v = config.vision
            desc = f"ViT (width {v.width}, depth {v.depth}, heads {v.num_heads}, patch {v.patch_size})"
        else:
            t = config.text
            desc = (f"text transformer (hidden {t.hidden_size}, {t.num_layers} layers, heads "
                    f"{t.num_heads}, vocab {t.vocab_size}, {t.max_position_embeddings} positions)")
        wrong.sort(key=lambda w: bool(re.search(r"[._]\d+[./]", w.split(":")[0])))  # embeddings first
        lines = [f"{src.path} does not fit the model's {desc}:"]
        lines += mismatch_lines((("missing keys", missing), ("unexpected keys", unexpected),
                                 ("mismatch (shapes in PyTorch layout)", wrong),
                                 ("tied copies that differ (BLIP ties them)", differ)))
        lines.append("Fix: choose the model size that matches the file (DeiT-B/16 or ViT-B/16 -> "
                     "preset base, ViT-L/16 -> large; bert-base -> text of base/large), or check "
                     "the file is a ViT/BERT checkpoint.")
        raise CheckpointMismatchError("\n".join(lines))


def _check_tied_lm(src: _Source) -> list[str]:
    """BERT's MLM output layer is tied to the word embeddings (and its bias to
    cls.predictions.bias), as BLIP's is: a file whose copies differ cannot be represented."""
    out = []
    for copy, of in (("cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"),
                     ("cls.predictions.decoder.bias", "cls.predictions.bias")):
        if copy in src.sd and of in src.sd and not np.array_equal(
                np.asarray(src.sd[copy], np.float32), np.asarray(src.sd[of], np.float32)):
            out.append(f"{src.name(copy)} != {src.name(of)}")
    return out


def apply_pretrained(params: Mapping, config: BlipConfig, *, vit: Optional[str] = None,
                     bert: Optional[str] = None) -> tuple[dict, BlipConfig, InitReport]:
    """Loads ImageNet ViT weights (`vit`) and/or BERT weights (`bert`) into a freshly
    initialised params tree of `config` (tied pre-training tree or untied downstream trees).

    Returns (params as float32 numpy, `config` with the sources' LayerNorm eps, report). A file
    that does not fit raises CheckpointMismatchError naming the missing, unexpected and
    mis-shaped keys (in the file's own names)."""
    check_params_fit(params, config, what="params to initialise")
    flat = {p: np.asarray(v, np.float32) for p, v in mapping.flatten(params).items()}
    report = InitReport()
    if vit:
        src = read_vit(vit)
        _apply(flat, src, [p for p in flat if p[0] == "vision"], config, report, "vision")
        report.layer_norm_eps["vision"] = src.eps
        config = config.replace(vision=dataclasses.replace(config.vision, layer_norm_eps=src.eps))
    if bert:
        src = read_bert(bert)
        towers = [p for p in flat if p[0] in ("text_encoder", "text_decoder")]
        if not towers:
            raise ValueError(f"bert={bert}: this model has no text encoder or decoder")
        _apply(flat, src, towers, config, report, "text")
        report.layer_norm_eps["text"] = src.eps
        config = config.replace(text=dataclasses.replace(config.text, layer_norm_eps=src.eps))
    report.random = sorted(mapping.path_str(p) for p in flat
                           if mapping.path_str(p) not in report.loaded)
    return mapping.unflatten(flat), config, report


def init_from_pretrained(config: BlipConfig, seed: int = 0, *, vit: Optional[str] = None,
                         bert: Optional[str] = None) -> tuple[dict, BlipConfig, InitReport]:
    """A fresh random init of `config` (jax.random.key(seed)) with apply_pretrained on top."""
    fresh = _jitted_init(config)(jax.random.key(seed))
    return apply_pretrained(jax.device_get(fresh), config, vit=vit, bert=bert)


@functools.lru_cache(maxsize=4)
def _jitted_init(config: BlipConfig):
    return jax.jit(functools.partial(init_params, config))  # one compile, not one per op


def convert_init(dst: str, preset_name: str, *, vit: Optional[str] = None, bert: Optional[str] = None,
                 image_size: Optional[int] = None, seed: int = 0) -> tuple[BlipConfig, InitReport]:
    """Writes a tied pre-training checkpoint of preset `preset_name` initialised from `vit` /
    `bert` (what `python -m blip_jax.convert --vit ... --bert ... --preset ... DST` runs);
    start pre-training from it with config.init_checkpoint=DST."""
    config = preset(preset_name, tie_encoder_decoder=True)
    if image_size:
        config = config.replace(vision=dataclasses.replace(config.vision, image_size=image_size))
    params, config, report = init_from_pretrained(config, seed, vit=vit, bert=bert)
    source = "; ".join(f"{k}={os.path.abspath(v)}" for k, v in (("vit", vit), ("bert", bert)) if v)
    save_model(dst, params, config, source=f"pre-training init ({source})")
    return config, report


__all__ = ["InitReport", "apply_pretrained", "convert_init", "init_from_pretrained",
           "read_bert", "read_vit"]
