"""A pre-trained (tied) model becomes a captioner / retrieval model: blip_jax.models.variants,
the LM-only train step of a captioner without text encoder, and the captioning prompt in the
training data."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax import tokenizer as tok
from blip_jax.models import variants
from blip_jax.models.blip import Blip, init_params
from blip_jax.models.vit import resize_pos_embed
from blip_jax.train import trainer
from train_utils import MICRO, micro_config, random_batch

CAPTIONER = MICRO.replace(tie_encoder_decoder=False, text_encoder=False, itc_itm_heads=False)
RETRIEVAL = MICRO.replace(tie_encoder_decoder=False, text_decoder=False)


@pytest.fixture(scope="module")
def tied():
    params = init_params(MICRO, jax.random.key(3))
    # Distinct decoder self-attention, so a mix-up of the two attentions cannot pass.
    params = jax.tree_util.tree_map(lambda x: x, params)
    for name, layer in params["text_encoder"].items():
        if name.startswith("layer_"):
            layer["decoder_attention"] = jax.tree_util.tree_map(
                lambda x: x + 0.05, layer["decoder_attention"])
    return params


def _inputs():
    b = random_batch(batch_size=3, length=6, image_size=MICRO.vision.image_size, seed=1)
    return jnp.asarray(b["image"]), jnp.asarray(b["text_ids"]), jnp.asarray(b["text_mask"])


def test_untied_captioner_and_retrieval_compute_what_the_tied_model_computes(tied):
    images, ids, mask = _inputs()

    def run(config, params, fn):
        return Blip(config).apply({"params": params}, method=fn)

    def lm(m):
        return m.lm_logits(ids.at[:, 0].set(tok.DEC_ID), mask, m.image_features(images))

    def itm(m):
        return m.itm_logits(ids.at[:, 0].set(tok.ENC_ID), mask, m.image_features(images))

    def itc(m):
        return m.text_embed(m.text_features(ids, mask)), m.image_embed(m.image_features(images))

    cap = variants.adapt_params(tied, MICRO, CAPTIONER)
    ret = variants.adapt_params(tied, MICRO, RETRIEVAL)
    assert set(cap) == {"vision", "text_decoder"}
    assert set(ret) == {"vision", "text_encoder", "vision_proj", "text_proj", "itm_head", "temp"}
    # Same computation, rearranged parameters: float32 round-off only (atol 1e-5).
    np.testing.assert_allclose(run(CAPTIONER, cap, lm), run(MICRO, tied, lm), atol=1e-5)
    np.testing.assert_allclose(run(RETRIEVAL, ret, itm), run(MICRO, tied, itm), atol=1e-5)
    for a, b in zip(run(RETRIEVAL, ret, itc), run(MICRO, tied, itc)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_missing_parts_and_retying_are_errors(tied):
    cap = variants.adapt_params(tied, MICRO, CAPTIONER)
    with pytest.raises(variants.VariantError, match="text_encoder"):
        variants.adapt_params(cap, CAPTIONER, RETRIEVAL)
    with pytest.raises(variants.VariantError, match="tied"):
        variants.adapt_params(cap, CAPTIONER, MICRO)


def test_image_size_change_interpolates_positions(tied):
    bigger = RETRIEVAL.replace(vision=dataclasses.replace(MICRO.vision, image_size=64))
    out = variants.adapt_params(tied, MICRO, bigger)
    assert out["vision"]["pos_embed"].shape == (1, 1 + 4 * 4, MICRO.vision.width)
    np.testing.assert_array_equal(out["vision"]["pos_embed"],
                                  resize_pos_embed(np.asarray(tied["vision"]["pos_embed"]), 4))


def test_captioner_trains_lm_only_without_text_encoder(tied):
    """task caption: no momentum model, no queues; LM loss only; the prompt's tokens excluded."""
    c = micro_config(batch_size=8, itc_weight=0.0, itm_weight=0.0, prompt="a picture of ")
    c.model = CAPTIONER.to_dict()
    c.task = "caption"
    c.optim.lr = 1e-3
    setup = trainer.build(c, steps_per_epoch=10,
                          init_params=variants.adapt_params(tied, MICRO, CAPTIONER))
    assert setup.state.momentum is None and setup.state.image_queue is None
    assert setup.loss.prompt_length == 3
    batch = random_batch(batch_size=8, length=8, image_size=MICRO.vision.image_size)
    state, losses = setup.state, []
    for _ in range(5):
        state, metrics = setup.step_fn(state, batch)
        losses.append(float(metrics["loss_lm"]))
    assert set(k for k in metrics if k.startswith("loss_")) == {"loss_lm"}
    assert losses[-1] < losses[0] - 0.1, losses  # it fits the fixed batch


def test_training_data_prepends_the_prompt(tmp_path):
    from blip_jax.data import pipeline, prepare

    data_dir = str(tmp_path)
    name = prepare.ensure_synthetic(data_dir, num_images=40, noise_rate=0.0, seed=0)
    loader = pipeline.make_train_loader(data_dir, [(name, "train_clean")], global_batch_size=4,
                                        image_size=32, max_tokens=24, randaug=False, flip="none",
                                        prompt="a picture of ")
    batch = next(iter(loader))
    words = tok.BlipTokenizer().batch_decode(batch["text_ids"][:, 1:])
    assert all(w.startswith("a picture of ") for w in words), words


def test_vqa_model_from_the_pretrained_model(tied):
    """The VQA variant: question encoder <- the tied model's encoder, answer decoder <- its
    decoder (with decoder_attention as self-attention), no ITC/ITM heads."""
    vqa_cfg = MICRO.replace(tie_encoder_decoder=False, itc_itm_heads=False,
                            decoder_context="question")
    vqa = variants.adapt_params(tied, MICRO, vqa_cfg)
    assert set(vqa) == {"vision", "text_encoder", "text_decoder"}
    from blip_jax.checkpoint import check_params_fit
    check_params_fit(vqa, vqa_cfg)
    images, ids, mask = _inputs()

    def answer_logits(m):  # the decoder reading the encoder's question states
        states = m.multimodal_features(ids.at[:, 0].set(tok.ENC_ID), mask, m.image_features(images))
        return m.lm_logits(ids.at[:, 0].set(tok.DEC_ID), mask, states, mask)

    got = Blip(vqa_cfg).apply({"params": vqa}, method=answer_logits)
    want = Blip(MICRO).apply({"params": tied}, method=answer_logits)
    np.testing.assert_allclose(got, want, atol=1e-5)
