"""The trainer end to end on synthetic data: resume after SIGKILL reproduces the uninterrupted
run, SIGTERM saves first, a NaN stops the run, bad config keys are rejected, and several
processes (loopback, gloo) train exactly like one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from blip_jax.data import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = dict(num_images=96, noise_rate=0.4, seed=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data"))
    prepare.ensure_synthetic(d, **SYNTH)
    return d


def _overrides(data_dir, **extra):
    base = {
        "data.data_dir": data_dir, "data.synthetic_num_images": SYNTH["num_images"],
        "data.workers": 0, "data.randaugment": False, "batch_size": 8, "loss.queue_size": 32,
        "log_every_steps": 1, "checkpoint_every_steps": 4, "total_steps": 12,
        "optim.warmup_steps": 2, "eval.every_steps": 0,
        "model.vision.image_size": 32, "model.vision.depth": 1, "model.vision.width": 32,
        "model.vision.mlp_dim": 64, "model.text.num_layers": 1, "model.text.hidden_size": 32,
        "model.text.intermediate_size": 64, "model.embed_dim": 16, "data.max_tokens": 16,
    }
    base.update(extra)
    return [f"--config.{k}={v}" for k, v in base.items()]


def _cmd(workdir, data_dir, **extra):
    return [sys.executable, "-m", "blip_jax.train", f"--config={ROOT}/configs/pretrain_tiny.py",
            f"--workdir={workdir}", *_overrides(data_dir, **extra)]


def _env(devices=1, **extra):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update(extra)
    return env


def _losses(workdir):
    """Last logged record per step (a resumed run logs the replayed steps again)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            out[r["step"]] = {k: r[k] for k in ("loss", "loss_itc", "loss_itm", "loss_lm")}
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    wd = str(tmp_path_factory.mktemp("run_a"))
    subprocess.run(_cmd(wd, data_dir), env=_env(), check=True, capture_output=True, timeout=600)
    return _losses(wd)


def test_sigkill_resume_reproduces_uninterrupted_run(tmp_path, data_dir, uninterrupted):
    wd = str(tmp_path)
    proc = subprocess.Popen(_cmd(wd, data_dir), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = os.path.join(wd, "checkpoints", "4")
    deadline = time.time() + 300
    while not os.path.isdir(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.isdir(ckpt), "the run never wrote its step-4 checkpoint"
    done_before_kill = max(_losses(wd))
    assert done_before_kill < 12, "killed too late to test a resume"
    subprocess.run(_cmd(wd, data_dir), env=_env(), check=True, capture_output=True, timeout=600)
    resumed = _losses(wd)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(5, 13):
        # Same data batches, same rng, same state: bit-identical on one CPU device.
        assert resumed[step] == uninterrupted[step], step


def test_sigterm_saves_then_exits(tmp_path, data_dir):
    wd = str(tmp_path)
    proc = subprocess.Popen(_cmd(wd, data_dir, total_steps=400, checkpoint_every_steps=1000),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(wd, "metrics.jsonl")
    deadline = time.time() + 300
    while (not os.path.exists(metrics) or os.path.getsize(metrics) == 0) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "SIGTERM: saved checkpoint at step" in out
    step = int(out.split("SIGTERM: saved checkpoint at step")[1].split(";")[0])
    assert 0 < step < 400 and os.path.isdir(os.path.join(wd, "checkpoints", str(step)))


def test_nan_loss_stops_with_clear_message(tmp_path, data_dir):
    wd = str(tmp_path)
    # A learning rate this large blows the parameters up within a few steps.
    r = subprocess.run(_cmd(wd, data_dir, **{"optim.lr": 1e30, "optim.warmup_steps": 0,
                                              "total_steps": 40}),
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "non-finite loss at step" in r.stderr and "last good checkpoint" in r.stderr


def test_unknown_config_key_is_rejected(tmp_path, data_dir):
    r = subprocess.run(_cmd(str(tmp_path), data_dir, **{"optim.learning_rate": 1.0}),
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "learning_rate" in r.stderr


def test_two_processes_match_one(tmp_path, data_dir):
    """2 processes x 4 fake devices (gloo over loopback) == 1 process x 8 devices."""
    one = str(tmp_path / "one")
    extra = {"total_steps": 4, "checkpoint_every_steps": 4}
    subprocess.run(_cmd(one, data_dir, **extra), env=_env(8), check=True, capture_output=True,
                   timeout=600)
    two = str(tmp_path / "two")
    port = 20000 + os.getpid() % 20000
    procs = [subprocess.Popen(_cmd(two, data_dir, **extra), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=_env(4, BLIP_COORDINATOR=f"127.0.0.1:{port}",
                                       BLIP_NUM_PROCESSES="2", BLIP_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        for k in a[step]:
            assert b[step][k] == pytest.approx(a[step][k], rel=1e-5), (step, k)
