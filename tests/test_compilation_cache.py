"""The persistent compilation cache every blip_jax command turns on (blip_jax/compilation_cache.py):
where it lives, and that a second process loads the first one's executable instead of compiling."""

import os
import subprocess
import sys

import pytest

from blip_jax import compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE")

# A command (cli.entry_point, as caption/score/convert) that compiles one program and prints the
# cache's hit and miss events and the result.
COMMAND = """
import sys
from blip_jax import cli

@cli.entry_point
def main():
    import jax, jax.numpy as jnp, numpy as np
    events = []
    jax.monitoring.register_event_listener(lambda name, **kwargs: events.append(name))
    x = jax.jit(lambda a: jnp.tanh(a @ a.T).sum())(np.arange(64 * 64.0, dtype=np.float32).reshape(64, 64) / 4096)
    print(events.count("/jax/compilation_cache/cache_hits"),
          events.count("/jax/compilation_cache/cache_misses"), float(x))
    return 0

sys.exit(main())
"""


@pytest.fixture
def clean_env(monkeypatch):
    for name in JAX_VARS + (compilation_cache.ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_resolve_precedence(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache.resolve() == str(tmp_path / "home" / ".cache" / "blip_jax" / "jax")
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.resolve() == str(tmp_path / "xdg" / "blip_jax" / "jax")
    clean_env.setenv(compilation_cache.ENV, str(tmp_path / "mine"))
    assert compilation_cache.resolve() == str(tmp_path / "mine")
    for off in ("off", "OFF", "0", ""):
        clean_env.setenv(compilation_cache.ENV, off)
        assert compilation_cache.resolve() is None
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_own"))  # jax's own wins
    assert compilation_cache.resolve() == str(tmp_path / "jax_own")


def _run(env: dict) -> tuple[int, int, float]:
    out = subprocess.run([sys.executable, "-c", COMMAND], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]
    hits, misses, value = out.stdout.split()
    return int(hits), int(misses), float(value)


def test_second_process_loads_the_compiled_program(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in JAX_VARS}
    # Cache even this small program (by default only compilations over 1 s are stored).
    env.update(PYTHONPATH=ROOT, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env[compilation_cache.ENV] = str(tmp_path / "cache")
    first = _run(env)
    entries = sorted(os.listdir(tmp_path / "cache"))
    assert first[:2] == (0, 1) and any(e.endswith("-cache") for e in entries), (first, entries)
    second = _run(env)
    assert second == (1, 0, first[2]), (first, second)  # loaded, not compiled; same result
    assert sorted(os.listdir(tmp_path / "cache")) == entries
    env[compilation_cache.ENV] = "off"
    assert _run(env)[:2] == (0, 0)  # no cache consulted at all
