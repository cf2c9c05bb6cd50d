"""Model configuration: plain frozen dataclasses, one object handed to every module.

Experiment configs (ml_collections, under configs/) carry a `model` dict that
`BlipConfig.from_dict` turns into this object; checkpoints store `to_dict()` next to the params.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration value the model cannot be built from."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    # Rematerialise the last `remat_layers` blocks (the original's `vit_ckpt_layer`).
    remat_layers: int = 0
    init_std: float = 0.02  # weight init (truncated normal); see PRESETS['tiny']
    # On CPU: attention a few heads at a time, each chunk's float32 scores within this many
    # MiB (layers.dot_product_attention); 0: all at once. The tiny presets' batches fit in one
    # chunk (their programs are unchanged by it).
    attention_chunk_mib: int = 2

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2 + 1


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 30524
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    # The original's med_config.json / bert_config.json: hidden and attention dropout 0.1.
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    remat: bool = False
    init_std: float = 0.02


@dataclasses.dataclass(frozen=True)
class BlipConfig:
    """The whole MED model.

    `tie_encoder_decoder`: pre-training mode, where the decoder shares every parameter with the
    encoder except self-attention (one copy in the tree). Downstream models hold them untied.
    `text_encoder` / `text_decoder`: which text towers exist (a captioning checkpoint has only the
    decoder, a retrieval one only the encoder). `itc_itm_heads`: vision_proj, text_proj, itm_head, temp.
    `decoder_context`: what the decoder cross-attends to: "image" tokens (captioning,
    pre-training) or the "question" states of the encoder (the VQA answer decoder).
    `image_pair`: the NLVR2 model: the image-grounded encoder reads a pair of images (one ViT
    pass over both), each layer's cross-attention has one branch per image, averaged below
    `pair_merge_layer` and merged by a 2*hidden -> hidden projection from it on (the original's
    6 of 12); a classifier (`cls_head`: dense, ReLU, dense to 2) reads the [ENC] token.
    `dtype`: computation dtype; parameters always stay float32.
    """

    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    embed_dim: int = 256
    tie_encoder_decoder: bool = False
    text_encoder: bool = True
    text_decoder: bool = True
    itc_itm_heads: bool = True
    decoder_context: str = "image"
    image_pair: bool = False
    pair_merge_layer: int = 6
    temp_init: float = 0.07
    dtype: str = "float32"

    def __post_init__(self):
        if self.text.hidden_size % self.text.num_heads:
            raise ConfigError(
                f"text.hidden_size={self.text.hidden_size} is not divisible by "
                f"text.num_heads={self.text.num_heads}")
        if self.vision.width % self.vision.num_heads:
            raise ConfigError(
                f"vision.width={self.vision.width} is not divisible by "
                f"vision.num_heads={self.vision.num_heads}")
        if self.vision.image_size % self.vision.patch_size:
            raise ConfigError(
                f"vision.image_size={self.vision.image_size} is not a multiple of "
                f"vision.patch_size={self.vision.patch_size}")
        if self.tie_encoder_decoder and not (self.text_encoder and self.text_decoder):
            raise ConfigError("tie_encoder_decoder=True needs both text_encoder and text_decoder")
        if self.itc_itm_heads and not self.text_encoder:
            raise ConfigError("itc_itm_heads=True needs text_encoder=True")
        if self.decoder_context not in ("image", "question"):
            raise ConfigError(
                f"decoder_context={self.decoder_context!r}: use 'image' or 'question'")
        if self.image_pair and (not self.text_encoder or self.text_decoder
                                or self.itc_itm_heads or self.tie_encoder_decoder):
            raise ConfigError("image_pair=True (the NLVR2 model) has the text encoder and its "
                              "classifier only: set text_decoder=False, itc_itm_heads=False, "
                              "tie_encoder_decoder=False")
        if self.image_pair and not 0 <= self.pair_merge_layer <= self.text.num_layers:
            raise ConfigError(f"pair_merge_layer={self.pair_merge_layer} is outside 0.."
                              f"{self.text.num_layers} (text.num_layers)")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype={self.dtype!r}: use float32, bfloat16 or float16")

    def replace(self, **changes: Any) -> "BlipConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BlipConfig":
        """Builds a config, naming any key it does not know (a typo must not pass silently)."""
        d = dict(d)
        vision = _build(VisionConfig, d.pop("vision", {}), "model.vision")
        text = _build(TextConfig, d.pop("text", {}), "model.text")
        return _build(cls, d, "model", vision=vision, text=text)


def _build(cls, values: Mapping[str, Any], where: str, **extra):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where}; valid keys: {sorted(known - set(extra))}")
    return cls(**dict(values), **extra)


def _preset(vision: VisionConfig, text: TextConfig, **kw) -> BlipConfig:
    return BlipConfig(vision=vision, text=text, **kw)


PRESETS: dict[str, BlipConfig] = {
    # For unit tests and the CPU demo: learns on synthetic data in minutes. Init std 0.07:
    # BERT/ViT's 0.02 is tuned for width 768; at width 64 it leaves the [CLS] token almost
    # input-independent at init (text features of all captions nearly identical), and
    # contrastive training from scratch then stalls in a collapsed state for hundreds of steps.
    "tiny": _preset(
        VisionConfig(image_size=64, patch_size=16, width=64, depth=2, num_heads=2, mlp_dim=256,
                     init_std=0.07),
        # No text dropout: the tiny recipes and the README's synthetic experiments were designed
        # and measured without it (model.text.dropout_rate=0.1 gives the original's value).
        TextConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256,
                   max_position_embeddings=64, init_std=0.07, dropout_rate=0.0,
                   attention_dropout_rate=0.0),
        embed_dim=32),
    "small": _preset(
        VisionConfig(image_size=224, patch_size=16, width=256, depth=4, num_heads=4, mlp_dim=1024),
        TextConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
        embed_dim=256),
    # The paper's ViT-B/16 + BERT-base and ViT-L/16 + BERT-base.
    "base": _preset(VisionConfig(), TextConfig()),
    "large": _preset(
        VisionConfig(width=1024, depth=24, num_heads=16, mlp_dim=4096, drop_path_rate=0.1),
        TextConfig()),
}


def preset(name: str, **changes: Any) -> BlipConfig:
    """A named model size ('tiny', 'small', 'base', 'large') with optional top-level changes."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)
