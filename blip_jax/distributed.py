"""Multi-process start-up: `jax.distributed.initialize` from flags or the environment."""

from __future__ import annotations

import os
from typing import Optional

import jax


def define_flags() -> None:
    """The multi-process absl flags every command-line entry point shares."""
    from absl import flags

    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
    flags.DEFINE_integer("process_id", None, "This process's id (multi-process runs).")


def initialize_from_flags() -> None:
    """`initialize` with the values of the flags `define_flags` declared."""
    from absl import flags

    f = flags.FLAGS
    initialize(f.coordinator_address, f.num_processes, f.process_id)


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    """Joins a multi-process run when one is described; a no-op for a single process.

    On TPU pods and SLURM/Open MPI clusters JAX finds everything itself
    (`BLIP_AUTO_DISTRIBUTED=1`, set by the launch/ scripts). Elsewhere pass the coordinator
    address, process count and id, or set BLIP_COORDINATOR, BLIP_NUM_PROCESSES, BLIP_PROCESS_ID.
    """
    coordinator = coordinator or os.environ.get("BLIP_COORDINATOR")
    if num_processes is None and os.environ.get("BLIP_NUM_PROCESSES"):
        num_processes = int(os.environ["BLIP_NUM_PROCESSES"])
    if process_id is None and os.environ.get("BLIP_PROCESS_ID"):
        process_id = int(os.environ["BLIP_PROCESS_ID"])
    if coordinator:
        if num_processes is None or process_id is None:
            raise ValueError("a coordinator address needs the process count and this process's "
                             "id (--num_processes/--process_id or BLIP_NUM_PROCESSES/BLIP_PROCESS_ID)")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif os.environ.get("BLIP_AUTO_DISTRIBUTED") == "1":
        jax.distributed.initialize()
