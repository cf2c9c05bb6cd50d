"""tests/conftest.py pins each pytest-xdist worker to its own share of the CPUs (worker i of N:
every N-th CPU), and the commands a test starts inherit it."""

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
