"""Initialisation for pre-training from ImageNet ViT and BERT weights (convert/pretrained_init.py).

Randomly initialised transformers models of the tiny preset's sizes (every parameter re-drawn,
see torch_reference) are saved with save_pretrained (no download); timm-layout .pth and JAX
.npz files are written from the ViT's weights by renaming keys here. After import, blip_jax's
unimodal encoders must give the models' hidden states within 1e-4 max abs (float32): eps 1.2e-7
times an accumulation depth of a few hundred (2 layers of dot products over <= 256 terms,
softmax and LayerNorm reductions over 64 features) is ~3e-5 on the O(1) LayerNorm outputs.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

from blip_jax.checkpoint import CheckpointMismatchError, load_model  # noqa: E402
from blip_jax.convert import mapping  # noqa: E402
from blip_jax.convert.pretrained_init import apply_pretrained, init_from_pretrained  # noqa: E402
from blip_jax.models import Blip, abstract_params, preset  # noqa: E402
from flax import linen as nn  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
TINY = preset("tiny")
V, T = TINY.vision, TINY.text
BERT_VOCAB = 30522


def _hf_vit_config(cls):
    return cls(hidden_size=V.width, num_hidden_layers=V.depth, num_attention_heads=V.num_heads,
               intermediate_size=V.mlp_dim, image_size=V.image_size, patch_size=V.patch_size)


def _bert_config(**kw):
    return transformers.BertConfig(
        vocab_size=kw.pop("vocab_size", BERT_VOCAB), hidden_size=T.hidden_size,
        num_hidden_layers=T.num_layers, num_attention_heads=T.num_heads,
        intermediate_size=T.intermediate_size, max_position_embeddings=T.max_position_embeddings,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)


def _save(model, directory, seed, zero_token_types=False):
    ref.randomize_torch_(model, seed)
    if zero_token_types:
        # BLIP's text embeddings have no token types (the original drops BERT's table), so the
        # BERT reference is compared with its token-type-0 row at zero.
        with torch.no_grad():
            emb = model.bert.embeddings if hasattr(model, "bert") else model.embeddings
            emb.token_type_embeddings.weight.zero_()
    model.eval().save_pretrained(str(directory))
    return model


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_vit")
    return str(d), _save(transformers.ViTModel(_hf_vit_config(transformers.ViTConfig)), d, 1)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_bert")
    return str(d), _save(transformers.BertForMaskedLM(_bert_config()), d, 2, zero_token_types=True)


def _images(seed=0):
    return np.random.default_rng(seed).normal(size=(2, V.image_size, V.image_size, 3)).astype(np.float32)


def _text(seed=0, length=12):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, BERT_VOCAB, (2, length)).astype(np.int32)
    ids[:, 0] = ref.CLS_ID
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    ids[mask == 0] = 0
    return ids, mask


@functools.lru_cache(maxsize=None)
def _fresh(config, seed=0):
    """A stand-in for a fresh init: random leaves of the model's shapes (no JAX compile)."""
    return ref.randomize_params(nn.meta.unbox(abstract_params(config)), seed)


def _image_tokens(params, config, images):
    return np.asarray(Blip(config).apply({"params": params}, images, method=Blip.image_features))


def _text_out(params, config, ids, mask, tower="text_encoder", **kw):
    fn = lambda m, i, k: getattr(m, tower)(i, k, **kw)  # noqa: E731
    return np.asarray(Blip(config).apply({"params": params}, ids, mask, method=fn))


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _torch_images(images):
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


# -- timm and JAX layouts written from the HF ViT's weights --------------------------------------

def _timm_state_dict(hf_sd):
    sd = {"cls_token": hf_sd["embeddings.cls_token"],
          "pos_embed": hf_sd["embeddings.position_embeddings"],
          "head.weight": np.ones((5, V.width), np.float32), "head.bias": np.zeros(5, np.float32)}
    for leaf in ("weight", "bias"):
        sd[f"patch_embed.proj.{leaf}"] = hf_sd[f"embeddings.patch_embeddings.projection.{leaf}"]
        sd[f"norm.{leaf}"] = hf_sd[f"layernorm.{leaf}"]
        for n in range(V.depth):
            h, b = f"encoder.layer.{n}.", f"blocks.{n}."
            sd[f"{b}attn.qkv.{leaf}"] = np.concatenate(
                [hf_sd[f"{h}attention.attention.{x}.{leaf}"] for x in ("query", "key", "value")])
            for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                                 ("attn.proj", "attention.output.dense"),
                                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
                sd[f"{b}{ours}.{leaf}"] = hf_sd[f"{h}{theirs}.{leaf}"]
    return sd


def _jax_vit_npz(sd, prefix="opt/target/"):
    """The original JAX ViT layout (as the original BLIP's models/vit.py _load_weights reads it):
    kernels [in, out], q/k/v kernels [D, heads, head_dim], out kernel [heads, head_dim, D]."""
    d, h = V.width, V.num_heads
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"],
         "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": np.ones((d, 5), np.float32), "pre_logits/bias": np.zeros(d, np.float32)}
    for n in range(V.depth):
        b, p = f"blocks.{n}.", f"Transformer/encoderblock_{n}/"
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            w[f"{p}{theirs}/scale"], w[f"{p}{theirs}/bias"] = sd[f"{b}{ours}.weight"], sd[f"{b}{ours}.bias"]
        for r in range(2):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{b}mlp.fc{r + 1}.weight"].T
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = sd[f"{b}mlp.fc{r + 1}.bias"]
        qkv_w, qkv_b = np.split(sd[f"{b}attn.qkv.weight"], 3), np.split(sd[f"{b}attn.qkv.bias"], 3)
        for x, wx, bx in zip(("query", "key", "value"), qkv_w, qkv_b):
            w[f"{p}MultiHeadDotProductAttention_1/{x}/kernel"] = wx.T.reshape(d, h, d // h)
            w[f"{p}MultiHeadDotProductAttention_1/{x}/bias"] = bx.reshape(h, d // h)
        w[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = sd[f"{b}attn.proj.weight"].T.reshape(h, d // h, d)
        w[f"{p}MultiHeadDotProductAttention_1/out/bias"] = sd[f"{b}attn.proj.bias"]
    return {prefix + k: v for k, v in w.items()}


def _hf_file(directory):
    from safetensors.numpy import load_file
    return load_file(os.path.join(directory, "model.safetensors"))


def test_vit_imports_give_the_source_hidden_states(tmp_path, vit):
    """HF ViTModel dir, timm .pth ({'model': ...} as DeiT's hub file) and JAX .npz."""
    directory, hf = vit
    images = _images()
    with torch.no_grad():
        want = hf(pixel_values=_torch_images(images)).last_hidden_state.numpy()
    timm_sd = _timm_state_dict(_hf_file(directory))
    torch.save({"model": {k: torch.from_numpy(v) for k, v in timm_sd.items()}}, tmp_path / "deit.pth")
    np.savez(tmp_path / "vit.npz", **_jax_vit_npz(timm_sd))
    # transformers 5 names ViT tensors differently in memory (`layers.N.attention.q_proj`) than
    # in the files it writes; a file with the in-memory names is read too.
    from safetensors.numpy import save_file
    (tmp_path / "mem").mkdir()
    save_file({k: v.detach().numpy().copy() for k, v in hf.state_dict().items()},
              str(tmp_path / "mem" / "model.safetensors"))
    (tmp_path / "mem" / "config.json").write_text(open(os.path.join(directory, "config.json")).read())
    (tmp_path / "timm_hub").mkdir()  # timm's hub layout: model.safetensors with timm names
    save_file(timm_sd, str(tmp_path / "timm_hub" / "model.safetensors"))
    fresh = _fresh(TINY)
    for source, eps in ((directory, 1e-12), (str(tmp_path / "mem"), 1e-12),
                        (str(tmp_path / "deit.pth"), 1e-6), (str(tmp_path / "timm_hub"), 1e-6),
                        (str(tmp_path / "vit.npz"), 1e-6)):
        params, config, report = apply_pretrained(fresh, TINY, vit=source)
        assert config.vision.layer_norm_eps == eps, source  # the source's own eps
        assert sorted(k for k in report.loaded if k.startswith("vision/")) == sorted(
            mapping.path_str(p) for p in mapping.flatten(fresh["vision"]) for p in [("vision",) + p])
        assert not any(p.startswith("vision/") for p in report.random)
        # timm/JAX files carry no eps: compare with the HF model computing at their 1e-6.
        for m in hf.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = eps
        with torch.no_grad():
            want = hf(pixel_values=_torch_images(images)).last_hidden_state.numpy()
        diff = _max_diff(_image_tokens(params, config, images), want)
        print(f"vit {os.path.basename(source)}: max diff {diff:.2e}")
        assert diff < TOL, (source, diff)
    assert any("head" in k for k in report.ignored)


def test_deit_with_teacher_drops_the_distillation_token(tmp_path):
    hf = _save(transformers.DeiTForImageClassificationWithTeacher(
        _hf_vit_config(transformers.DeiTConfig)), tmp_path, 3)
    params, config, report = apply_pretrained(_fresh(TINY), TINY, vit=str(tmp_path))
    assert any("distillation token" in n for n in report.notes)
    assert {"cls_classifier.weight", "distillation_classifier.bias"} <= set(report.ignored)
    images = _images(1)
    deit = hf.deit
    with torch.no_grad():  # DeiT's own layers on [cls, patches] without the distillation token
        emb = deit.embeddings
        pos = emb.position_embeddings
        x = emb.patch_embeddings(_torch_images(images)) + pos[:, 2:]
        x = torch.cat([emb.cls_token.expand(x.shape[0], -1, -1) + pos[:, :1], x], 1)
        for layer in getattr(deit, "layers", None) or deit.encoder.layer:
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out
        want = deit.layernorm(x).numpy()
    diff = _max_diff(_image_tokens(params, config, images), want)
    print(f"deit: max diff {diff:.2e}")
    assert diff < TOL


@pytest.mark.parametrize("tied", [True, False])
def test_bert_import_encoder_decoder_and_lm_head(bert, tied):
    directory, hf = bert
    cfg = preset("tiny", tie_encoder_decoder=tied)
    fresh = _fresh(cfg)
    params, config, report = apply_pretrained(fresh, cfg, bert=directory)
    ids, mask = _text()
    ti, tm = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    decoder = transformers.BertLMHeadModel.from_pretrained(directory, is_decoder=True).eval()
    with torch.no_grad():
        hidden = hf.bert(input_ids=ti, attention_mask=tm).last_hidden_state.numpy()
        mlm = hf(input_ids=ti, attention_mask=tm).logits.numpy()
        causal = decoder(input_ids=ti, attention_mask=tm).logits.numpy()
    diffs = {"encoder hidden": _max_diff(_text_out(params, config, ids, mask), hidden)}
    dec = "text_encoder" if tied else "text_decoder"
    lm = _text_out(params, config, ids, mask, dec, causal=True, return_logits=True)
    diffs["decoder (causal) LM logits"] = _max_diff(lm[..., :BERT_VOCAB], causal)
    if tied:  # the tied tree's encoder view with the LM head: BERT's MLM logits
        mlm_ours = _text_out(params, config, ids, mask, return_logits=True)
        diffs["MLM logits"] = _max_diff(mlm_ours[..., :BERT_VOCAB], mlm)
    print(f"bert tied={tied}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs
    # resize_token_embeddings: [DEC]/[ENC] rows keep their fresh init, new LM-bias entries are 0.
    words = params[dec]["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(words[BERT_VOCAB:], fresh[dec]["embeddings"]["word_embeddings"]["embedding"][BERT_VOCAB:])
    np.testing.assert_array_equal(params[dec]["lm_head"]["bias"][BERT_VOCAB:], 0)
    layer = params["text_encoder"]["layer_0"]
    if tied:
        assert report.loaded["text_encoder/layer_0/decoder_attention/query/kernel"] == \
            "bert.encoder.layer.0.attention.self.query.weight"
    np.testing.assert_array_equal(layer["crossattention"]["query"]["kernel"],
                                  fresh["text_encoder"]["layer_0"]["crossattention"]["query"]["kernel"])
    random = set(report.random)
    assert {"vision_proj/kernel", "itm_head/kernel", "temp/value",
            "text_encoder/layer_1/crossattention/norm/scale"} <= random
    assert not any("attention/" in p and "crossattention" not in p for p in random)
    assert not any(p.startswith(f"{dec}/lm_head") for p in random)
    assert "bert.embeddings.token_type_embeddings.weight" in report.ignored


def test_bert_model_bin_with_old_names_leaves_lm_head_random(tmp_path):
    """A BertModel (no MLM head) stored as pytorch_model.bin with 'bert.' prefixes and
    LayerNorm gamma/beta, as the original bert-base-uncased file names them; vocabulary 100."""
    hf = _save(transformers.BertModel(_bert_config(vocab_size=100), add_pooling_layer=False),
               tmp_path / "src", 4, zero_token_types=True)
    d = tmp_path / "old"
    d.mkdir()
    old = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in hf.state_dict().items()}
    torch.save(old, d / "pytorch_model.bin")
    (d / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    cfg = preset("tiny", tie_encoder_decoder=True)
    params, config, report = apply_pretrained(_fresh(cfg), cfg, bert=str(d))
    assert report.loaded["text_encoder/embeddings/norm/scale"] == "bert.embeddings.LayerNorm.gamma"
    assert "text_encoder/lm_head/transform/kernel" in report.random
    ids, mask = _text(1)
    ids = ids % 100
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids).long(),
                  attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    assert _max_diff(_text_out(params, config, ids, mask), want) < TOL


def test_mismatches_name_the_keys_and_shapes(tmp_path, vit, bert):
    directory, hf = vit
    small = preset("tiny").replace(vision=TINY.vision.__class__(
        **{**TINY.vision.__dict__, "width": 32, "mlp_dim": 128}))
    with pytest.raises(CheckpointMismatchError) as e:
        apply_pretrained(_fresh(small), small, vit=directory)
    assert "embeddings.cls_token: (1, 1, 64), model wants (1, 1, 32)" in str(e.value)
    sd = _timm_state_dict(_hf_file(directory))
    del sd["blocks.1.mlp.fc2.bias"]
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): blocks\.1\.mlp\.fc2\.bias"):
        apply_pretrained(_fresh(TINY), TINY, vit=str(tmp_path / "broken.pth"))
    narrow = preset("tiny").replace(text=TINY.text.__class__(**{**TINY.text.__dict__, "hidden_size": 32}))
    with pytest.raises(CheckpointMismatchError) as e:
        apply_pretrained(_fresh(narrow), narrow, bert=bert[0])
    assert "bert.embeddings.word_embeddings.weight: (30522, 64)" in str(e.value)
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "bert_missing"
    d.mkdir()
    st = load_file(os.path.join(bert[0], "model.safetensors"))
    del st["bert.encoder.layer.1.attention.self.key.bias"]
    save_file(st, str(d / "model.safetensors"))
    (d / "config.json").write_text(open(os.path.join(bert[0], "config.json")).read())
    with pytest.raises(CheckpointMismatchError, match=r"bert\.encoder\.layer\.1\.attention\.self\.key\.bias"):
        apply_pretrained(_fresh(TINY), TINY, bert=str(d))


def test_config_route_and_cli_give_the_imported_params(tmp_path, vit, bert):
    from blip_jax.convert.__main__ import main
    from blip_jax.train import trainer
    from blip_jax.train.defaults import base_config
    from blip_jax.train.state import momentum_subtree

    config = base_config("tiny", tie_encoder_decoder=True)
    config.batch_size, config.loss.queue_size = 8, 16
    config.init.vit, config.init.bert = vit[0], bert[0]
    params = trainer.initial_params(config)
    want, _, _ = init_from_pretrained(preset("tiny", tie_encoder_decoder=True), config.seed,
                                      vit=vit[0], bert=bert[0])
    state = trainer.build(config, steps_per_epoch=10, init_params=params).state
    got = {"/".join(p): np.asarray(v) for p, v in mapping.flatten(jax.device_get(state.params)).items()}
    for p, v in mapping.flatten(want).items():
        np.testing.assert_array_equal(got["/".join(p)], v, err_msg="/".join(p))
    for p, v in mapping.flatten(momentum_subtree(want)).items():  # momentum starts as a copy
        np.testing.assert_array_equal(np.asarray(mapping.flatten(state.momentum)[p]), v)

    # The CLI writes the same tree as a checkpoint that init_checkpoint starts from.
    dst = str(tmp_path / "init_ckpt")
    assert main(["--vit", vit[0], "--bert", bert[0], "--preset", "tiny", dst]) == 0
    ckpt_config, ckpt_params = load_model(dst)
    assert ckpt_config.tie_encoder_decoder and ckpt_config.vision.layer_norm_eps == 1e-12
    for p, v in mapping.flatten(want).items():
        np.testing.assert_array_equal(np.asarray(mapping.flatten(ckpt_params)[p]), v)
    with open(os.path.join(dst, "config.json")) as f:
        assert "pre-training init" in json.load(f)["source"]
    config.init_checkpoint = dst
    with pytest.raises(ValueError, match="init_checkpoint"):
        trainer.initial_params(config)
