"""Numerical parity of blip_jax with HF transformers BLIP (random weights, float32 on CPU).

HF models are built with random weights (tests/torch_reference.py re-draws every parameter with a
meaningful spread), written with `save_pretrained`, converted with `blip_jax.convert.load_hf`
and run on the same inputs: a batch whose text masks are padded differently per row.

Tolerance: 1e-4 max absolute difference for every output (float32 on both sides).
`pytest -s` prints the measured differences; with $BLIP_PARITY_REPORT set they are also written
as JSON (see torch_reference.report).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

from blip_jax.checkpoint import check_params_fit  # noqa: E402
from blip_jax.convert import load_hf  # noqa: E402

TOL = 1e-4
OUTPUTS = ("vision", "itm", "itc_cos", "lm_logits")


def _convert_pair(hf_cfg, seed, tmp_path_factory, name):
    """HF retrieval + captioning models sharing their vision weights -> one blip_jax tree
    holding vision, text encoder, text decoder and heads."""
    models = ref.hf_models(hf_cfg, seed)
    loaded = {}
    for kind, model in models.items():
        d = str(tmp_path_factory.mktemp(f"{name}_{kind}"))
        model.save_pretrained(d)
        loaded[kind] = load_hf(d)
    (rcfg, rparams, rrep), (ccfg, cparams, crep) = loaded["retrieval"], loaded["captioning"]
    assert rcfg.text_encoder and not rcfg.text_decoder and rcfg.itc_itm_heads
    assert ccfg.text_decoder and not ccfg.text_encoder and not ccfg.itc_itm_heads
    assert rrep.defaulted == ["temp"] and not crep.defaulted
    assert not rrep.interpolated and not crep.interpolated
    # Both HF models hold the same vision weights: both conversions must agree on them.
    for a, b in zip(sorted(_leaves(rparams["vision"])), sorted(_leaves(cparams["vision"]))):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1], err_msg=a[0])
    config = rcfg.replace(text_decoder=True)
    params = dict(rparams, text_decoder=cparams["text_decoder"])
    check_params_fit(params, config, what="merged conversion")
    return models, config, params


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", np.asarray(v)


def _check(name, hf, jx, **info):
    assert hf["itc_cos"].shape == (len(hf["itm"]),) * 2, "ITC must score every image-text pair"
    diffs = ref.max_abs_diffs(hf, jx)
    assert set(diffs) == set(OUTPUTS)
    ref.report(name, diffs, tolerance=TOL,
               ref_max_abs={k: float(np.abs(hf[k]).max()) for k in OUTPUTS}, **info)
    bad = {k: v for k, v in diffs.items() if not v <= TOL}
    assert not bad, f"{name}: max abs differences above {TOL}: {bad}"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    hf_cfg = ref.hf_config(image_size=224, vision_eps=1e-6)
    models, config, params = _convert_pair(hf_cfg, 0, tmp_path_factory, "small")
    assert config.vision.layer_norm_eps == 1e-6 and config.text.num_heads == 4
    inputs = ref.make_inputs(3, 224, 12, seed=1)
    assert inputs["mask"].sum(1).tolist() == [12, 9, 6]  # padded rows
    return ref.hf_outputs(models, inputs), ref.blip_jax_outputs(config, params, inputs)


def test_small_parity(small):
    hf, jx = small
    _check("small_224", hf, jx, config="width 256, 4+4 layers, 224px, batch 3")


@pytest.mark.parametrize("name", OUTPUTS)
def test_small_outputs_are_meaningful(small, name):
    """The references are not degenerate: they vary across positions/examples by much more than
    the tolerance, so a wrong mapping cannot hide below it."""
    hf, _ = small
    assert np.ptp(hf[name]) > 100 * TOL
    if name == "itc_cos":  # cosines, not all equal
        assert np.all(np.abs(hf[name]) <= 1 + 1e-6)


def test_vqa_conversion(tmp_path):
    """BlipForQuestionAnswering: the answer decoder cross-attends to the question encoder's
    multimodal states, masked by the (padded) question mask.

    transformers 5.x drops `encoder_attention_mask` inside BLIP's text cross-attention (see
    torch_reference.patch_cross_attention_mask), so the HF reference is patched to honour it, as
    the original release does. Without padding the bug is invisible: that case is checked
    against unpatched HF too."""
    hf_cfg = ref.hf_config(image_size=96, text_layers=3, vision_depth=2)
    vqa = ref.hf_models(hf_cfg, 5, kinds=("vqa",))["vqa"]
    vqa.save_pretrained(tmp_path)
    config, params, _ = load_hf(str(tmp_path))
    assert config.decoder_context == "question" and config.text_encoder and config.text_decoder
    assert not config.itc_itm_heads and not config.tie_encoder_decoder
    a = ref.make_inputs(3, 96, 7, seed=7, valid_lengths=[4, 7, 3])

    # 1. Unpadded questions: plain (unpatched) HF is a valid reference.
    q_full = ref.make_inputs(3, 96, 10, seed=6, valid_lengths=[10, 10, 10])
    diffs_full = ref.max_abs_diffs(ref.hf_vqa_outputs(vqa, q_full, a),
                                   ref.blip_jax_vqa_outputs(config, params, q_full, a))

    # 2. Padded questions (rows of 10, 7 and 4 tokens) against HF with the mask honoured.
    q = ref.make_inputs(3, 96, 10, seed=6)
    hf_unpatched = ref.hf_vqa_outputs(vqa, q, a)["answer_lm_logits"]
    assert ref.patch_cross_attention_mask(vqa) == 2 * 3  # encoder and decoder layers
    hf = ref.hf_vqa_outputs(vqa, q, a)
    diffs = ref.max_abs_diffs(hf, ref.blip_jax_vqa_outputs(config, params, q, a))
    hf_ignores_mask = bool(np.abs(hf_unpatched - hf["answer_lm_logits"]).max() > 100 * TOL)
    ref.report("vqa_small_96", {**diffs, **{f"unpadded_{k}": d for k, d in diffs_full.items()}},
               tolerance=TOL, hf_unpatched_ignores_encoder_attention_mask=hf_ignores_mask)
    assert all(d <= TOL for d in diffs_full.values()), diffs_full
    assert all(d <= TOL for d in diffs.values()), diffs
    # The question mask matters here, so a decoder ignoring it would be caught.
    unmasked = ref.blip_jax_vqa_outputs(config, params, q, a, use_question_mask=False)
    assert np.abs(unmasked["answer_lm_logits"] - hf["answer_lm_logits"]).max() > 100 * TOL


@pytest.mark.slow
def test_base_parity(tmp_path_factory):
    """ViT-B/16 at 384 px + BERT-base (HF default vision LayerNorm eps 1e-5), batch 2."""
    torch.manual_seed(0)
    hf_cfg = ref.hf_config(vision_width=768, vision_depth=12, vision_heads=12, vision_mlp=3072,
                           image_size=384, vision_eps=1e-5, text_hidden=768, text_layers=12,
                           text_heads=12, text_ffn=3072, max_positions=512)
    models, config, params = _convert_pair(hf_cfg, 10, tmp_path_factory, "base")
    assert config.vision.num_tokens == 577 and config.vision.layer_norm_eps == 1e-5
    inputs = ref.make_inputs(2, 384, 20, seed=11)
    hf = ref.hf_outputs(models, inputs)
    del models
    jx = ref.blip_jax_outputs(config, params, inputs)
    _check("base_384", hf, jx, config="ViT-B/16 384px + BERT-base, batch 2")
