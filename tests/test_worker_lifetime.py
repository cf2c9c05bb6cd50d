"""A trainer killed with SIGKILL leaves no process behind: its grain workers and the
multiprocessing resource tracker exit with it (blip_jax/data/worker_lifetime.py)."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from blip_jax.data import prepare
from train_utils import fake_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds processes via /proc")


def _session(sid: int) -> dict[int, tuple[str, int, str]]:
    """Live (not zombie) processes of session `sid`: pid -> (state, ppid, command line)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        state, ppid, session = fields[0], int(fields[1]), int(fields[3])
        if session == sid and state != "Z":  # a zombie holds no memory; init reaps it
            out[int(name)] = (state, ppid, cmd)
    return out


def _reads_records(pid: int) -> bool:
    """Whether process `pid` has a dataset file open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        return any("array_record" in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds)
    except OSError:
        return False


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have just exited
        os.kill(pid, signal.SIGKILL)


def test_sigkilled_trainer_leaves_no_process(tmp_path):
    data_dir = str(tmp_path / "data")
    prepare.ensure_synthetic(data_dir, num_images=40, noise_rate=0.4, seed=0)
    overrides = {
        "data.data_dir": data_dir, "data.synthetic_num_images": 40, "data.workers": 1,
        "data.randaugment": False, "batch_size": 4, "loss.queue_size": 8, "total_steps": 1000,
        "log_every_steps": 1, "checkpoint_every_steps": 1000, "eval.every_steps": 0,
        "model.vision.image_size": 16, "model.vision.patch_size": 8, "model.vision.depth": 1,
        "model.vision.width": 16, "model.vision.mlp_dim": 16, "model.text.num_layers": 1,
        "model.text.hidden_size": 16, "model.text.intermediate_size": 16, "model.embed_dim": 8,
        "data.max_tokens": 8,
    }
    cmd = [sys.executable, "-m", "blip_jax.train", f"--config={ROOT}/configs/pretrain_tiny.py",
           f"--workdir={tmp_path / 'run'}", *(f"--config.{k}={v}" for k, v in overrides.items())]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=fake_devices(1))
    # Its own session: every descendant, re-parented or not, keeps the trainer's pid as sid.
    log = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline, reading = time.time() + 120, False
        while not reading and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            procs = _session(proc.pid)
            workers = [p for p, (_, ppid, c) in procs.items() if ppid == proc.pid and "spawn_main" in c]
            # Kill once the worker reads records: it is past start-up, in grain's prefetch loop.
            reading = bool(workers) and all(_reads_records(p) for p in workers)
        log.seek(0)
        assert reading and proc.poll() is None, f"no worker reading data: {log.read()[-3000:]}"
        assert any("resource_tracker" in c for _, _, c in procs.values()), procs
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while _session(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _session(proc.pid), f"outlived the SIGKILLed trainer: {_session(proc.pid)}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        # Whatever is left of the run, by pid: the workers first, so that the resource tracker
        # can still unlink the shared memory they leave; then anything else (the tracker).
        for pid, (_, _, c) in _session(proc.pid).items():
            if "resource_tracker" not in c:
                _kill(pid)
        deadline = time.time() + 5
        while _session(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        for pid in _session(proc.pid):
            _kill(pid)
        log.close()
