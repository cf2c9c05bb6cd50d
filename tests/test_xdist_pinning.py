"""tests/conftest.py pins each pytest-xdist worker to its own share of the CPUs (worker i of N:
every N-th CPU), and the commands a test starts inherit it; files run longest first."""

import os
import subprocess
import sys

import pytest


def test_xdist_worker_runs_on_its_share_of_the_cpus():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    cpus = os.cpu_count() or 1
    if not worker or count < 2 or cpus < count or os.environ.get("BLIP_JAX_TEST_PIN") == "0":
        pytest.skip("runs under pytest-xdist with 2 or more workers on at least as many CPUs")
    mine = sorted(os.sched_getaffinity(0))
    assert mine == list(range(cpus))[int(worker[2:]) % count::count]
    child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str(mine)


def test_costly_files_go_first_and_exist(request):
    """conftest.FILES_BY_COST names real files (a renamed one would silently lose its place)
    and collection follows it: this session's items are ranked in non-decreasing order."""
    from conftest import FILES_BY_COST, file_rank

    here = os.path.dirname(os.path.abspath(__file__))
    assert len(set(FILES_BY_COST)) == len(FILES_BY_COST)
    assert [f for f in FILES_BY_COST if not os.path.exists(os.path.join(here, f))] == []
    assert FILES_BY_COST[:2] == ("test_bootstrap.py", "test_nlvr_learns.py")
    assert file_rank("test_bootstrap.py") < file_rank("test_trainer.py") < file_rank("test_optim.py")
    ranks = [file_rank(item.path.name) for item in request.session.items]
    assert ranks == sorted(ranks)


def test_suite_flags_compile_fast_and_reach_the_commands_it_starts():
    """conftest: its fast-compile XLA flags in this process (an xdist worker too) and in the
    commands a test starts with train_utils.fake_devices (the device count replaced, the rest
    kept)."""
    from conftest import FAST_COMPILE, FAST_COMPILE_FLAGS
    from train_utils import fake_devices

    if not FAST_COMPILE:
        pytest.skip("turned off (BLIP_JAX_TEST_XLA_O0=0 or a level in XLA_FLAGS)")
    assert set(FAST_COMPILE_FLAGS) <= set(os.environ["XLA_FLAGS"].split())
    flags = fake_devices(3).split()
    assert flags[0] == "--xla_force_host_platform_device_count=3"
    assert set(FAST_COMPILE_FLAGS) <= set(flags)
    assert sum(f.startswith("--xla_force_host_platform_device_count") for f in flags) == 1


def test_xdist_workers_compile_fast_too(tmp_path):
    """A fresh `pytest -n 2` (as CI runs it): the workers inherit the controller's XLA_FLAGS,
    level included, and must still count the fast-compile flags as the suite's own (they once
    read the inherited level as the user's and skipped the flags test)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items()
           if k not in ("BLIP_JAX_TEST_FAST_COMPILE", "BLIP_JAX_TEST_XLA_O0")
           and not k.startswith("PYTEST_")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-n", "2", "-p", "no:cacheprovider",
         f"{here}/test_xdist_pinning.py::test_suite_flags_compile_fast_and_reach_the_commands_it_starts"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "1 passed" in out.stdout and "skipped" not in out.stdout, \
        out.stdout[-2000:] + out.stderr[-2000:]
