"""NLVR2: the two-image model against a PyTorch re-statement of the original (tests/
nlvr_reference.py) through the original-release converter, initialisation from a pre-trained
model, and the task's configuration checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.convert import load_original
from blip_jax.evaluation import nlvr
from blip_jax.models import variants
from blip_jax.models.blip import Blip, init_params
from blip_jax.models.config import ConfigError, preset
from tests import torch_reference as ref

TOL = 1e-4  # float32 on both sides, as tests/test_parity_hf.py


def _pair_config(**kw):
    return preset("tiny", tie_encoder_decoder=False, itc_itm_heads=False, text_decoder=False,
                  image_pair=True, pair_merge_layer=1, **kw)


def test_nlvr_logits_match_the_original():
    """Random weights in the original's layout (model_base_nlvr.pth's keys) -> load_original
    reads the architecture off the keys (two-image model, merge from layer 2 of 4) -> blip_jax
    logits equal the re-stated original's within 1e-4 on padded text of three lengths."""
    torch = pytest.importorskip("torch")
    from transformers import BlipVisionConfig

    from tests import nlvr_reference
    vision = BlipVisionConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=256, image_size=32, patch_size=16,
                              layer_norm_eps=1e-6)
    model = nlvr_reference.BlipNlvr(vision, vocab=30524, hidden=128, layers=4, heads=2, ffn=256,
                                    positions=40, merge_from=2).eval()
    ref.randomize_torch_(model, 5)
    inputs = ref.make_inputs(3, 32, 12, seed=6)
    pixels1 = np.random.default_rng(7).standard_normal(inputs["pixels"].shape).astype(np.float32)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with torch.no_grad():
        want = model(t(inputs["pixels"]), t(pixels1), t(inputs["ids"]), t(inputs["mask"]),
                     ref.ENC_ID).numpy()

    config, params, extras, _ = load_original(nlvr_reference.original_state_dict(
        model, _pair_config().replace(
            vision=_pair_config().vision.__class__(image_size=32, patch_size=16, width=128,
                                                   depth=2, num_heads=2, mlp_dim=256),
            text=_pair_config().text.__class__(hidden_size=128, num_layers=4, num_heads=2,
                                               intermediate_size=256,
                                               max_position_embeddings=40),
            pair_merge_layer=2)))
    assert (config.image_pair, config.pair_merge_layer, config.text_decoder,
            config.itc_itm_heads) == (True, 2, False, False)
    assert not extras
    images = jnp.stack([inputs["pixels"].transpose(0, 2, 3, 1),
                        pixels1.transpose(0, 2, 3, 1)], axis=1)
    ids = jnp.asarray(ref.with_first(inputs["ids"], ref.CLS_ID), jnp.int32)  # [ENC] is set inside
    got = np.asarray(nlvr.pair_logits(Blip(config), params, images, ids,
                                      jnp.asarray(inputs["mask"], jnp.int32)))
    diff = float(np.abs(got - want).max())
    ref.report("nlvr_logits", {"logits": diff}, tolerance=TOL)
    assert np.ptp(want) > 100 * TOL  # the logits vary: a wrong mapping cannot hide below TOL
    assert diff <= TOL, diff
    # Swapping the images changes the answer: each branch reads its own image.
    swapped = np.asarray(nlvr.pair_logits(Blip(config), params, images[:, ::-1], ids,
                                          jnp.asarray(inputs["mask"], jnp.int32)))
    assert np.abs(swapped - got).max() > 100 * TOL


def test_nlvr_model_from_the_pretrained_model():
    """As the original's blip_nlvr.load_checkpoint: every layer's pre-trained cross-attention
    (query/key/value, output dense) is copied into both image branches, its LayerNorm kept;
    the merge layers and the classifier come from the fresh init; the rest of the encoder and
    the ViT are the pre-trained ones; the decoder and ITC/ITM heads are dropped."""
    source = preset("tiny", tie_encoder_decoder=True)
    target = _pair_config()
    pre = init_params(source, jax.random.key(0))
    fresh = init_params(target, jax.random.key(1))
    with pytest.raises(variants.VariantError, match="new_params"):
        variants.adapt_params(pre, source, target)
    got = variants.adapt_params(pre, source, target, new_params=lambda: fresh)
    assert sorted(got) == ["cls_head", "text_encoder", "vision"]
    same = lambda a, b: all(np.array_equal(x, y) for x, y in  # noqa: E731
                            zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert jax.tree.structure(got) == jax.tree.structure(fresh)
    for i in range(2):
        layer, src = got["text_encoder"][f"layer_{i}"], pre["text_encoder"][f"layer_{i}"]
        cross = layer["crossattention"]
        for b in ("branch_0", "branch_1"):
            assert same(cross[b], {k: src["crossattention"][k] for k in ("query", "key", "value", "out")})
        assert same(cross["norm"], src["crossattention"]["norm"])
        assert ("merge" in cross) == (i >= 1)
        if i >= 1:
            assert same(cross["merge"], fresh["text_encoder"][f"layer_{i}"]["crossattention"]["merge"])
        assert same(layer["attention"], src["attention"])  # the encoder's, not the decoder's
    assert same(got["cls_head"], fresh["cls_head"])
    assert same(got["vision"], pre["vision"])
    with pytest.raises(variants.VariantError, match="single-image"):
        variants.adapt_params(got, target, preset("tiny"))


def test_pair_config_is_checked():
    with pytest.raises(ConfigError, match="image_pair"):
        preset("tiny", image_pair=True, pair_merge_layer=1)  # still has the decoder and heads
    with pytest.raises(ConfigError, match="pair_merge_layer"):
        _pair_config().replace(pair_merge_layer=3)
    # The classifier is PyTorch nn.Linear's default init, U(+-1/sqrt(fan_in)), as the original's.
    head = init_params(_pair_config(), jax.random.key(0))["cls_head"]
    bound = 1 / np.sqrt(64)
    assert np.abs(head["hidden"]["kernel"]).max() <= bound
    assert np.abs(head["hidden"]["bias"]).max() > 0.5 * bound


def test_train_keeps_the_best_model_and_evaluate_scores_it(tmp_path, capsys):
    """The tiny recipe end to end at a small scale: evaluation every epoch, the best val
    accuracy's model (first reached, as the original's strict `>`) in model_best with
    best.json; a rerun resumes with that record; evaluate scores model_best on test."""
    import json

    from blip_jax import evaluate
    from blip_jax.experiments import tiny
    from blip_jax.train.trainer import train

    c = tiny.nlvr(12)
    c.data.data_dir = str(tmp_path / "data")
    c.data.synthetic_num_images = 16  # 32 statements: 4 steps per epoch at batch 8
    c.data.synthetic_eval_images = 10
    c.batch_size = 8
    c.data.workers = 0
    c.log_every_steps = 100
    c.optim.lr = 2e-3  # big steps so that the val accuracy moves between epochs
    run = tmp_path / "run"
    train(c, str(run))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    assert [s for s, _ in evals] == [4, 8, 12]
    best_value = max(a for _, a in evals)
    best = json.loads((run / "model_best" / "best.json").read_text())
    assert best == {"step": next(s for s, a in evals if a == best_value), "metric": "accuracy",
                    "value": best_value}
    assert (run / "eval" / "nlvr_result_val.json").exists()
    r = evaluate.run(c, str(run / "model_best"), split="test")
    assert r["num_examples"] == 20 and r["metrics"]["unclassified"] == 0
    assert 0 <= r["metrics"]["accuracy"] <= 100 and r["metrics"]["majority_label_accuracy"] == 50.0
    per_template = {k[len("accuracy_"):] for k in r["metrics"] if k.startswith("accuracy_")}
    from blip_jax.data import synthetic_nlvr
    assert per_template and per_template <= set(synthetic_nlvr.TEMPLATES)  # the synthetic report
    assert "image pairs with a sentence" in capsys.readouterr().out
    records = json.loads((run / "model_best" / "nlvr_result_test.json").read_text())
    assert len(records) == 20 and {"identifier", "prediction", "label"} <= set(records[0])
    from blip_jax.train.trainer import BestModel
    assert BestModel(str(run / "model_best"), "accuracy").value == best_value  # resumed runs


@pytest.mark.parametrize("change, message", [
    (dict(image_pair=False), "needs the NLVR2 model"),
    (dict(itc=1.0), "pair classifier alone"),
    (dict(task="caption"), "image_pair=True is the NLVR2 model"),
])
def test_task_and_model_must_fit(change, message):
    from blip_jax.experiments import tiny
    from blip_jax.train import trainer
    c = tiny.nlvr(10)
    if "image_pair" in change:
        c.model = tiny.caption(10).model
    if "itc" in change:
        c.loss.itc_weight = change["itc"]
    if "task" in change:
        c.task = change["task"]
    with pytest.raises(ValueError, match=message):
        trainer.check_task(c)
    trainer.check_task(tiny.nlvr(10))


def test_evaluate_refuses_a_model_without_the_pair_classifier(tmp_path):
    from blip_jax import checkpoint, evaluate
    from blip_jax.experiments import tiny
    config = preset("tiny")
    checkpoint.save_model(str(tmp_path / "m"), init_params(config, jax.random.key(0)), config)
    with pytest.raises(ValueError, match="not an NLVR2 model"):
        evaluate.run(tiny.nlvr(10), str(tmp_path / "m"))
