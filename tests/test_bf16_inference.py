"""bfloat16 inference (`--dtype bfloat16`, inference.with_dtype): the params really are bfloat16
inside the jitted calls, the commands caption and score with finite outputs, and scores stay
within a derived bfloat16 tolerance of float32.

The tolerance. bfloat16 keeps 8 significant bits: one round-to-nearest has relative error at
most u = 2^-8 = 3.9e-3. Every matmul accumulates in float32 (attention scores by
preferred_element_type, the dense layers and the attention's weighted sum by
layers.f32_accumulating_dot on CPU, rounded once to bfloat16), so a dot product over K terms
carries about the relative error of its rounded inputs and its one output rounding, O(u), not
the O(K u) of a bfloat16 running sum: the reduction sizes of the tiny model (patch 16*16*3 =
768, width 64, MLP 256, up to 35 keys) then do not enter. What does is the number R of bfloat16 roundings in series on a
path: per ViT block LayerNorm out, qkv, attention probabilities, attention out, projection,
residual add, LayerNorm, fc1, GELU, fc2, residual add (11), per text layer with
cross-attention about 18 (11 without). Independent roundings add in quadrature, so a
feature's relative RMS error is about sqrt(R) u:
  - image tokens (patch embedding, 2 blocks, final LayerNorm): R = 24, sqrt(R) u = 0.019;
  - ITC features: image R = 25 (+ vision_proj), text R = 25 (embeddings, 2 layers, text_proj):
    after the float32 L2 normalisation an error of relative size e in a random direction
    moves the cosine with the other unit vector by e / sqrt(embed_dim) RMS, so over the 16
    pairs 4 sigma: |d cos| <= 4 sqrt(e_img^2 + e_txt^2) / sqrt(embed_dim) = 0.0195;
  - ITM: the [ENC] state h (R = 24 + 2 + 2*18 + 1 = 63) feeds the 2-way head; by
    Cauchy-Schwarz |d(l1 - l0)| <= ||w1 - w0|| ||d h|| with ||d h|| <= sqrt(R) u ||h||, and
    the match probability p = sigmoid(l1 - l0) moves by at most p (1 - p) <= 1/4 of that.
These are bounds on the rounding noise, several times the measured differences (about 1.3 u
RMS on the image tokens, 4e-3 on the cosines, 1.5e-3 on the probabilities); a bfloat16
running sum over the 256-wide MLP alone would exceed the first (sqrt(256) u = 0.06).
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax import checkpoint, decoding, inference
from blip_jax import tokenizer as tok
from blip_jax.inference import Predictor, with_dtype
from blip_jax.models import init_params, preset

U = 2.0 ** -8  # bfloat16 unit roundoff


@pytest.fixture(scope="module")
def tiny():
    config = preset("tiny")
    return config, init_params(config, jax.random.key(0))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny):
    path = str(tmp_path_factory.mktemp("bf16") / "ckpt")
    checkpoint.save_model(path, *tiny[::-1])
    return path


def _float_dtypes(tree):
    return {str(x.dtype) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)}


def test_with_dtype_casts_params_once_and_sets_the_computation_dtype(tiny):
    config, params = tiny
    c16, p16 = with_dtype(config, params, "bfloat16")
    assert c16.dtype == "bfloat16" and _float_dtypes(p16) == {"bfloat16"}
    assert jax.tree_util.tree_structure(p16) == jax.tree_util.tree_structure(params)
    c32, p32 = with_dtype(c16, p16, "float32")  # float32 whatever the config said
    assert c32.dtype == "float32" and _float_dtypes(p32) == {"float32"}
    with pytest.raises(ValueError, match="'float8' is not supported for inference: use "
                                         "float32 or bfloat16"):
        with_dtype(config, params, "float8")


def test_params_are_bfloat16_inside_the_jitted_calls(ckpt, tiny):
    p = Predictor.load(ckpt, dtype="bfloat16")
    assert p.config.dtype == "bfloat16" and _float_dtypes(p.params) == {"bfloat16"}
    images = np.zeros((2, 64, 64, 3), np.float32)
    # The traced ViT: its parameter inputs are bfloat16 and its matmuls run on bfloat16.
    jaxpr = jax.make_jaxpr(lambda params, x: inference._image_tokens(p.model, params, x))(
        p.params, images)
    param_avals = [v.aval for v in jaxpr.jaxpr.invars[:-1]]
    assert {str(a.dtype) for a in param_avals} == {"bfloat16"}
    text = str(jaxpr)
    assert "dot_general" in text and "bf16[" in text
    assert p.image_tokens(images).dtype == jnp.bfloat16
    # The float32 load keeps float32 (the default).
    assert _float_dtypes(Predictor.load(ckpt).params) == {"float32"}


def test_caption_and_score_commands_in_bfloat16(ckpt, tmp_path, capsys, monkeypatch):
    from blip_jax import caption, score
    from blip_jax.demo import sample_image
    img = sample_image(str(tmp_path / "a.png"))
    seen, real_generate = [], decoding.generate

    def recording_generate(model, params, context, prefix, **options):
        seen.append((model.config.dtype, _float_dtypes(params), str(context.dtype)))
        return real_generate(model, params, context, prefix, **options)

    monkeypatch.setattr(decoding, "generate", recording_generate)
    for extra in ([], ["--top-p", "0.9", "--seed", "1"], ["--beams", "1"]):
        assert caption.main(["--checkpoint", ckpt, "--json", "--dtype", "bfloat16", *extra,
                             img]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["tokens"][0] == tok.DEC_ID and 2 <= len(out["tokens"]) <= 20
    assert seen == [("bfloat16", {"bfloat16"}, "bfloat16")] * 3

    assert score.main(["--checkpoint", ckpt, "--image", img, "--text", "a red circle",
                       "--json", "--dtype", "bfloat16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert math.isfinite(out["itm"]) and 0.0 <= out["itm"] <= 1.0
    assert math.isfinite(out["itc"]) and -1.0 <= out["itc"] <= 1.0


@pytest.mark.parametrize("command", ["caption", "score", "vqa"])
def test_unknown_dtype_is_a_one_line_user_error(ckpt, tmp_path, capsys, command):
    import importlib
    main = importlib.import_module(f"blip_jax.{command}").main
    args = {"caption": [str(tmp_path / "x.png")],
            "score": ["--image", "x.png", "--text", "a dog"],
            "vqa": ["--image", "x.png", "--question", "what?"]}[command]
    assert main(["--checkpoint", ckpt, "--dtype", "float16", *args]) == 2
    err = capsys.readouterr().err
    assert err == ("error: dtype 'float16' is not supported for inference: use float32 or "
                   "bfloat16\n")


def test_capfilt_config_dtype_is_checked():
    from blip_jax.capfilt.defaults import CapFiltConfigError, check_config, default_config
    c = default_config()
    c.captioner_checkpoint = c.filter_checkpoint = "x"
    assert c.dtype == "float32"
    c.dtype = "bfloat16"
    check_config(c)
    c.dtype = "half"
    with pytest.raises(CapFiltConfigError, match="dtype='half': must be 'float32' or 'bfloat16'"):
        check_config(c)


def test_bfloat16_scores_within_the_derived_tolerance_of_float32(tiny):
    config, params = tiny
    rng = np.random.default_rng(0)
    n = 16
    images = rng.normal(size=(n, 64, 64, 3)).astype(np.float32)
    words = "a red blue green circle square triangle on the left right top of small big".split()
    texts = [" ".join(rng.choice(words, 6)) for _ in range(n)]
    out = {}
    for dtype in ("float32", "bfloat16"):
        p = Predictor(*with_dtype(config, params, dtype), tok.BlipTokenizer())
        itm, itc = p.score(images, texts)
        tokens = np.asarray(p.image_tokens(images), np.float32)
        assert np.all(np.isfinite(itm)) and np.all(np.isfinite(itc))
        assert np.all(np.isfinite(tokens))
        out[dtype] = itm, itc, tokens
    (itm32, itc32, tok32), (itm16, itc16, tok16) = out["float32"], out["bfloat16"]

    # Image tokens: relative RMS error <= sqrt(R) u, R = 24.
    rel = np.sqrt(np.mean((tok16 - tok32) ** 2) / np.mean(tok32 ** 2))
    assert 0 < rel <= math.sqrt(24) * U, rel

    # ITC cosine: 4 sigma of sqrt(e_img^2 + e_txt^2) / sqrt(embed_dim), R = 25 each side.
    e = math.sqrt(25) * U
    itc_tol = 4 * math.sqrt(2 * e * e) / math.sqrt(config.embed_dim)
    assert np.max(np.abs(itc16 - itc32)) <= itc_tol, (np.abs(itc16 - itc32).max(), itc_tol)

    # ITM: |dp| <= 1/4 ||w1 - w0|| sqrt(R) u ||h||, R = 63 (the head's own weight rounding
    # adds sqrt(2) u ||w|| to ||w1 - w0||); h = gamma * z + beta is the last LayerNorm's output
    # with ||z|| = sqrt(hidden) (mean 0, variance 1): ||h|| <= max|gamma| sqrt(hidden) + ||beta||.
    kernel = np.asarray(params["itm_head"]["kernel"])
    w_diff = np.linalg.norm(kernel[:, 1] - kernel[:, 0]) + math.sqrt(2) * U * np.linalg.norm(kernel)
    layers = params["text_encoder"]
    norm = layers[sorted(k for k in layers if k.startswith("layer_"))[-1]]["output_norm"]
    h_norm = (np.max(np.abs(np.asarray(norm["scale"]))) * math.sqrt(config.text.hidden_size)
              + np.linalg.norm(np.asarray(norm["bias"])))
    itm_tol = 0.25 * w_diff * math.sqrt(63) * U * h_norm
    assert np.max(np.abs(itm16 - itm32)) <= itm_tol, (np.abs(itm16 - itm32).max(), itm_tol)
    assert itm_tol < 0.1  # the bound says something: probabilities here are about 0.5


def test_capfilt_runs_both_models_in_bfloat16(tmp_path):
    """config.dtype = "bfloat16": both models computing in bfloat16 on bfloat16 params; the
    scores are probabilities; the job file records the dtype (and a float32 job, as before
    the key existed, does not)."""
    import blip_jax.capfilt as capfilt
    from blip_jax.capfilt import job, output
    from blip_jax.data import prepare
    from train_utils import MICRO

    n = 8
    data_dir = str(tmp_path / "data")
    prepare.ensure_synthetic(data_dir, num_images=n, seed=0)
    for name, seed in (("captioner", 1), ("filter", 2)):
        checkpoint.save_model(str(tmp_path / name), init_params(MICRO, jax.random.key(seed)),
                              MICRO)
    c = capfilt.default_config()
    c.data_dir, c.synthetic_num_images = data_dir, n
    c.captioner_checkpoint = str(tmp_path / "captioner")
    c.filter_checkpoint = str(tmp_path / "filter")
    c.update(num_captions=1, max_length=10, min_length=5, max_tokens=24, records_per_shard=4,
             per_device_batch=2, dtype="bfloat16", output_name="bf16")
    models = job.load_models(c)
    assert models.captioner.config.dtype == models.filter.config.dtype == "bfloat16"
    assert _float_dtypes(models.captioner_params) == {"bfloat16"}
    assert _float_dtypes(models.filter_params) == {"bfloat16"}
    capfilt.run(c, str(tmp_path / "bf16"))
    results = output.load_results(str(tmp_path / "bf16"), n, 4)
    scores = [t["score"] for r in results for t in [r["web"], *r["synthetic"]]]
    assert len(scores) == 2 * n and all(0.0 <= s <= 1.0 for s in scores)
    assert output.read_json(str(tmp_path / "bf16" / output.JOB_FILE))["dtype"] == "bfloat16"
    c.dtype, c.output_name = "float32", "f32"
    capfilt.run(c, str(tmp_path / "f32"))
    assert "dtype" not in output.read_json(str(tmp_path / "f32" / output.JOB_FILE))


def test_vqa_command_in_bfloat16(tmp_path, capsys):
    from blip_jax import vqa
    from blip_jax.demo import sample_image
    config = preset("tiny").replace(decoder_context="question", itc_itm_heads=False)
    path = str(tmp_path / "vqa")
    checkpoint.save_model(path, init_params(config, jax.random.key(0)), config)
    answers = ["yes", "no", "two", "red star"]
    with open(f"{path}/answer_list.json", "w") as f:
        json.dump(answers, f)
    img = sample_image(str(tmp_path / "a.png"))
    for method in ("rank", "generate"):
        assert vqa.main(["--checkpoint", path, "--image", img, "--question", "what color?",
                         "--method", method, "--json", "--dtype", "bfloat16"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["tokens"][0] == tok.DEC_ID
        if method == "rank":
            assert out["answer"] in answers
            assert all(math.isfinite(e["score"]) for e in out["top_k"])


def test_bfloat16_dense_sums_in_float32_and_rounds_once():
    """On CPU a bfloat16 dense layer is one dot with bfloat16 operands and a float32 result
    (XLA:CPU's fast bfloat16 kernel; a bfloat16-out dot ran ~3x slower on an AVX512-BF16 core),
    and its output is the exact product rounded once: within half a bfloat16 ulp of the exact
    value plus float32 summation error (K eps32 sum|x||w|)."""
    from blip_jax.models import layers
    k = 768
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, k)), jnp.bfloat16)
    dense = layers.dense(96, ("embed", "mlp"), "d", jnp.bfloat16, 0.02)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16),
                                    dense.init(jax.random.key(0), x)["params"])
    apply = jax.jit(lambda p, x: dense.apply({"params": p}, x))
    dots = [line for line in apply.lower(params, x).as_text().splitlines() if "dot_general" in line]
    assert len(dots) == 1 and "xbf16>, tensor<" in dots[0] and dots[0].endswith("x96xf32>"), dots

    y = np.asarray(apply(params, x), np.float64)  # the bias starts at zero: y is the product
    xf = np.asarray(x, np.float64)
    wf = np.asarray(jax.tree_util.tree_leaves(params["kernel"])[0], np.float64)
    exact = xf @ wf
    half_ulp = 2.0 ** (np.floor(np.log2(np.abs(exact))) - 8)
    bound = half_ulp + k * 2.0 ** -24 * (np.abs(xf) @ np.abs(wf))
    assert np.all(np.abs(y - exact) <= bound), np.max(np.abs(y - exact) / bound)
