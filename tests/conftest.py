"""Test setup: 8 fake CPU devices (set before JAX starts), float32 matmuls everywhere, and one
persistent compilation cache for the whole session.

The cache (blip_jax/compilation_cache.py) is a fresh directory per pytest session, made by the
controlling process and inherited by the xdist workers and by every command a test starts, so
that the same program (a tiny model's train step, decoder, re-rank) compiles once per run
rather than once per test file and per bootstrap stage; nothing carries over between runs.
"""

import os
import shutil
import tempfile

from blip_jax import compilation_cache

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = compilation_cache.ENV not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:  # only the first process (the controller) gets here; workers inherit the path
    os.environ[compilation_cache.ENV] = tempfile.mkdtemp(prefix="blip_jax_test_xla_cache_")
compilation_cache.enable()

import jax  # noqa: E402

# Parity tests compare against PyTorch float32: keep XLA's CPU dots at full precision.
jax.config.update("jax_default_matmul_precision", "highest")


# The two end-to-end learning runs (about a quarter of the suite's work each) go first, one to
# each pytest-xdist worker (--dist loadfile --no-loadscope-reorder hands out whole files in
# collection order): the other files then fill both workers, so neither is left with a long
# file at the end.
LONG_FILES_FIRST = ("test_bootstrap.py", "test_nlvr_learns.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONG_FILES_FIRST.index(name) if name in LONG_FILES_FIRST else len(LONG_FILES_FIRST)
    items.sort(key=rank)  # stable: every file keeps its own order


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ[compilation_cache.ENV], ignore_errors=True)
