"""Moving parameters between model variants: a pre-trained (tied) BLIP becomes a captioner,
a retrieval model or a filter by fine-tuning, and each downstream model has its own tree.

- tied -> untied: the pre-training tree keeps one copy of everything the encoder and decoder
  share, plus the decoder's own self-attention (`decoder_attention`) and the LM head. The
  downstream encoder gets the shared parts with the encoder's self-attention; the decoder gets
  the shared parts with `decoder_attention` as its self-attention, and the LM head.
- towers and heads the target does not have are dropped (a captioner keeps no text encoder).
- a different image size interpolates the position table (bicubic, as the original does).
- the NLVR2 model (`image_pair`) gets each layer's cross-attention twice, one copy per image
  branch (query/key/value and output dense; the LayerNorm stays one), as the original's
  blip_nlvr.load_checkpoint does; its merge layers and classifier are new: they come from
  `new_params`, a fresh init of the target.

Anything the target needs that the source lacks is an error naming it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from blip_jax.models.config import BlipConfig
from blip_jax.models.vit import resize_pos_embed

_HEADS = ("vision_proj", "text_proj", "itm_head", "temp")


class VariantError(ValueError):
    """The source parameters cannot provide what the target model needs."""


def _untie(tied: Mapping[str, Any]) -> tuple[dict, dict]:
    """Tied text tree -> (encoder tree, decoder tree), both in the untied layout."""
    encoder, decoder = {}, {}
    for name, sub in tied.items():
        if name.startswith("layer_"):
            shared = {k: v for k, v in sub.items() if k not in ("attention", "decoder_attention")}
            encoder[name] = {**shared, "attention": sub["attention"]}
            decoder[name] = {**shared, "attention": sub["decoder_attention"]}
        elif name == "lm_head":
            decoder[name] = sub
        else:  # embeddings are shared too
            encoder[name] = decoder[name] = sub
    return encoder, decoder


def _pair_encoder(encoder: Mapping[str, Any], fresh: Mapping[str, Any]) -> dict:
    """A text encoder's single-image cross-attention -> the two-branch NLVR2 layout; the merge
    layers (in `fresh`, the target's new encoder) are taken as they are."""
    out = {}
    for name, sub in encoder.items():
        if name.startswith("layer_"):
            cross = sub["crossattention"]
            branch = {k: cross[k] for k in ("query", "key", "value", "out")}
            pair = {"branch_0": branch, "branch_1": dict(branch), "norm": cross["norm"]}
            if "merge" in fresh[name]["crossattention"]:
                pair["merge"] = fresh[name]["crossattention"]["merge"]
            sub = {**sub, "crossattention": pair}
        out[name] = sub
    return out


def adapt_params(params: Mapping[str, Any], source: BlipConfig, target: BlipConfig,
                 new_params: Callable[[], Mapping[str, Any]] | None = None) -> dict:
    """`params` of a `source` model rearranged for a `target` model (see the module doc).
    `new_params`: returns a fresh init of the target, called only when the target has modules
    no source provides (the NLVR2 model from a single-image one).

    Returns a new tree (leaves shared with the input where nothing changes)."""
    params = dict(params)
    if source.tie_encoder_decoder and not target.tie_encoder_decoder:
        encoder, decoder = _untie(params.pop("text_encoder"))
        params["text_encoder"], params["text_decoder"] = encoder, decoder
    elif target.tie_encoder_decoder and not source.tie_encoder_decoder:
        raise VariantError("cannot build a tied (pre-training) model from untied parameters: "
                           "start pre-training from a pre-training checkpoint or from scratch")
    if target.image_pair and not source.image_pair and "text_encoder" in params:
        if new_params is None:
            raise VariantError("the NLVR2 model's merge layers and classifier are new: pass "
                               "new_params (a fresh init of the target) to adapt_params")
        fresh = new_params()
        params["text_encoder"] = _pair_encoder(params["text_encoder"], fresh["text_encoder"])
        params["cls_head"] = fresh["cls_head"]
    elif source.image_pair and not target.image_pair:
        raise VariantError("an NLVR2 (image_pair) checkpoint has a two-image cross-attention and "
                           "cannot become a single-image model; start from the pre-trained model")
    wanted = {"vision": True, "text_encoder": target.text_encoder,
              "text_decoder": target.text_decoder and not target.tie_encoder_decoder,
              "cls_head": target.image_pair, **{h: target.itc_itm_heads for h in _HEADS}}
    missing = [k for k, need in wanted.items() if need and k not in params]
    if missing:
        raise VariantError(f"the source checkpoint has no {missing} that the target model needs "
                           f"(source: text_encoder={source.text_encoder}, text_decoder="
                           f"{source.text_decoder}, itc_itm_heads={source.itc_itm_heads}); "
                           f"start from a checkpoint that has them (e.g. the pre-trained model)")
    out = {k: v for k, v in params.items() if wanted.get(k, False)}
    return _resize_positions(out, target)


def _resize_positions(params: dict, target: BlipConfig) -> dict:
    vision = dict(params["vision"])
    grid = target.vision.grid_size
    if vision["pos_embed"].shape[1] != 1 + grid * grid:
        vision["pos_embed"] = resize_pos_embed(np.asarray(vision["pos_embed"]), grid)
    return {**params, "vision": vision}


def momentum_subtree(params: Mapping[str, Any]) -> dict:
    """The parameters the momentum model copies: ViT, vision_proj, text_proj and the unimodal
    part of the text encoder (embeddings, self-attention, FFN: no cross-attention, no decoder
    self-attention, no LM head, which the momentum text encoder never runs)."""
    text = params["text_encoder"]
    unimodal = {"embeddings": text["embeddings"]}
    for name, layer in text.items():
        if name.startswith("layer_"):
            unimodal[name] = {k: v for k, v in layer.items()
                              if k not in ("crossattention", "decoder_attention")}
    return {"vision": params["vision"], "vision_proj": params["vision_proj"],
            "text_encoder": unimodal, "text_proj": params["text_proj"]}


def adapt_momentum(momentum: Mapping[str, Any], target: BlipConfig) -> dict:
    """A checkpoint's momentum-encoder params (blip_jax's momentum subtree, or an original
    file's full `*_m` encoders) as the momentum subtree of a `target` model with ITC, the
    position table resized like the online ViT's."""
    return _resize_positions(momentum_subtree(momentum), target)


__all__ = ["VariantError", "adapt_momentum", "adapt_params", "momentum_subtree"]
