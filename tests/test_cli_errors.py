"""Every command answers a user error with one `error:` line naming the thing, a non-zero exit
and no traceback (blip_jax/cli.py). Each case runs the real command in a subprocess and fails
before any model is built; the commands run concurrently, as jax start-up dominates."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def test_user_errors_are_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    hf = tmp_path / "hf"  # an HF directory whose weights file is corrupt (a truncated download)
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["BlipForConditionalGeneration"]}')
    (hf / "model.safetensors").write_text("garbage")
    missing = str(tmp_path / "no_such_checkpoint")
    image = str(tmp_path / "img.png")
    from PIL import Image
    Image.new("RGB", (8, 8)).save(image)

    # command and arguments -> strings its stderr must contain
    cases = {
        ("blip_jax.train", f"--config={CONFIGS}/pretrain_tiny.py", "--config.optim.lr_typo=1",
         f"--workdir={tmp_path / 'w'}"): ["config.optim.lr_typo", "warmup_steps"],
        ("blip_jax.train", f"--config={CONFIGS}/no_such_config.py", "--workdir=w"):
            ["no such config file", "no_such_config.py"],
        ("blip_jax.evaluate", f"--config={CONFIGS}/caption_tiny.py", f"--checkpoint={missing}"):
            ["no model checkpoint", missing],
        ("blip_jax.capfilt", f"--config={CONFIGS}/capfilt.py", "--config.treshold=0.3",
         "--workdir=w"): ["treshold", "threshold"],
        ("blip_jax.convert", str(hf), str(tmp_path / "out")): [str(hf), "safetensors"],
        ("blip_jax.caption", "--checkpoint", missing, image): ["no model checkpoint", missing],
        ("blip_jax.score", "--checkpoint", missing, "--image", image, "--text", ""): ["--text"],
        ("blip_jax.data.prepare", "--source", "synthetic", "--data_dir", str(a_file)):
            ["--data_dir", str(a_file), "not a directory"],
        ("blip_jax.demo", "--workdir", str(a_file)): ["--workdir", str(a_file)],
        ("blip_jax.vqa", "--checkpoint", missing, "--image", image, "--question", "q"):
            ["no model checkpoint", missing],
        ("blip_jax.experiments.bootstrap", f"--workdir={tmp_path / 'b'}", "--rows=oracle"):
            ["--rows", "baseline"],
        ("blip_jax.experiments.bootstrap", f"--workdir={tmp_path / 'b'}", "--data_workers=-1"):
            ["--data_workers", ">= 0"],
    }
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    procs = {case: subprocess.Popen([sys.executable, "-m", *case], cwd=tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case in cases}
    failures = []
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        ok = (proc.returncode != 0 and "Traceback" not in err and len(lines) == 1
              and lines[0].startswith("error: ") and all(s in err for s in cases[case]))
        if not ok:
            failures.append(f"{' '.join(case)}\n  exit {proc.returncode}, stderr:\n{err[-2000:]}")
    assert not failures, "\n\n".join(failures)
