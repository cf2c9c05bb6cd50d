"""The bootstrap experiment end to end at the reduced (CI) scale: pre-training learns,
fine-tuning beats zero-shot retrieval and a caption-agnostic captioner, CapFilt accounts for
every web image and its filter removes noise far better than chance, and every output exists.
(The full-scale run and its table are in the README.)"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_reduced_bootstrap_experiment(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "blip_jax.experiments.bootstrap", f"--workdir={workdir}",
           "--reduced"]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device, as on a user's CPU machine
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for i in range(1, 9):
        assert f"[stage {i}/8]" in out.stdout
    r = json.load(open(workdir / "results.json"))
    print(r["table"])
    assert (workdir / "bootstrap.png").stat().st_size > 10_000
    assert (workdir / "results.md").read_text().strip() == r["table"]

    cf = r["capfilt"]
    web_records = r["scale"]["num_images"]
    assert cf["images_seen"] == web_records  # every web image once
    filt = cf["filter"]
    noise_rate = filt["noisy"] / filt["labelled_web_texts"]
    # Random removal would have precision = the noise rate (0.4); the filter must do far better
    # and catch most of the noise.
    assert filt["precision"] > noise_rate + 0.1, filt
    assert filt["recall"] > 0.6, filt

    zs, ft = r["zero_shot_noisy"], r["filter_finetuned"]
    n_test = r["scale"]["eval_images"]
    chance_r5 = 100 * 5 / n_test
    assert zs["img_r5"] > 3 * chance_r5 and zs["txt_r5"] > 3 * chance_r5, zs  # pre-training learned
    assert ft["r_mean"] > zs["r_mean"] + 5, (ft, zs)  # retrieval fine-tune beats zero-shot
    base, cap = r["caption_agnostic_baseline"], r["caption_noisy"]
    assert cap["CIDEr"] > 2 * base["CIDEr"], (cap, base)  # captioner far above caption-agnostic
    assert r["caption_bootstrapped"]["CIDEr"] > 2 * base["CIDEr"]
    for name in ("a_pretrain_noisy", "d_pretrain_bootstrapped"):
        curve = r["curves"][name]
        assert curve["loss_lm"][-1] < curve["loss_lm"][0] - 4.0  # LM learns in any case

    # A rerun finds every stage done and recomputes nothing but the table.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, skipped") == 7
