"""Test setup: 8 fake CPU devices (set before JAX starts) and float32 matmuls everywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Parity tests compare against PyTorch float32: keep XLA's CPU dots at full precision.
jax.config.update("jax_default_matmul_precision", "highest")
