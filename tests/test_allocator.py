"""malloc on transparent huge pages (blip_jax/allocator.py): the absl commands re-execute
themselves once with glibc's hugetlb tunable, the test workers inherit it, and with it a
freshly malloc'd buffer faults in 2 MiB pages rather than 4 KiB ones."""

import os
import subprocess
import sys

import pytest

from blip_jax import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_huge_pages = pytest.mark.skipif(not allocator.available(),
                                      reason="no glibc >= 2.35 or transparent huge pages off")


def _python(code: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("GLIBC_TUNABLES", allocator.ENV)}
    out = subprocess.run([sys.executable, "-c", code], env={**base, "PYTHONPATH": ROOT, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_environment_adds_the_tunable_once():
    assert allocator.environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    got = allocator.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert got["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    kept = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}  # the user's own setting wins
    assert allocator.environment(kept) == kept


REEXEC = ("import os; print('start', flush=True); from blip_jax import allocator; "
          "allocator.reexec_with_huge_pages(); print(os.environ.get('GLIBC_TUNABLES'))")


@needs_huge_pages
def test_a_command_reexecutes_itself_once_with_the_tunable():
    assert _python(REEXEC) == ["start", "start", "glibc.malloc.hugetlb=1"]
    assert _python(REEXEC, **{allocator.ENV: "off"}) == ["start", "None"]


@needs_huge_pages
def test_the_workers_of_the_suite_have_the_tunable():
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("set by tests/conftest.py for the xdist workers it starts")
    assert allocator.TUNABLE in os.environ.get("GLIBC_TUNABLES", "")


# 64 MiB through the C library's malloc (as XLA allocates; numpy madvises its own arrays),
# which serves it from a fresh mmap, then written once.
TOUCH = ("import ctypes, resource; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
         "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
         "p = libc.malloc(ctypes.c_size_t(1 << 26)); ctypes.memset(p, 1, 1 << 26); "
         "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")


@needs_huge_pages
def test_a_fresh_buffer_faults_in_huge_pages():
    """64 MiB touched: 16,384 faults of 4 KiB pages; in 2 MiB pages 32, plus the ends of the
    mapping that are not 2 MiB-aligned in small pages (at most 2 x 511; 544 measured). Above a
    quarter of the small-page count the kernel gave (nearly) no huge pages."""
    small = int(_python(TOUCH, **{allocator.ENV: "off"})[0])
    huge = int(_python(TOUCH, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")[0])
    assert small >= 16384 * 0.9, small
    assert huge < small / 4, (huge, small)
