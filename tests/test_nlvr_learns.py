"""The NLVR2 model learns the synthetic two-image task (issue 14), at a reduced scale and through
the README's commands: the tiny pre-training, then the tiny NLVR2 recipe on the statements that
name a side ("the left image has a red shape", "there is a blue shape in the right image"),
whose false ones name what the OTHER image has. Neither the words nor "is it in either image"
beat 50% on them: the model must read each image through its own cross-attention branch and
bind the words left/right to it (the pair swap moves images and words together). The full
recipe and its per-template results are in the README (Visual reasoning)."""

import json
import math
import os

import pytest
from train_utils import run_module_on_one_device as _run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_STEPS = 600    # configs/pretrain_tiny.py's default run, which the task was designed on
                        # (after 300 pre-training steps the same run reached 54.0%: fails)
NLVR_STEPS = 800        # 12.8 epochs of the 2000 training statements (400 reached 59.0%)
TEST_STATEMENTS = 300   # one statement per pair, 150 true


@pytest.mark.slow
def test_nlvr_learns_to_bind_left_and_right(tmp_path):
    # Input in the main process (as tests/test_bootstrap.py: it runs beside that test in CI).
    data = [f"--config.data.data_dir={tmp_path / 'data'}", "--config.data.workers=0"]
    _run("blip_jax.train", f"--config={ROOT}/configs/pretrain_tiny.py", f"--workdir={tmp_path / 'pre'}",
         *data, f"--config.total_steps={PRETRAIN_STEPS}", "--config.eval.every_steps=0")
    nlvr = [f"--config={ROOT}/configs/nlvr_tiny.py", *data, "--config.data.synthetic_nlvr_templates=side_has",
            "--config.data.synthetic_nlvr_statements_per_pair=1", "--config.data.synthetic_num_images=2000",
            f"--config.data.synthetic_eval_images={TEST_STATEMENTS}"]
    run = tmp_path / "nlvr"
    _run("blip_jax.train", *nlvr, f"--workdir={run}", f"--config.init_checkpoint={tmp_path / 'pre' / 'model'}",
         f"--config.total_steps={NLVR_STEPS}", "--config.eval.every_epochs=2")
    _run("blip_jax.evaluate", *nlvr, f"--checkpoint={run / 'model_best'}", "--split=test",
         f"--output={tmp_path / 'test.json'}")
    r = json.loads((tmp_path / "test.json").read_text())["metrics"]
    # Chance is 50% (labels balanced exactly); a model at chance exceeds 50% + 4 standard errors
    # of a 300-statement mean (sqrt(0.25 / 300) = 2.9%) with probability 3e-5.
    bound = 50.0 + 4 * 100 * math.sqrt(0.25 / TEST_STATEMENTS)
    assert r["majority_label_accuracy"] == 50.0 and r["num_examples"] == TEST_STATEMENTS, r
    assert r["accuracy"] > bound, r
    assert r["accuracy_side_has"] == r["accuracy"]  # the per-template report
    best = json.loads((run / "model_best" / "best.json").read_text())
    assert best["metric"] == "accuracy" and best["value"] > bound
