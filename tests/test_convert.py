"""Weight conversion: export to HF and back, the original-release .pth layout, orbax model
checkpoints, error messages for checkpoints that do not fit, and the tied pre-training tree.

Tolerances: outputs compared with transformers within 1e-4 max abs (float32); conversions
that only move tensors must be exact; the interpolated position table within 1e-5 of
torch.nn.functional.interpolate(mode='bicubic', align_corners=False).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

from blip_jax.checkpoint import CheckpointMismatchError, load_model, save_model  # noqa: E402
from blip_jax.convert import export_hf, load_hf, load_original, mapping  # noqa: E402
from blip_jax.convert.importer import MOMENTUM_MODULES, import_state_dict, momentum_config  # noqa: E402
from blip_jax.models import Blip, abstract_params, preset  # noqa: E402
from flax import linen as nn  # noqa: E402

TOL = 1e-4
POS_TOL = 1e-5


def _random_params(config, seed):
    """Random params of `config` with every leaf meaningful (no zero biases, no unit scales);
    the tree structure is the model's own (abstract_params is init_params without the compute)."""
    return ref.randomize_params(nn.meta.unbox(abstract_params(config)), seed)


def _flat(tree):
    return {"/".join(p): np.asarray(v) for p, v in mapping.flatten(tree).items()}


def _assert_trees_equal(a, b, what, exclude=()):
    fa = {k: v for k, v in _flat(a).items() if not k.startswith(exclude)}
    fb = {k: v for k, v in _flat(b).items() if not k.startswith(exclude)}
    assert sorted(fa) == sorted(fb), f"{what}: {sorted(set(fa) ^ set(fb))}"
    for k in fa:
        assert fa[k].shape == fb[k].shape, f"{what}: {k} {fa[k].shape} vs {fb[k].shape}"
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=f"{what}: {k}")


def _tied_to_untied(params):
    """The downstream (untied) view of a tied tree: a separate decoder holding copies of the
    shared tensors, its own self-attention and the LM head."""
    enc = {k: v for k, v in params["text_encoder"].items() if k != "lm_head"}
    dec = {"embeddings": enc["embeddings"], "lm_head": params["text_encoder"]["lm_head"]}
    for name, layer in enc.items():
        if name.startswith("layer_"):
            dec[name] = {k: v for k, v in layer.items() if k != "decoder_attention"}
            dec[name]["attention"] = layer["decoder_attention"]
            enc[name] = {k: v for k, v in layer.items() if k != "decoder_attention"}
    return dict(params, text_encoder=enc, text_decoder=dec)


# -- export to HF, load with transformers --------------------------------------------------------

HF_CLASSES = {"retrieval": "BlipForImageTextRetrieval", "captioning": "BlipForConditionalGeneration",
              "vqa": "BlipForQuestionAnswering"}


@pytest.mark.parametrize("tied,task", [(False, "retrieval"), (False, "captioning"),
                                       (False, "vqa"), (True, "captioning"), (True, "retrieval")])
def test_export_hf_loads_in_transformers(tmp_path, tied, task):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = preset("tiny", tie_encoder_decoder=tied,
                    decoder_context="question" if task == "vqa" else "image")
    params = _random_params(config, 3 + tied)
    export_hf(params, config, str(tmp_path), task)

    cls = getattr(transformers, HF_CLASSES[task])
    model, info = cls.from_pretrained(str(tmp_path), output_loading_info=True)
    model.eval()
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                         "error_msgs")), info
    # Every exported tensor arrived in transformers unchanged (transformers' own view).
    hf_sd = model.state_dict()
    for path, value in mapping.flatten(params).items():
        key = mapping.torch_key(path, mapping.HF, tied)
        if key in hf_sd:
            np.testing.assert_array_equal(hf_sd[key].numpy(), mapping.to_torch(path, value),
                                          err_msg=key)

    size = config.vision.image_size
    if task == "vqa":
        q = ref.make_inputs(3, size, 10, seed=20)
        a = ref.make_inputs(3, size, 10, seed=21, valid_lengths=[6, 3, 10])
        ref.patch_cross_attention_mask(model)  # transformers 5.x drops the question mask
        hf = ref.hf_vqa_outputs(model, q, a)
        jx = ref.blip_jax_vqa_outputs(config, params, q, a)
    else:
        inputs = ref.make_inputs(3, size, 10, seed=22)
        hf = ref.hf_outputs({task: model}, inputs)
        kinds = ("itm", "itc_cos") if task == "retrieval" else ("lm_logits",)
        jx = ref.blip_jax_outputs(config, params, inputs, kinds=kinds)
        assert set(hf) == {"vision", *kinds}
    diffs = ref.max_abs_diffs(hf, jx)
    print(f"\nexport {task} tied={tied}: {diffs}")
    assert diffs and all(d <= TOL for d in diffs.values()), diffs

    # ... and load_hf reads the directory back exactly (a tied tree comes back untied).
    config2, params2, report = load_hf(str(tmp_path))
    source = _tied_to_untied(params) if tied else params
    keep = {"retrieval": ("vision", "text_encoder", "vision_proj", "text_proj", "itm_head"),
            "captioning": ("vision", "text_decoder"),
            "vqa": ("vision", "text_encoder", "text_decoder")}[task]
    _assert_trees_equal({k: v for k, v in params2.items() if k != "temp"},
                        {k: source[k] for k in keep}, f"load_hf after export {task}")
    assert config2.vision == config.vision
    assert config2.text == config.text


# -- the original release's .pth layout ----------------------------------------------------------

FILE_SIZE, LOAD_SIZE = 64, 96  # patch grid 4 in the file, 6 in the model (like 224 -> 384)
QUEUE = 48


@pytest.fixture(scope="module")
def original_file(tmp_path_factory):
    """A pre-training .pth written the way the original release writes one."""
    torch = pytest.importorskip("torch")
    config = preset("tiny", tie_encoder_decoder=True)
    assert config.vision.image_size == FILE_SIZE
    params = _random_params(config, 7)
    sd = mapping.export_state_dict(params, mapping.ORIGINAL, tied=True)
    mom = _random_params(momentum_config(config), 8)
    mom = {k: mom[k] for k in MOMENTUM_MODULES}
    for key, value in mapping.export_state_dict(mom, mapping.ORIGINAL, tied=False).items():
        top, _, rest = key.partition(".")
        sd[f"{top}_m.{rest}"] = value
    rng = np.random.default_rng(9)
    for name in ("image_queue", "text_queue"):
        q = rng.standard_normal((config.embed_dim, QUEUE)).astype(np.float32)
        sd[name] = q / np.linalg.norm(q, axis=0, keepdims=True)
    positions = np.arange(config.text.max_position_embeddings)[None]
    for prefix in ("text_encoder.", "text_decoder.bert.", "text_encoder_m."):
        sd[prefix + "embeddings.position_ids"] = positions
    sd["queue_ptr"] = np.array([16])
    state = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    path = str(tmp_path_factory.mktemp("orig") / "model_base.pth")
    torch.save({"model": state, "epoch": 3, "config": {"image_size": FILE_SIZE}}, path)
    return dict(path=path, config=config, params=params, momentum=mom, sd=sd)


def _expected_at(params, new_grid):
    """`params` with the position table resized by torch's bicubic interpolate."""
    vision = dict(params["vision"])
    vision["pos_embed"] = ref.torch_resize_pos_embed(np.asarray(vision["pos_embed"]), new_grid)
    return dict(params, vision=vision)


def test_load_original_places_every_tensor(original_file):
    f = original_file
    config = f["config"].replace(
        vision=dataclasses.replace(f["config"].vision, image_size=LOAD_SIZE))
    cfg, params, extras, report = load_original(f["path"], config=f["config"], image_size=LOAD_SIZE)
    assert cfg == config

    # One copy of each shared tensor: no separate decoder in a tied tree.
    assert "text_decoder" not in params
    _assert_trees_equal(params, _expected_at(f["params"], 6), "params", exclude=("vision/pos_embed",))
    grid = 6
    for got, want in ((params, f["params"]), (extras["momentum"], f["momentum"])):
        pos = np.asarray(got["vision"]["pos_embed"])
        assert pos.shape == (1, 1 + grid * grid, config.vision.width)
        expected = ref.torch_resize_pos_embed(np.asarray(want["vision"]["pos_embed"]), grid)
        np.testing.assert_allclose(pos, expected, atol=POS_TOL, rtol=0)
        np.testing.assert_array_equal(pos[:, 0], np.asarray(want["vision"]["pos_embed"])[:, 0])
    assert len(report.interpolated) == 1 and "visual_encoder.pos_embed" in report.interpolated[0]

    # Every duplicate of a tied tensor in the file was recognised as such.
    dup_keys = [k for k in f["sd"] if k.startswith("text_decoder.bert.")
                and ".attention." not in k and not k.endswith("position_ids")]
    assert report.deduplicated == len(dup_keys) + 1  # + the LM output layer (word embeddings)
    assert set(report.ignored) >= {"image_queue", "text_queue", "queue_ptr",
                                   "text_encoder.embeddings.position_ids",
                                   "text_decoder.cls.predictions.decoder.bias"}

    # Momentum copies (different values) in extras; queues as [Q, E] rows.
    _assert_trees_equal(extras["momentum"], _expected_at(f["momentum"], grid), "momentum",
                        exclude=("vision/pos_embed",))
    assert not np.allclose(extras["momentum"]["text_proj"]["kernel"], params["text_proj"]["kernel"])
    for name in ("image_queue", "text_queue"):
        assert extras[name].shape == (QUEUE, config.embed_dim)
        np.testing.assert_array_equal(extras[name], f["sd"][name].T)
    assert int(extras["queue_ptr"]) == 16


def test_load_original_infers_the_architecture(original_file):
    """Without a config: everything but the head count is read off the tensor shapes (heads
    follow the width/64 convention of ViT-B/L and BERT-base; the init std of random init is not
    in a .pth and keeps its default)."""
    f = original_file
    cfg, _, _, _ = load_original(f["path"], image_size=LOAD_SIZE)
    want = f["config"]
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.width, cfg.vision.depth,
            cfg.vision.mlp_dim) == (LOAD_SIZE, 16, want.vision.width, want.vision.depth,
                                    want.vision.mlp_dim)
    # A .pth carries no dropout: inferred configs take the original's 0.1 (med_config.json).
    assert cfg.text.dropout_rate == cfg.text.attention_dropout_rate == 0.1
    assert dataclasses.replace(cfg.text, num_heads=want.text.num_heads, init_std=want.text.init_std,
                               dropout_rate=want.text.dropout_rate,
                               attention_dropout_rate=want.text.attention_dropout_rate) == want.text
    assert (cfg.tie_encoder_decoder, cfg.text_encoder, cfg.text_decoder, cfg.itc_itm_heads,
            cfg.decoder_context, cfg.embed_dim) == (True, True, True, True, "image", want.embed_dim)


def test_original_and_hf_routes_agree(original_file, tmp_path):
    """The same tensors written in the HF layout (exported at the file's resolution) and read
    with load_hf at the model's resolution give the same params and outputs as load_original."""
    pytest.importorskip("torch")
    f = original_file
    cfg_o, params_o, _, _ = load_original(f["path"], config=f["config"], image_size=LOAD_SIZE)
    routes = {}
    for task in ("retrieval", "captioning"):
        d = str(tmp_path / task)
        export_hf(f["params"], f["config"], d, task)
        routes[task] = load_hf(d, image_size=LOAD_SIZE)
    cfg_r, params_r, rep_r = routes["retrieval"]
    cfg_c, params_c, _ = routes["captioning"]
    assert rep_r.interpolated and cfg_r.vision == cfg_o.vision == cfg_c.vision

    untied = _tied_to_untied(params_o)
    shared = ("vision", "text_encoder", "vision_proj", "text_proj", "itm_head")
    _assert_trees_equal({k: params_r[k] for k in shared}, {k: untied[k] for k in shared},
                        "retrieval route")
    _assert_trees_equal({k: params_c[k] for k in ("vision", "text_decoder")},
                        {k: untied[k] for k in ("vision", "text_decoder")}, "captioning route")

    inputs = ref.make_inputs(3, LOAD_SIZE, 10, seed=30)
    out_o = ref.blip_jax_outputs(cfg_o, params_o, inputs)
    out_r = ref.blip_jax_outputs(cfg_r, params_r, inputs, kinds=("itm", "itc_cos"))
    out_c = ref.blip_jax_outputs(cfg_c, params_c, inputs, kinds=("lm_logits",))
    for other in (out_r, out_c):
        for k, d in ref.max_abs_diffs(out_o, other).items():
            assert d <= 1e-6, (k, d)
    assert set(out_r) | set(out_c) == set(out_o)


def test_tied_copies_that_differ_are_rejected(original_file):
    """Forcing tie_encoder_decoder=True on a file whose decoder copy differs must not silently
    drop the decoder's weights."""
    f = original_file
    sd = {k: np.array(v) for k, v in f["sd"].items()}
    key = "text_decoder.bert.encoder.layer.1.crossattention.self.value.weight"
    sd[key] = sd[key] + 0.01
    with pytest.raises(CheckpointMismatchError) as e:
        load_original(sd, config=f["config"])
    assert key in str(e.value) and "differ" in str(e.value)


# -- orbax model checkpoints ---------------------------------------------------------------------

def test_save_load_model_roundtrip(original_file, tmp_path):
    f = original_file
    config, params, extras, _ = load_original(f["path"], config=f["config"], image_size=LOAD_SIZE)
    save_model(str(tmp_path / "ckpt"), params, config, extras=extras, source=f["path"])
    cfg2, params2, extras2 = load_model(str(tmp_path / "ckpt"), with_extras=True)
    assert cfg2 == config
    _assert_trees_equal(params2, params, "params")
    _assert_trees_equal(extras2, extras, "extras")
    assert np.asarray(extras2["queue_ptr"]).dtype == np.int32
    cfg3, params3 = load_model(str(tmp_path / "ckpt"))
    assert cfg3 == config
    _assert_trees_equal(params3, params, "params without extras")


def test_save_load_model_without_extras(tmp_path):
    config = preset("tiny")
    params = _random_params(config, 11)
    save_model(str(tmp_path), params, config)
    cfg2, params2, extras = load_model(str(tmp_path), with_extras=True)
    assert cfg2 == config and extras == {}
    _assert_trees_equal(params2, params, "params")


# -- checkpoints that do not fit -----------------------------------------------------------------

def _broken(sd):
    sd = dict(sd)
    del sd["text_encoder.encoder.layer.1.crossattention.self.key.bias"]
    sd["text_encoder.encoder.layer.5.output.dense.weight"] = np.zeros((64, 256), np.float32)
    sd["itm_head.weight"] = np.zeros((3, 64), np.float32)
    return sd


def _assert_names_all(message):
    assert "text_encoder.encoder.layer.1.crossattention.self.key.bias" in message
    assert "text_encoder.encoder.layer.5.output.dense.weight" in message
    # The wrong shape, in the file's layout, next to the one the model wants.
    assert "itm_head.weight: (3, 64)" in message and "(2, 64)" in message
    assert "missing" in message and "unexpected" in message and "shape" in message


@pytest.mark.parametrize("layout", [mapping.ORIGINAL, mapping.HF])
def test_mismatched_state_dict_names_every_problem(layout, tmp_path):
    config = preset("tiny")
    sd = _broken(mapping.export_state_dict(_random_params(config, 12), layout, tied=False))
    with pytest.raises(CheckpointMismatchError) as e:
        if layout == mapping.ORIGINAL:
            load_original(sd, config=config)
        else:
            from safetensors.numpy import save_file
            export_hf(_random_params(config, 12), config, str(tmp_path), "retrieval")
            hf_sd = {k: v for k, v in sd.items() if not k.startswith("text_decoder.")}
            save_file({k: np.ascontiguousarray(v) for k, v in hf_sd.items()},
                      str(tmp_path / "model.safetensors"))
            load_hf(str(tmp_path))
    _assert_names_all(str(e.value))


def test_unbroken_state_dict_imports():
    """The control for the test above: the same state dict without the damage imports."""
    config = preset("tiny")
    params = _random_params(config, 12)
    sd = mapping.export_state_dict(params, mapping.ORIGINAL, tied=False)
    got, report = import_state_dict(sd, config, mapping.ORIGINAL)
    _assert_trees_equal(got, params, "import")
    assert not report.defaulted and not report.interpolated


def test_load_model_with_edited_config(tmp_path):
    config = preset("tiny")
    save_model(str(tmp_path), _random_params(config, 13), config)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["model"]["vision"]["width"] = 96
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointMismatchError) as e:
        load_model(str(tmp_path))
    msg = str(e.value)
    assert "vision width 96" in msg
    assert "vision/block_0/attn/qkv/kernel: (64, 192)" in msg and "model wants (96, 288)" in msg


def test_missing_files_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "model_base.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_original(str(missing))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_hf(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_model(str(tmp_path / "nowhere"))
    # A config.json without weights next to it.
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BlipForImageTextRetrieval"]}))
    with pytest.raises(FileNotFoundError, match=str(d)):
        load_hf(str(d))


# -- the tied pre-training tree --------------------------------------------------------------------

def _losses(config, images, mask, enc, dec):
    model = Blip(config)
    labels = jnp.array([1, 0, 1])

    def itm(p):
        tokens = model.apply({"params": p}, images, method=Blip.image_features)
        logits = model.apply({"params": p}, enc, mask, tokens, method=Blip.itm_logits)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    def lm(p):
        tokens = model.apply({"params": p}, images, method=Blip.image_features)
        logits = model.apply({"params": p}, dec, mask, tokens, method=Blip.lm_logits)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), dec[:, 1:, None], -1)[..., 0]
        weights = mask[:, 1:]
        return -jnp.sum(logp * weights) / jnp.sum(weights)

    return itm, lm


@pytest.fixture(scope="module")
def tied_setup():
    """A tied tiny model, a padded batch, and the ITM / LM / summed losses with their gradients
    (computed once; eager, so the untied model below reuses the compiled ops)."""
    config = preset("tiny", tie_encoder_decoder=True)
    params = jax.tree_util.tree_map(jnp.asarray, _random_params(config, 14))
    inputs = ref.make_inputs(3, config.vision.image_size, 10, seed=15)
    batch = (jnp.asarray(inputs["pixels"].transpose(0, 2, 3, 1)),
             jnp.asarray(inputs["mask"], jnp.int32),
             jnp.asarray(ref.with_first(inputs["ids"], ref.ENC_ID), jnp.int32),
             jnp.asarray(ref.with_first(inputs["ids"], ref.DEC_ID), jnp.int32))
    itm, lm = _losses(config, *batch)
    grads = {"itm": jax.grad(itm)(params), "lm": jax.grad(lm)(params),
             "sum": jax.value_and_grad(lambda p: itm(p) + lm(p))(params)}
    return dict(config=config, params=params, batch=batch, grads=grads)


def test_tied_tree_holds_one_copy():
    config = preset("tiny", tie_encoder_decoder=True)
    # abstract_params is init_params' tree (jax.eval_shape of the same model.init) without
    # running the model.
    params = nn.meta.unbox(abstract_params(config))
    assert "text_decoder" not in params and "lm_head" in params["text_encoder"]
    layers = [k for k in params["text_encoder"] if k.startswith("layer_")]
    assert len(layers) == config.text.num_layers
    for name in layers:
        assert {"attention", "decoder_attention", "crossattention"} <= set(params["text_encoder"][name])
    untied = nn.meta.unbox(abstract_params(config.replace(tie_encoder_decoder=False)))
    assert "decoder_attention" not in untied["text_encoder"]["layer_0"]
    n = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
    enc = params["text_encoder"]
    own = n(enc["lm_head"]) + sum(n(enc[k][a]) for k in layers
                                  for a in ("attention", "decoder_attention"))
    shared = n(enc) - own
    # Untying adds exactly one more copy of everything shared (embeddings, cross-attention, FFN).
    assert n(untied) - n(params) == shared


def test_tied_gradients_reach_shared_params_from_both_losses(tied_setup):
    g = tied_setup["grads"]
    f_itm, f_lm, f_sum = _flat(g["itm"]), _flat(g["lm"]), _flat(g["sum"][1])

    for shared in ("text_encoder/layer_0/crossattention/query/kernel",
                   "text_encoder/layer_0/output/kernel",
                   "text_encoder/layer_1/intermediate/bias",
                   "text_encoder/embeddings/word_embeddings/embedding"):
        assert np.linalg.norm(f_itm[shared]) > 1e-6 and np.linalg.norm(f_lm[shared]) > 1e-6, shared
        np.testing.assert_allclose(f_sum[shared], f_itm[shared] + f_lm[shared],
                                   rtol=1e-4, atol=1e-7, err_msg=shared)
    checked = {"decoder": 0, "encoder": 0}
    for k in f_sum:
        if "/decoder_attention/" in k or "/lm_head/" in k:  # decoder-only: LM alone
            assert not np.any(f_itm[k]), k
            assert np.linalg.norm(f_lm[k]) > 0, k
            checked["decoder"] += 1
        elif "/layer_" in k and "/attention/" in k or k.startswith("itm_head/"):  # encoder-only
            assert not np.any(f_lm[k]), k
            assert np.linalg.norm(f_itm[k]) > 0, k
            checked["encoder"] += 1
    assert checked == {"decoder": 2 * 10 + 5, "encoder": 2 * 10 + 2}, checked


def test_tied_equals_untied_copies(tied_setup):
    """Tying means sharing: the tied model equals an untied one holding copies of the shared
    tensors, and the gradient of a shared tensor is the sum of its two copies' gradients."""
    config, params = tied_setup["config"], tied_setup["params"]
    loss_t, g_t = tied_setup["grads"]["sum"]
    itm_u, lm_u = _losses(config.replace(tie_encoder_decoder=False), *tied_setup["batch"])
    loss_u, g_u = jax.value_and_grad(lambda p: itm_u(p) + lm_u(p))(_tied_to_untied(params))
    np.testing.assert_allclose(loss_t, loss_u, rtol=1e-6)
    g_t, g_u = _flat(g_t), _flat(g_u)
    for k in ("layer_0/crossattention/query/kernel", "layer_1/output/kernel",
              "embeddings/position_embeddings/embedding"):
        np.testing.assert_allclose(g_t["text_encoder/" + k],
                                   g_u["text_encoder/" + k] + g_u["text_decoder/" + k],
                                   rtol=1e-4, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(g_t["text_encoder/layer_0/decoder_attention/query/kernel"],
                               g_u["text_decoder/layer_0/attention/query/kernel"],
                               rtol=1e-4, atol=1e-7)


def test_original_vqa_file_converts(tmp_path):
    """model_base_vqa_capfilt_large.pth's layout (BLIP_VQA: visual_encoder.*, text_encoder.* a
    BertModel with cross-attention, text_decoder.bert.* + text_decoder.cls.* the answer decoder,
    no heads, no momentum): the architecture is read off the keys as the VQA variant (decoder
    reading the question states) and every tensor lands in place."""
    torch = pytest.importorskip("torch")
    config = preset("tiny", tie_encoder_decoder=False, itc_itm_heads=False,
                    decoder_context="question")
    params = _random_params(config, 21)
    sd = mapping.export_state_dict(params, mapping.ORIGINAL, tied=False)
    assert any(k.startswith("text_decoder.cls.") for k in sd)
    assert not any(k.startswith(("vision_proj", "itm_head", "text_encoder_m")) for k in sd)
    positions = np.arange(config.text.max_position_embeddings)[None]
    for prefix in ("text_encoder.", "text_decoder.bert."):
        sd[prefix + "embeddings.position_ids"] = positions
    path = tmp_path / "model_base_vqa_capfilt_large.pth"
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, str(path))
    cfg, loaded, extras, _ = load_original(str(path))
    assert (cfg.decoder_context, cfg.tie_encoder_decoder, cfg.itc_itm_heads,
            cfg.text_encoder, cfg.text_decoder) == ("question", False, False, True, True)
    assert "momentum" not in extras
    _assert_trees_equal(loaded, params, "params")
