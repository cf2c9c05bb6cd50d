"""JAX's persistent compilation cache for every `python -m blip_jax.*` command.

XLA compiles each jitted program (train step, decoder, ITM re-rank) once per process; a pipeline
of many processes or stages with the same shapes (the bootstrap experiment's conditions and
seeds, a resumed run, a second evaluation) would compile the same programs again: at the tiny
scale on 2 CPU cores a pre-training stage's compilation (~50 s) outlasts a few hundred steps.
With the cache on, XLA's executable is stored under a key of the program, the compile options,
the XLA_FLAGS and the jax/jaxlib version, and a later process with the same program loads it.

Where the cache lives (first match):
  1. JAX_COMPILATION_CACHE_DIR set by the user: jax's own setting, left as it is;
  2. BLIP_JAX_COMPILATION_CACHE: a directory, or `off` to compile every time;
  3. $XDG_CACHE_HOME/blip_jax/jax (default ~/.cache/blip_jax/jax).
The cache is capped at MAX_BYTES (least recently used entries evicted); with a cap jax takes a
file lock around each read and write, so concurrent processes (pytest workers, CapFilt hosts
on one file system) share one directory safely.
"""

from __future__ import annotations

import os
import sys

ENV = "BLIP_JAX_COMPILATION_CACHE"
OFF = ("off", "0", "false", "none")
MAX_BYTES = 4 << 30


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "blip_jax", "jax")


def resolve() -> str | None:
    """The cache directory the settings above select; None when it is off."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    value = os.environ.get(ENV)
    if value is not None and value.strip().lower() in OFF + ("",):
        return None
    return value or default_dir()


def enable() -> str | None:
    """Turns the cache on for this process and the processes it starts; returns its directory
    (None when off). Call before the first compilation; safe to call again."""
    path = resolve()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a read-only home: run without the cache, and say so
        print(f"warning: no compilation cache ({path}: {e.strerror}); set {ENV} to a writable "
              f"directory or to 'off'", file=sys.stderr)
        return None
    settings = {"jax_compilation_cache_dir": path}
    if not os.environ.get("JAX_COMPILATION_CACHE_MAX_SIZE"):
        settings["jax_compilation_cache_max_size"] = MAX_BYTES
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)  # read by jax when imported, here and in children
    if "jax" in sys.modules:  # already imported: its config has read the environment
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    return path
