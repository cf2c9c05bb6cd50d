"""glibc's malloc on transparent huge pages for XLA:CPU's buffers (training and evaluation
commands, and the test suite's workers).

XLA:CPU allocates each execution's buffers with malloc and frees them when it ends; at these
sizes glibc serves them from fresh mmap'd memory, so every step of the tiny pre-training
touches ~140 MB of new 4 KiB pages: ~35,000 page faults and ~70 ms of kernel time per step
(`python benchmarks/tiny_steps.py --huge-pages`). With the glibc tunable `glibc.malloc.hugetlb=1`
(glibc >= 2.35) malloc asks for transparent huge pages (madvise), 2 MiB each: ~300 faults per
step and the step 1.27x faster on one core (retrieval fine-tuning 1.43x).

Tunables are read when the process starts, so a command that finds them unset re-executes
itself once with them set (its children inherit them). BLIP_JAX_HUGE_PAGES=off keeps the
process as it is; nothing happens where the kernel's transparent huge pages are off or the C
library is not glibc >= 2.35.
"""

from __future__ import annotations

import os
import platform
import sys

ENV = "BLIP_JAX_HUGE_PAGES"
TUNABLE = "glibc.malloc.hugetlb"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def available() -> bool:
    """glibc >= 2.35 on Linux with transparent huge pages not turned off."""
    if not sys.platform.startswith("linux"):
        return False
    lib, version = platform.libc_ver()
    try:
        if lib != "glibc" or tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
            return False
        with open(_THP) as f:
            return "[never]" not in f.read()
    except (OSError, ValueError):
        return False


def wanted() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("off", "0", "false", "no")


def environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with the tunable added to GLIBC_TUNABLES (unchanged if set there already)."""
    current = env.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return env
    return {**env, "GLIBC_TUNABLES": f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"}


def set_for_children() -> None:
    """Sets the tunable in this process's environment: processes started from now on (pytest
    workers, a command's subprocesses) have it; this one does not."""
    if wanted() and available():
        os.environ.update(environment(dict(os.environ)))


def reexec_with_huge_pages() -> None:
    """Re-executes this command (same interpreter and arguments) with the tunable set, unless it
    is set already, turned off, or not available. Call first thing in a command's __main__:
    everything before it runs twice."""
    if not (wanted() and available()) or TUNABLE in os.environ.get("GLIBC_TUNABLES", ""):
        return
    argv = list(getattr(sys, "orig_argv", []))
    if not argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], environment(dict(os.environ)))
