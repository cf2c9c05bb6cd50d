"""The tiny pre-training config learns the synthetic data: all three losses fall and zero-shot
retrieval on the synthetic val split is far above chance (about 5 minutes on 2 cores)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_pretrain_tiny_learns(tmp_path):
    workdir, data = tmp_path / "run", tmp_path / "data"
    cmd = [sys.executable, "-m", "blip_jax.train", f"--config={ROOT}/configs/pretrain_tiny.py",
           f"--workdir={workdir}", f"--config.data.data_dir={data}",
           "--config.log_every_steps=20", "--config.eval.every_steps=600"]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device: the config's own setting
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1500)
    logs = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in logs][-1] == 600
    first, last = logs[0], logs[-3:]
    mean_last = {k: sum(r[k] for r in last) / 3 for k in ("loss_itc", "loss_itm", "loss_lm")}
    print({"first (step 20)": {k: round(first[k], 3) for k in mean_last},
           "last (mean of steps 560-600)": {k: round(v, 3) for k, v in mean_last.items()},
           "eval": {k: round(v, 2) for k, v in logs[-1].items() if k.startswith("eval/")}})
    # A seeded run measured ITC 6.0 -> 4.5, ITM 0.64 -> 0.58, LM 9+ -> 2.4 (margins below).
    assert mean_last["loss_itc"] < first["loss_itc"] - 0.8
    assert mean_last["loss_itm"] < min(first["loss_itm"], 0.636) - 0.02  # 0.636: label prior
    assert mean_last["loss_lm"] < first["loss_lm"] - 4.0
    # 300 val images: chance is IR@1 0.33%, R@10 3.3%; the measured run gave IR@1 6.3%.
    final = logs[-1]
    assert final["eval/ir_r1"] >= 5 * 100 / 300
    assert final["eval/tr_r1"] >= 5 * 100 / 300
    assert final["eval/r_mean"] >= 10.0
