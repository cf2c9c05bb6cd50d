"""Test setup: 8 fake CPU devices (set before JAX starts), float32 matmuls everywhere, one
persistent compilation cache for the whole session, XLA's CPU code at LLVM -O0 for the
in-process tests, files longest first, each pytest-xdist worker on its own
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
# XLA's CPU code generated at LLVM -O0 and fusions emitted the older (non-MLIR) way: the
# in-process tests (and the commands they start with the suite's flags) spend ~3/4 of their
# time compiling many small programs and run each for a few steps. -O0 compiles them ~30%
# faster (tests/test_train_step.py + test_fused_lm.py pinned to one core: 252 s -> 178 s),
# runs them ~2x slower, and changes float rounding by an ulp or so (the tolerances are
# eps-derived for other machines anyway); without the fusion emitters the micro train step of
# test_train_step compiled in 2.8-3.6 s instead of 7.4-7.8 s at -O0 (its step 83 -> 92-104 ms).
# The first flag is XLA's backend (LLVM) optimisation level; whether any HLO pass also reads it
# was not checked. The long learning runs (train_utils.run_module_on_one_device,
# tests/test_bootstrap.py) drop the suite's flags and compile with XLA's defaults, as users do.
# BLIP_JAX_TEST_XLA_O0=0 turns both off. The process that decides (the xdist controller)
# records its decision in _FAST_COMPILE_ENV: its workers inherit XLA_FLAGS with the level in it
# and must not read that as a level the user set.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_FAST_COMPILE_ENV = "BLIP_JAX_TEST_FAST_COMPILE"
if _FAST_COMPILE_ENV not in os.environ:
    _on = (os.environ.get("BLIP_JAX_TEST_XLA_O0", "1") != "0"  # a level set by the user wins
           and "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"])
    if _on:
        os.environ["XLA_FLAGS"] += " " + " ".join(FAST_COMPILE_FLAGS)
    os.environ[_FAST_COMPILE_ENV] = "1" if _on else "0"
FAST_COMPILE = os.environ[_FAST_COMPILE_ENV] == "1"
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


# Files go out longest first (--dist loadfile --no-loadscope-reorder hands whole files to the
# pytest-xdist workers in collection order, each worker holding one file in reserve): the two
# end-to-end learning runs (about a quarter of the suite's work each) start at once, one on each
# worker, then the next-longest files, and the many short files fill both workers at the end, so
# neither is left running a long file while the other idles. Worker-seconds per file of a
# --durations run (2026-12-03) set the order; files not named here keep their order after these.
FILES_BY_COST = (
    "test_bootstrap.py", "test_nlvr_learns.py",  # the learning runs, one per worker
    "test_trainer.py", "test_vqa.py", "test_train_step.py", "test_bf16_inference.py",
    "test_decoding.py", "test_fused_lm.py", "test_parity_hf.py", "test_capfilt.py",
    "test_convert.py", "test_webdataset.py", "test_nlvr.py", "test_evaluation.py",
    "test_capfilt_scale.py")


def file_rank(name: str) -> int:
    return FILES_BY_COST.index(name) if name in FILES_BY_COST else len(FILES_BY_COST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: file_rank(item.path.name))  # stable: every file keeps its own order


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ[compilation_cache.ENV], ignore_errors=True)
