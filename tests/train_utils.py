"""Small configs and batches shared by the training tests."""

import os
import subprocess
import sys

import ml_collections
import numpy as np

from blip_jax.models.config import BlipConfig, TextConfig, VisionConfig
from blip_jax.train.defaults import base_config

# Smallest model that still has every part (ViT block, text layer with cross-attention,
# tied decoder, LM head): keeps compile times of the many sharded variants low.
MICRO = BlipConfig(
    vision=VisionConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, mlp_dim=64),
    # No dropout: the tests compare runs whose dropout masks differ by construction (gradient
    # accumulation draws one key per micro-batch).
    text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                    max_position_embeddings=32, dropout_rate=0.0, attention_dropout_rate=0.0),
    embed_dim=16, tie_encoder_decoder=True)


def micro_config(batch_size: int = 16, **loss) -> ml_collections.ConfigDict:
    c = base_config("tiny")
    c.model = MICRO.to_dict()
    c.batch_size = batch_size
    c.total_steps = 10
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.loss.queue_size = 4 * batch_size
    c.loss.alpha_ramp_epochs = 1.0
    for k, v in loss.items():
        c.loss[k] = v
    return c


def random_batch(batch_size: int = 16, length: int = 8, image_size: int = 32, seed: int = 0,
                 duplicate_ids: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 3000, (batch_size, length)).astype(np.int32)
    ids[:, 0] = 101
    mask = np.ones((batch_size, length), np.int32)
    mask[::3, length // 2:] = 0  # some padded captions
    ids[mask == 0] = 0
    image_id = np.arange(batch_size, dtype=np.int32)
    if duplicate_ids:
        image_id = image_id // 2
    return {"image": rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
            "text_ids": ids, "text_mask": mask, "image_id": image_id}


def fake_devices(count: int) -> str:
    """XLA_FLAGS for a command with `count` fake CPU devices and the suite's other XLA flags
    (tests/conftest.py: its compile-time setting)."""
    rest = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join([f"--xla_force_host_platform_device_count={count}", *rest])


def run_two_processes(command: list[str], port: int, timeout: float) -> list[str]:
    """Runs `command` as processes 0 and 1 of a 2-process jax.distributed job over loopback
    (4 fake CPU devices each, blip_jax.distributed's BLIP_* variables); asserts both exit 0 and
    returns their combined stdout/stderr logs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu",
                                       XLA_FLAGS=fake_devices(4),
                                       BLIP_COORDINATOR=f"127.0.0.1:{port}", BLIP_NUM_PROCESSES="2",
                                       BLIP_PROCESS_ID=str(i))) for i in range(2)]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    return logs


def run_module_on_one_device(*args: str, timeout: float = 1200) -> str:
    """`python -m ARGS` with one CPU device, as on a user's machine: the suite's 8 fake devices
    would split a small batch 8 ways, far slower for the learning runs than one device. Asserts
    exit 0; returns stdout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout
