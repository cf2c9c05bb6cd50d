"""XLA compile options for programs that run once per process.

A run's state initialisation (parameters, momentum encoders, optimiser moments, ITC queues) is
one program that XLA compiles as carefully as the train step, yet runs once: a few hundred
inlined threefry calls, thousands of small fusions. On XLA:CPU, LLVM at backend optimisation
level 2 instead of XLA's default 3 compiles it faster (a tiny recipe's whole set-up, 1 core of a
2-core AMD EPYC: pre-training 17.7 -> 12.3 s, retrieval 16.0 -> 10.5 s; the base model's set-up
only 77 -> 74 s: its 51 s of compilation is mostly not LLVM's optimiser, and running the init
takes 16 s) and gives the same bits (measured on those states and the base model's;
tests/test_xla_options.py checks it). The train step stays at the default: there level 2 moves
the rounding. Level 0 moves the initial parameters too.

Only on the CPU backend (the GPU compilers were not checked), and never over a level the user
set in XLA_FLAGS."""

from __future__ import annotations

import os

LEVEL_FLAG = "--xla_backend_optimization_level"
ONE_SHOT_LEVEL = 2


def one_shot(backend: str | None = None) -> dict:
    """`compiler_options` for jax.jit of a program run once (the state initialisation)."""
    import jax

    if (backend or jax.default_backend()) != "cpu" or LEVEL_FLAG in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {LEVEL_FLAG.lstrip("-"): ONE_SHOT_LEVEL}
