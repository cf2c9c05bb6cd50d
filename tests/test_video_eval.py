"""Zero-shot video evaluation from the configs: `blip_jax.evaluate` with task video_retrieval
and videoqa on a few synthetic clips (random tiny models: the wiring, the metrics reported and
the per-question breakdown), and the trainer refusing the evaluation-only tasks. Whether the
image-trained tiny models transfer is checked where they are trained (tests/test_bootstrap.py,
tests/test_vqa.py)."""

import jax
import pytest

from blip_jax import checkpoint, evaluate
from blip_jax.experiments import tiny
from blip_jax.models import init_params
from blip_jax.models.config import BlipConfig
from blip_jax.train import trainer

CLIPS = 12


def _small(config, tmp_path):
    config.data.data_dir = str(tmp_path / "data")
    config.data.synthetic_video_clips = CLIPS
    config.data.num_frames = 4
    config.data.workers = 0
    return config


def _random_model(config, path) -> str:
    model_cfg = BlipConfig.from_dict(config.model.to_dict())
    checkpoint.save_model(str(path), init_params(model_cfg, jax.random.key(0)), model_cfg)
    return str(path)


def test_video_retrieval_from_the_config(tmp_path):
    c = _small(tiny.video_retrieval(), tmp_path)
    c.eval.k_test = 5
    c.eval.max_images = CLIPS - 2  # the first 10 videos and their captions
    r = evaluate.run(c, _random_model(c, tmp_path / "m"), output=str(tmp_path / "out.json"))
    assert r["task"] == "video_retrieval" and r["num_videos"] == CLIPS - 2 == r["num_texts"]
    m = r["metrics"]
    for key in ("txt_r1", "vid_r1", "vid_r10", "vid_mdR", "txt_mdR", "r_mean"):
        assert key in m, key
    assert 1 <= m["vid_mdR"] <= CLIPS - 2
    # Every caption is either true of the first frame or only of later ones.
    assert m.get("num_texts/late_only", 0) + m.get("num_texts/not_late_only", 0) == CLIPS - 2
    assert (tmp_path / "out.json").exists()


def test_videoqa_from_the_config(tmp_path):
    c = _small(tiny.videoqa(), tmp_path)
    c.eval.k_test = 8
    r = evaluate.run(c, _random_model(c, tmp_path / "m"), output=str(tmp_path / "out.json"))
    m = r["metrics"]
    questions = CLIPS * c.data.synthetic_video_questions
    assert r["num_questions"] == questions and m["unanswered"] == 0
    assert 0 <= m["vqa_accuracy"] <= 100
    assert m["num_questions/late_only"] + m["num_questions/not_late_only"] == questions
    assert (tmp_path / "vqa_result_test.json").exists()


@pytest.mark.parametrize("config", [tiny.video_retrieval, tiny.videoqa])
def test_training_a_video_task_is_refused(config):
    with pytest.raises(ValueError, match="zero-shot evaluation .* nothing to train"):
        trainer.check_task(config())
