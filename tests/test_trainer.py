"""The trainer end to end on synthetic data: resume after SIGKILL reproduces the uninterrupted
run, SIGTERM saves first, a NaN stops the run, fine-tuning starts from the exported momentum encoders and queues, and several
processes (loopback, gloo) train exactly like one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from blip_jax.data import prepare
from train_utils import fake_devices

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
               XLA_FLAGS=fake_devices(devices))
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
def uninterrupted_dir(tmp_path_factory, data_dir):
    wd = str(tmp_path_factory.mktemp("run_a"))
    subprocess.run(_cmd(wd, data_dir), env=_env(), check=True, capture_output=True, timeout=600)
    return wd


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_dir):
    return _losses(uninterrupted_dir)


def _config(data_dir, **extra):
    """The config `_cmd` runs, built in-process."""
    import ast
    import importlib.util
    spec = importlib.util.spec_from_file_location("pretrain_tiny", f"{ROOT}/configs/pretrain_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for flag in _overrides(data_dir, **extra):
        key, value = flag[len("--config."):].split("=", 1)
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        try:
            node[leaf] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            node[leaf] = value
    return c


def test_fine_tuning_starts_from_the_pretrained_momentum_encoders_and_queues(data_dir,
                                                                            uninterrupted_dir):
    """The exported model keeps the run's momentum encoders and ITC queues (equal to its last
    training checkpoint), and a retrieval fine-tune initialised from it starts its momentum
    model and queues from them, as the original's load_checkpoint does; a queue of another
    size starts random."""
    import jax
    import numpy as np
    from blip_jax import checkpoint, parallel
    from blip_jax.models import variants
    from blip_jax.train import trainer
    from blip_jax.train.checkpointing import TrainCheckpointer
    model_dir = os.path.join(uninterrupted_dir, "model")
    extras = checkpoint.load_extras(model_dir)
    pre = _config(data_dir)
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    setup = trainer.build(pre, steps_per_epoch=12, mesh=mesh)
    ckpt = TrainCheckpointer(os.path.join(uninterrupted_dir), keep=3)
    last, _ = ckpt.restore(12, setup.abstract_state)
    ckpt.close()
    last = jax.device_get(last)
    for a, b in zip(jax.tree_util.tree_leaves(last.momentum),
                    jax.tree_util.tree_leaves(extras["momentum"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(last.image_queue, extras["image_queue"])
    np.testing.assert_array_equal(last.text_queue, extras["text_queue"])

    def fine_tune(queue_size):
        c = _config(data_dir, **{"loss.queue_size": queue_size})
        c.task = "retrieval"
        c.model.tie_encoder_decoder, c.model.text_decoder = False, False
        c.loss.lm_weight, c.loss.use_image_ids = 0.0, True
        c.init_checkpoint = model_dir
        s = trainer.build(c, steps_per_epoch=12, mesh=mesh, init_params=trainer.initial_params(c),
                          init_start=trainer.initial_start(c))
        return jax.device_get(s.state)

    state = fine_tune(32)
    want = variants.momentum_subtree(extras["momentum"])
    assert jax.tree_util.tree_structure(state.momentum) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(state.momentum), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(state.image_queue, extras["image_queue"])
    np.testing.assert_array_equal(state.text_queue, extras["text_queue"])
    assert (state.id_queue == -1).all() and int(state.queue_ptr) == 0
    other = fine_tune(64)  # another queue size: random unit rows, momentum still restored
    assert other.image_queue.shape == (64, 16)
    # float32 norm of 16 entries: 16 eps.
    np.testing.assert_allclose(np.linalg.norm(other.image_queue, axis=1), 1.0,
                               rtol=16 * np.finfo(np.float32).eps)
    np.testing.assert_array_equal(other.momentum["vision_proj"]["kernel"],
                                  want["vision_proj"]["kernel"])


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


def test_resume_with_other_data_names_the_fix(tmp_path, data_dir, uninterrupted_dir):
    """A workdir's checkpoint holds its input pipeline's position; resuming it on other data
    (here the same dataset copied elsewhere) is refused in one line naming the workdir and
    the fix (it was grain's multi-line DataSource error with a traceback)."""
    wd, other = tmp_path / "run", tmp_path / "data"
    shutil.copytree(uninterrupted_dir, wd)
    shutil.copytree(data_dir, other)
    r = subprocess.run(_cmd(wd, other, total_steps=16), env=_env(), capture_output=True,
                       text=True, timeout=600)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr[-2000:]  # (absl's dataset warnings go to stderr too)
    assert "holds step 12" in lines[0] and str(other) in lines[0] and "new --workdir" in lines[0]


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
    # The same 8-device mesh; only the cross-process all-reduce (gloo) sums in another order.
    # Reordering float32 sums moves them by at most ~n*eps of their scale, n = the longest
    # reduction: the 16x16x3 = 768-input patch embedding.
    rel = 768 * float(np.finfo(np.float32).eps)
    for step in a:
        for k in a[step]:
            assert b[step][k] == pytest.approx(a[step][k], rel=rel), (step, k)
