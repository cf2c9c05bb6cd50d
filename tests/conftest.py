"""Test setup: 8 fake CPU devices (set before JAX starts), float32 matmuls everywhere, one
persistent compilation cache for the whole session, each pytest-xdist worker on its own
share of the CPUs, and malloc on huge pages in the workers and the commands tests start
(blip_jax/allocator.py: set here in the controller, before it starts the workers).

The cache (blip_jax/compilation_cache.py) is a fresh directory per pytest session, made by the
controlling process and inherited by the xdist workers and by every command a test starts, so
that the same program (a tiny model's train step, decoder, re-rank) compiles once per run
rather than once per test file and per bootstrap stage; nothing carries over between runs.
"""

import os
import shutil
import tempfile

from blip_jax import allocator, compilation_cache

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = compilation_cache.ENV not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:  # only the first process (the controller) gets here; workers inherit the path
    os.environ[compilation_cache.ENV] = tempfile.mkdtemp(prefix="blip_jax_test_xla_cache_")
compilation_cache.enable()
allocator.set_for_children()



def _pin_xdist_worker() -> None:
    """Under pytest-xdist, worker i of N runs on its own share of the CPUs (every N-th one), and
    so does every command its tests start (affinity is inherited). Unpinned, the two workers'
    processes, each with XLA's thread pools, contend for both cores of the 2-core CI machine:
    two tiny pre-trainings side by side took 150 s each unpinned, 124 s pinned one per core.
    BLIP_JAX_TEST_PIN=0 turns it off (e.g. beside other work on a larger machine)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... (unset without xdist)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if (os.environ.get("BLIP_JAX_TEST_PIN", "1") == "0" or not worker.startswith("gw")
            or count < 2 or not hasattr(os, "sched_setaffinity")):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= count:
        os.sched_setaffinity(0, cpus[int(worker[2:]) % count::count])


_pin_xdist_worker()  # before JAX starts its thread pools

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
