"""Greedy decoding: token-identical to transformers' generate on converted weights; the
key/value cache reproduces the full causal forward; the caption/score commands."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax import checkpoint, decoding, tokenizer as tok
from blip_jax.models import Blip, init_params, preset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture(scope="module")
def hf_captioner(tmp_path_factory):
    """Random HF BlipForConditionalGeneration with meaningful weight scales, saved to disk.
    [SEP]'s output bias is raised so that, with min_length 5, some (not all) captions end
    early; with min_length 0 they all end at once."""
    torch.manual_seed(0)
    cfg = transformers.BlipConfig(
        vision_config=dict(SMALL, image_size=64, patch_size=16, layer_norm_eps=1e-6),
        text_config=dict(SMALL, max_position_embeddings=64))
    model = transformers.BlipForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or "embedding" in name:
                p.normal_(0.0, 0.05)
        model.text_decoder.cls.predictions.bias[tok.SEP_ID] = 2.2
    path = tmp_path_factory.mktemp("hf_cap")
    model.save_pretrained(path)
    return model, str(path)


def _images(n, size=64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("min_length", [0, 5])
def test_greedy_matches_transformers_generate(hf_captioner, min_length):
    from blip_jax.convert import load_hf
    hf, path = hf_captioner
    config, params, _ = load_hf(path)
    images = _images(6)
    with torch.no_grad():
        ref = hf.generate(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
                          max_length=20, min_length=min_length, num_beams=1,
                          do_sample=False).numpy()
    model = Blip(config)
    ctx = model.apply({"params": params}, jnp.asarray(images), method=Blip.image_features)
    ours = np.asarray(decoding.greedy_decode(model, params, ctx, jnp.array([tok.DEC_ID]),
                                             max_length=20, min_length=min_length))
    ended = [tok.SEP_ID in row for row in ref.tolist()]
    assert any(ended) and (min_length == 0 or not all(ended)), "fixture lost its early stops"
    # HF trims columns after the longest sequence; both pad with 0 after [SEP].
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    assert np.all(ours[:, ref.shape[1]:] == tok.PAD_ID)


def test_cached_decoding_equals_full_forward():
    """Logits from the incremental cache equal the full causal forward at every position."""
    config = preset("tiny", tie_encoder_decoder=True)
    params = init_params(config, jax.random.key(1))
    model = Blip(config)
    images = jnp.asarray(_images(2))
    ctx = model.apply({"params": params}, images, method=Blip.image_features)
    ids = jnp.asarray(np.random.default_rng(0).integers(1000, 30000, (2, 9)), jnp.int32)
    ids = ids.at[:, 0].set(tok.DEC_ID)
    full = model.apply({"params": params}, ids, jnp.ones_like(ids), ctx, method=Blip.lm_logits)
    cache = decoding.init_cache(model, params, ctx, max_length=12)
    # Prompt of 4 tokens, then one token at a time.
    logits, state = model.apply({"params": params, "cache": cache}, ids[:, :4],
                                jnp.arange(4)[None], ctx, method=Blip.decode_logits,
                                mutable=["cache"])
    steps = [logits]
    cache = state["cache"]
    for t in range(4, 9):
        logits, state = model.apply({"params": params, "cache": cache}, ids[:, t:t + 1],
                                    jnp.full((1, 1), t), None, method=Blip.decode_logits,
                                    mutable=["cache"])
        cache = state["cache"]
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-4, rtol=0)


def test_caption_and_score_commands(tmp_path, capsys):
    from blip_jax import caption, score
    from blip_jax.demo import sample_image
    from blip_jax.inference import Predictor
    config = preset("tiny")
    ckpt = str(tmp_path / "ckpt")
    checkpoint.save_model(ckpt, init_params(config, jax.random.key(0)), config)
    img = sample_image(str(tmp_path / "a.png"))
    assert caption.main(["--checkpoint", ckpt, "--json", "--prompt", "", img, img]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["image"] for x in lines] == [img, img]
    assert lines[0]["tokens"][0] == tok.DEC_ID and 2 <= len(lines[0]["tokens"]) <= 20
    assert lines[0]["caption"] == tok.BlipTokenizer().decode(lines[0]["tokens"])

    assert score.main(["--checkpoint", ckpt, "--image", img, "--text", "a red circle",
                       "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # The command's number is the model's own softmax ITM probability ([ENC] first).
    p = Predictor.load(ckpt)
    images = p.load_images([img])
    ids, mask = p.tokenizer.encode(["a red circle"], 35, bos_id=tok.ENC_ID)
    model = Blip(config)
    logits = model.apply({"params": p.params}, jnp.asarray(ids), jnp.asarray(mask),
                         model.apply({"params": p.params}, jnp.asarray(images),
                                     method=Blip.image_features), method=Blip.itm_logits)
    assert out["itm"] == pytest.approx(float(jax.nn.softmax(logits)[0, 1]), abs=1e-5)
    assert -1.0 <= out["itc"] <= 1.0

    # A missing image is reported, not a crash.
    assert caption.main(["--checkpoint", ckpt, str(tmp_path / "missing.png")]) == 1
    assert "missing.png" in capsys.readouterr().err
