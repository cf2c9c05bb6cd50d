"""The shipped configs carry the original recipe's values (salesforce/BLIP 056a169; file:line in
docs/fidelity.md), and the config keys that choose between the original and blip_jax's
alternatives reach the code that uses them."""

import importlib.util
import os

import pytest

from blip_jax.capfilt.defaults import default_config as capfilt_defaults
from blip_jax.models.config import PRESETS, TextConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", ["pretrain_base", "pretrain_large"])
def test_pretraining_augmentation_is_the_originals(name):
    """pretrain.py builds its set with transform_train: RandomResizedCrop(scale 0.2-1), a plain
    horizontal flip (no caption change) and RandomAugment(2, 5)."""
    c = _config(name)
    assert c.data.randaugment is True
    assert c.data.flip == "plain"
    assert tuple(c.data.crop_scale) == (0.2, 1.0)


@pytest.mark.parametrize("name", ["caption_coco", "retrieval_coco", "retrieval_flickr"])
def test_fine_tuning_flip_is_plain(name):
    assert _config(name).data.flip == "plain"


def test_text_dropout_is_the_originals():
    """med_config.json / bert_config.json: hidden and attention dropout 0.1 (the tiny preset
    keeps 0, stated where it is set)."""
    assert TextConfig().dropout_rate == TextConfig().attention_dropout_rate == 0.1
    for name in ("small", "base", "large"):
        assert PRESETS[name].text.dropout_rate == PRESETS[name].text.attention_dropout_rate == 0.1
    assert PRESETS["tiny"].text.dropout_rate == 0.0


def test_capfilt_samples_with_top_k_50():
    """The original sampled through transformers 4.15's generate, whose default top_k is 50."""
    assert capfilt_defaults().top_k == 50


def test_flip_key_reaches_the_pipeline(monkeypatch):
    from blip_jax.data import pipeline
    from blip_jax.train import input as train_input
    seen = {}
    monkeypatch.setattr(pipeline, "make_train_loader", lambda *a, **kw: seen.update(kw))
    c = _config("pretrain_tiny")
    c.data.prepare_synthetic = False
    for mode in ("swap", "plain", "none"):
        c.data.flip = mode
        train_input.TrainData(c)
        assert seen["flip"] == mode


def test_vqa_recipe_is_the_originals():
    """configs/vqa.yaml + train_vqa.py + blip_vqa.py: 480 px, drop-path 0.1, AdamW 2e-5 / wd
    0.05 with the per-epoch cosine over 10 epochs, fine-tuning crop with flip and RandomAugment,
    questions of at most 35 tokens, VG answers weighted 0.2, rank inference over the top 128."""
    from blip_jax.train.defaults import check_keys
    c = _config("vqa")
    check_keys(c)
    assert c.task == "vqa" and c.model.decoder_context == "question"
    assert not c.model.itc_itm_heads and not c.model.tie_encoder_decoder
    assert c.model.vision.image_size == 480 and c.model.vision.drop_path_rate == 0.1
    assert (c.optim.lr, c.optim.weight_decay, c.optim.schedule) == (2e-5, 0.05, "cosine_epoch")
    assert c.optim.warmup_steps == 0 and c.optim.min_lr == 0.0 and c.num_epochs == 10
    assert c.batch_size == 256
    assert tuple(c.data.crop_scale) == (0.5, 1.0) and c.data.randaugment and c.data.flip == "plain"
    assert (c.data.max_question_words, c.data.max_question_tokens) == (50, 35)
    assert c.data.vg_answer_weight == 0.2 and c.loss.label_smoothing == 0.1
    assert (c.eval.vqa_inference, c.eval.k_test) == ("rank", 128)
    assert (c.eval.num_beams, c.eval.max_length, c.eval.min_length) == (3, 10, 1)
    check_keys(_config("vqa_tiny"))


def test_nlvr_recipe_is_the_originals():
    """configs/nlvr.yaml + train_nlvr.py + blip_nlvr.py: 384 px, drop-path 0.1, the two-image
    encoder merging from layer 6, AdamW 3e-5 / wd 0.05 with the per-epoch cosine over 15
    epochs, fine-tuning crop with flip and RandomAugment, the pair swap, sentences of at most
    40 words, dev evaluated every epoch with the best model kept."""
    from blip_jax.train.defaults import check_keys
    c = _config("nlvr")
    check_keys(c)
    assert c.task == "nlvr" and c.model.image_pair and c.model.pair_merge_layer == 6
    assert not (c.model.itc_itm_heads or c.model.tie_encoder_decoder or c.model.text_decoder)
    assert c.model.vision.image_size == 384 and c.model.vision.drop_path_rate == 0.1
    assert (c.optim.lr, c.optim.weight_decay, c.optim.schedule) == (3e-5, 0.05, "cosine_epoch")
    assert c.optim.warmup_steps == 0 and c.optim.min_lr == 0.0 and c.num_epochs == 15
    assert c.batch_size == 256
    assert tuple(c.data.crop_scale) == (0.5, 1.0) and c.data.randaugment and c.data.flip == "plain"
    assert c.data.nlvr_swap and c.data.max_words == 40
    assert (c.eval.every_epochs, c.eval.keep_best) == (1, "accuracy")
    assert c.data.eval_source[1] == "val"  # model selection on dev, never on test
    tiny = _config("nlvr_tiny")
    check_keys(tiny)
    assert tiny.model.image_pair and tiny.model.pair_merge_layer == tiny.model.text.num_layers // 2


def test_video_recipes_are_the_originals():
    """configs/retrieval_msrvtt.yaml + eval_retrieval_video.py: the COCO retrieval model at 384
    px, 8 frames, k_test 128, pre_caption(caption, 40), 35 tokens; the paper's video QA: the VQA
    model with 16 frames. Both evaluate only."""
    r = _config("retrieval_video")
    assert r.task == "video_retrieval" and r.data.eval_source == ("blip_msrvtt_retrieval", "test")
    assert r.model.vision.image_size == 384 and r.data.num_frames == 8 and r.eval.k_test == 128
    assert r.data.max_words == 40 and r.data.max_tokens == 35 and r.eval.max_images == 0
    assert not r.model.text_decoder and r.model.itc_itm_heads
    assert r.data.frame_sampling in ("uniform", "original")
    q = _config("videoqa")
    assert q.task == "videoqa" and q.data.num_frames == 16 and q.eval.vqa_inference == "rank"
    assert q.model.decoder_context == "question" and q.eval.max_images == 0


def test_train_sources_can_be_set_on_the_command_line():
    """The README's `--config.data.train_sources="[('NAME','SPLIT'), ...]"` parses (config_flags
    cannot override a list field: the default is a tuple) and reaches every recipe."""
    from absl import flags
    from ml_collections import config_flags

    for name in ("pretrain_base", "pretrain_tiny", "nlvr_tiny"):
        argv = ["prog", f"--config={os.path.join(ROOT, 'configs', name + '.py')}",
                "--config.data.train_sources=[('blip_webdataset/cc12m','train'),('coco','train')]"]
        values = flags.FlagValues()  # the overrides are read from sys_argv (default sys.argv)
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
        values(argv)
        assert values.config.data.train_sources == (("blip_webdataset/cc12m", "train"), ("coco", "train"))
