"""Test helpers: randomly initialised HF transformers BLIP models as a PyTorch reference.

HF initialises some BLIP weights with near-zero spread (vision std 1e-10, LayerNorm weights all
ones, biases zero), which would make parity checks meaningless. Every parameter is therefore
re-drawn here from a spread that exercises the whole computation: matrices N(0, 0.04),
biases N(0, 0.02), LayerNorm weights 1 + N(0, 0.1). The same rule randomises blip_jax trees.

torch and transformers are imported lazily so that importing this module is cheap.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

WEIGHT_STD = 0.04
BIAS_STD = 0.02
SCALE_STD = 0.1

CLS_ID, SEP_ID, PAD_ID, DEC_ID, ENC_ID = 101, 102, 0, 30522, 30523


def _draw(kind: str, shape, rng: np.random.Generator) -> np.ndarray:
    if kind == "scale":
        return (1.0 + SCALE_STD * rng.standard_normal(shape)).astype(np.float32)
    if kind == "bias":
        return (BIAS_STD * rng.standard_normal(shape)).astype(np.float32)
    return (WEIGHT_STD * rng.standard_normal(shape)).astype(np.float32)


def _torch_kind(name: str, ndim: int) -> str:
    last = name.rsplit(".", 1)[-1]
    if last == "bias":
        return "bias"
    if last == "weight" and ndim == 1:  # LayerNorm
        return "scale"
    return "weight"


def randomize_torch_(model, seed: int) -> None:
    """Re-draws every parameter of a torch module in place (deterministic in `seed`)."""
    import torch
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.copy_(torch.from_numpy(_draw(_torch_kind(name, p.ndim), tuple(p.shape), rng)))


def randomize_params(params: Mapping, seed: int) -> dict:
    """A blip_jax params tree with every leaf re-drawn (same shapes, numpy float32); `params`
    may hold arrays or shape structs (blip_jax.models.abstract_params)."""
    rng = np.random.default_rng(seed)

    def walk(tree, path):
        out = {}
        for k in sorted(tree):
            v = tree[k]
            if isinstance(v, Mapping):
                out[k] = walk(v, path + (k,))
                continue
            shape = tuple(getattr(v, "shape", np.shape(v)))
            if (path + (k,))[0] == "temp":  # the ITC temperature: keep it a valid one
                out[k] = np.asarray(0.05 + 0.01 * rng.random(), np.float32)
            else:
                out[k] = _draw({"scale": "scale", "bias": "bias"}.get(k, "weight"), shape, rng)
        return out

    return walk(params, ())


# -- HF models -----------------------------------------------------------------------------------

def hf_config(*, vision_width=256, vision_depth=4, vision_heads=4, vision_mlp=1024, image_size=224,
              patch_size=16, vision_eps=1e-6, text_hidden=256, text_layers=4, text_heads=4,
              text_ffn=1024, max_positions=64, embed_dim=256, **extra):
    from transformers import BlipConfig
    return BlipConfig(
        vision_config=dict(hidden_size=vision_width, num_hidden_layers=vision_depth,
                           num_attention_heads=vision_heads, intermediate_size=vision_mlp,
                           image_size=image_size, patch_size=patch_size, layer_norm_eps=vision_eps),
        text_config=dict(hidden_size=text_hidden, num_hidden_layers=text_layers,
                         num_attention_heads=text_heads, intermediate_size=text_ffn,
                         max_position_embeddings=max_positions),
        image_text_hidden_size=embed_dim, **extra)


def hf_models(config, seed: int, kinds=("retrieval", "captioning")) -> dict:
    """Randomised HF models in eval mode; all of them share the first model's vision weights,
    so one blip_jax tree can serve them all."""
    from transformers import (BlipForConditionalGeneration, BlipForImageTextRetrieval,
                              BlipForQuestionAnswering)
    classes = {"retrieval": BlipForImageTextRetrieval, "captioning": BlipForConditionalGeneration,
               "vqa": BlipForQuestionAnswering}
    models = {}
    for i, kind in enumerate(kinds):
        m = classes[kind](config).eval()
        randomize_torch_(m, seed + 1000 * i)
        if i:
            m.vision_model.load_state_dict(models[kinds[0]].vision_model.state_dict())
        models[kind] = m
    return models


def patch_cross_attention_mask(model) -> int:
    """Works around transformers 5.x BLIP text cross-attention dropping `encoder_attention_mask`:
    BlipTextAttention hands the mask to BlipTextSelfAttention as `attention_mask`, which then
    reads `encoder_attention_mask` (None) whenever encoder states are given, so padded
    encoder positions are attended to. The hook passes the mask on under the name that is read
    (harmless once transformers fixes it). Returns the number of layers patched."""

    def hook(module, args, kwargs):
        if kwargs.get("encoder_hidden_states") is not None \
                and kwargs.get("encoder_attention_mask") is None:
            kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
        return args, kwargs

    n = 0
    for name, module in model.named_modules():
        if name.endswith("crossattention.self"):
            module.register_forward_pre_hook(hook, with_kwargs=True)
            n += 1
    return n


def make_inputs(batch: int, image_size: int, length: int, seed: int,
                valid_lengths=None) -> dict:
    """Random pixels [B, 3, H, W] (torch layout, float32) and text ids/mask [B, L] (int64):
    each row is `ids... [SEP]` then [PAD] up to `length`; position 0 is left for the caller's
    first token. Default lengths pad every row but the first."""
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    if valid_lengths is None:
        valid_lengths = [length - (i * (length // 2)) // max(1, batch - 1) for i in range(batch)]
    ids = rng.integers(1000, 30000, (batch, length)).astype(np.int64)
    mask = np.zeros((batch, length), np.int64)
    for b, n in enumerate(valid_lengths):
        assert 2 <= n <= length
        mask[b, :n] = 1
        ids[b, n - 1] = SEP_ID
        ids[b, n:] = PAD_ID
    return {"pixels": pixels, "ids": ids, "mask": mask}


def with_first(ids: np.ndarray, token: int) -> np.ndarray:
    out = ids.copy()
    out[:, 0] = token
    return out


def hf_outputs(models: Mapping, inputs: Mapping) -> dict:
    """Reference outputs (numpy float32) of HF retrieval/captioning models."""
    import torch
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    px, mask = t(inputs["pixels"]), t(inputs["mask"])
    out = {}
    with torch.no_grad():
        if "retrieval" in models:
            ret = models["retrieval"]
            out["vision"] = ret.vision_model(pixel_values=px).last_hidden_state.numpy()
            out["itm"] = ret(input_ids=t(with_first(inputs["ids"], ENC_ID)), pixel_values=px,
                             attention_mask=mask, use_itm_head=True).itm_score.numpy()
            out["itc_cos"] = ret(input_ids=t(with_first(inputs["ids"], CLS_ID)), pixel_values=px,
                                 attention_mask=mask, use_itm_head=False).itm_score.numpy()
        if "captioning" in models:
            cap = models["captioning"]
            if "vision" not in out:
                out["vision"] = cap.vision_model(pixel_values=px).last_hidden_state.numpy()
            out["lm_logits"] = cap(pixel_values=px, input_ids=t(with_first(inputs["ids"], DEC_ID)),
                                   attention_mask=mask).logits.numpy()
    return out


def blip_jax_outputs(config, params, inputs: Mapping, kinds=("itm", "itc_cos", "lm_logits")) -> dict:
    """The same quantities computed by blip_jax (numpy float32)."""
    import jax.numpy as jnp
    from blip_jax.models import Blip
    model = Blip(config)
    v = {"params": params}
    images = jnp.asarray(inputs["pixels"].transpose(0, 2, 3, 1))
    mask = jnp.asarray(inputs["mask"], jnp.int32)
    ids = lambda tok: jnp.asarray(with_first(inputs["ids"], tok), jnp.int32)
    tokens = model.apply(v, images, method=Blip.image_features)
    out = {"vision": np.asarray(tokens)}
    if "itm" in kinds:
        out["itm"] = np.asarray(model.apply(v, ids(ENC_ID), mask, tokens, method=Blip.itm_logits))
    if "itc_cos" in kinds:
        hidden = model.apply(v, ids(CLS_ID), mask, method=Blip.text_features)
        te = model.apply(v, hidden, method=Blip.text_embed)
        ie = model.apply(v, tokens, method=Blip.image_embed)
        out["itc_cos"] = np.asarray(ie @ te.T)
    if "lm_logits" in kinds:
        out["lm_logits"] = np.asarray(model.apply(v, ids(DEC_ID), mask, tokens, method=Blip.lm_logits))
    return out


def hf_vqa_outputs(vqa, q: Mapping, a: Mapping) -> dict:
    """HF BlipForQuestionAnswering, step by step: question states (image-grounded encoder on
    q['ids'] with [ENC] first) and the answer decoder's LM logits on a['ids'] ([DEC] first),
    cross-attending to those states under the question mask."""
    import torch
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    with torch.no_grad():
        img = vqa.vision_model(pixel_values=t(q["pixels"])).last_hidden_state
        states = vqa.text_encoder(
            input_ids=t(with_first(q["ids"], ENC_ID)), attention_mask=t(q["mask"]),
            encoder_hidden_states=img,
            encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long)).last_hidden_state
        logits = vqa.text_decoder(
            input_ids=t(with_first(a["ids"], DEC_ID)), attention_mask=t(a["mask"]),
            encoder_hidden_states=states, encoder_attention_mask=t(q["mask"])).logits
    return {"question_states": states.numpy(), "answer_lm_logits": logits.numpy()}


def blip_jax_vqa_outputs(config, params, q: Mapping, a: Mapping,
                         use_question_mask: bool = True) -> dict:
    """The same with blip_jax: Blip.multimodal_features then Blip.lm_logits on those states."""
    import jax.numpy as jnp
    from blip_jax.models import Blip
    model, v = Blip(config), {"params": params}
    tokens = model.apply(v, jnp.asarray(q["pixels"].transpose(0, 2, 3, 1)),
                         method=Blip.image_features)
    qm = jnp.asarray(q["mask"], jnp.int32)
    states = model.apply(v, jnp.asarray(with_first(q["ids"], ENC_ID), jnp.int32), qm, tokens,
                         method=Blip.multimodal_features)
    lm = model.apply(v, jnp.asarray(with_first(a["ids"], DEC_ID), jnp.int32),
                     jnp.asarray(a["mask"], jnp.int32), states,
                     context_mask=qm if use_question_mask else None, method=Blip.lm_logits)
    return {"question_states": np.asarray(states), "answer_lm_logits": np.asarray(lm)}


def max_abs_diffs(a: Mapping, b: Mapping) -> dict:
    """{name: max |a - b|} over the names both hold; shapes must agree."""
    out = {}
    for k in sorted(set(a) & set(b)):
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        assert x.shape == y.shape, f"{k}: shape {x.shape} vs {y.shape}"
        out[k] = float(np.max(np.abs(x - y)))
    return out


def report(name: str, diffs: Mapping, **info) -> None:
    """Prints the measured differences (visible with pytest -s) and, when $BLIP_PARITY_REPORT is
    set, records them there: a path ending in .json is one file (entries merged by name),
    anything else is a directory receiving <name>.json."""
    entry = {"max_abs_diff": dict(diffs), **info}
    print(f"\n[parity] {name}: " + ", ".join(f"{k}={v:.3g}" for k, v in diffs.items()))
    target = os.environ.get("BLIP_PARITY_REPORT")
    if not target:
        return
    if target.endswith(".json"):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        data = {}
        if os.path.exists(target):
            with open(target) as f:
                data = json.load(f)
        data[name] = entry
        path = target
    else:
        os.makedirs(target, exist_ok=True)
        path, data = os.path.join(target, f"{name}.json"), entry
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def torch_resize_pos_embed(pos_embed: np.ndarray, new_grid: int) -> np.ndarray:
    """[1, 1 + g*g, D] -> [1, 1 + new_grid**2, D] with torch's bicubic interpolate
    (align_corners=False); the class-token row is kept (the original release's procedure)."""
    import torch
    import torch.nn.functional as F
    pos = torch.from_numpy(np.asarray(pos_embed, np.float32))
    g = int(round((pos.shape[1] - 1) ** 0.5))
    grid = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)
    return torch.cat([pos[:, :1], grid], dim=1).numpy()


# -- VQA: the original's algorithms (salesforce/BLIP models/blip_vqa.py), restated in torch on
# HF modules. BLIP's med.py decoder loss with reduction='none' is CrossEntropyLoss(label_smoothing
# 0.1, reduction='none') over the shifted tokens (pad = -100), summed per row.

def _decoder_sequence_loss(decoder, ids, atts, states, state_atts, smoothing: float = 0.1):
    import torch
    logits = decoder(input_ids=ids, attention_mask=atts, encoder_hidden_states=states,
                     encoder_attention_mask=state_atts).logits
    targets = ids.masked_fill(ids == PAD_ID, -100)[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none",
        label_smoothing=smoothing, ignore_index=-100)
    return loss.view(ids.shape[0], -1).sum(1)


def original_question_states(vqa, q: Mapping):
    """blip_vqa.py forward's question encoding: [ENC] first, image mask all ones."""
    import torch
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    with torch.no_grad():
        img = vqa.vision_model(pixel_values=t(q["pixels"])).last_hidden_state
        return vqa.text_encoder(
            input_ids=t(with_first(q["ids"], ENC_ID)), attention_mask=t(q["mask"]),
            encoder_hidden_states=img,
            encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long)).last_hidden_state


def original_vqa_loss(vqa, q: Mapping, answers: np.ndarray, answer_mask: np.ndarray,
                      counts: list[int], weights: np.ndarray) -> float:
    """blip_vqa.py forward(train=True): question states repeated per answer (counts[b] answers
    for question b, answers packed in order), per-answer summed loss, sum(w * L) / B."""
    import torch
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    with torch.no_grad():
        states = original_question_states(vqa, q)
        rep = torch.tensor(counts)
        states = torch.repeat_interleave(states, rep, dim=0)
        atts = torch.repeat_interleave(t(q["mask"]), rep, dim=0)
        loss = _decoder_sequence_loss(vqa.text_decoder, t(with_first(answers, DEC_ID)),
                                      t(answer_mask), states, atts)
        return float((t(weights) * loss).sum() / len(counts))


def original_rank_answer(vqa, states, question_mask: np.ndarray, answer_ids: np.ndarray,
                         answer_mask: np.ndarray, k: int):
    """blip_vqa.py rank_answer: first-token probabilities of every answer from [DEC] alone,
    top k re-scored by -(summed smoothed loss). Returns (max_ids, topk_ids, log_probs_sum)."""
    import torch
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    q_atts, a_ids, a_atts = t(question_mask), t(answer_ids), t(answer_mask)
    num_q = states.shape[0]
    with torch.no_grad():
        start = a_ids[0, 0].repeat(num_q, 1)
        first = vqa.text_decoder(input_ids=start, encoder_hidden_states=states,
                                 encoder_attention_mask=q_atts).logits[:, 0, :]
        prob_first = torch.softmax(first, dim=1).index_select(1, a_ids[:, 1])
        _, topk_ids = prob_first.topk(k, dim=1)
        ids = torch.cat([a_ids.index_select(0, row) for row in topk_ids])
        atts = torch.cat([a_atts.index_select(0, row) for row in topk_ids])
        # the original's tile(x, 0, k): each question's row repeated k times, consecutively
        loss = _decoder_sequence_loss(vqa.text_decoder, ids, atts,
                                      torch.repeat_interleave(states, k, dim=0),
                                      torch.repeat_interleave(q_atts, k, dim=0))
        log_probs_sum = (-loss).view(num_q, k)
        best = log_probs_sum.argmax(dim=1)
        max_ids = topk_ids[torch.arange(num_q), best]
    return max_ids.numpy(), topk_ids.numpy(), log_probs_sum.numpy()
