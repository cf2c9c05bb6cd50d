"""The bootstrap experiment end to end at the reduced (CI) scale: every stage runs for real and
resumes, CapFilt accounts for every web image and removes noisy texts more than clean ones,
fine-tuning beats zero-shot retrieval and a caption-agnostic captioner. The noisy-vs-
bootstrapped comparison needs the full run (its table is in the README); tests/
test_train_step.py and the pre-training losses here cover the learning mechanics."""

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
    for i in range(1, 8):  # the reduced run has no control stage
        assert f"[stage {i}/7]" in out.stdout
    r = json.load(open(workdir / "results.json"))
    print(r["table"])
    assert (workdir / "bootstrap.png").stat().st_size > 10_000
    assert (workdir / "results.md").read_text().strip() == r["table"]

    cf = r["capfilt"]
    assert cf["images_seen"] == r["scale"]["num_images"]  # every web image exactly once
    filt = cf["filter"]
    # At this scale the filter is weak and strict (a seeded run removed ~79% of the clean web
    # texts too); it must still remove noisy texts more often than clean ones, and most of them.
    kinds = filt["by_noise_kind"]
    clean_removed = kinds["clean"]["removed_pct"]
    noisy_removed = sum(v["removed_pct"] * v["count"] for k, v in kinds.items() if k != "clean")
    noisy_removed /= sum(v["count"] for k, v in kinds.items() if k != "clean")
    assert noisy_removed > clean_removed + 3, kinds
    assert filt["recall"] > 0.6, filt

    # Fine-tuning works from a barely pre-trained model: retrieval well above its zero-shot
    # (near chance here), captions above the caption-agnostic baseline (seeded run: CIDEr
    # 74.9 vs 57.2).
    zs, ft = r["zero_shot_noisy"], r["filter_finetuned"]
    assert ft["r_mean"] > zs["r_mean"] + 3, (ft, zs)
    base = r["caption_agnostic_baseline"]["CIDEr"]
    assert r["caption_noisy"]["CIDEr"] > 1.15 * base, (r["caption_noisy"], base)
    assert r["caption_bootstrapped"]["CIDEr"] > 1.15 * base, (r["caption_bootstrapped"], base)
    for name in ("a_pretrain_noisy", "d_pretrain_bootstrapped"):
        curve = r["curves"][name]
        assert curve["loss_lm"][-1] < curve["loss_lm"][0] - 4.0  # LM learns in any case

    # A rerun finds every stage done and recomputes nothing but the table.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, skipped") == 6
