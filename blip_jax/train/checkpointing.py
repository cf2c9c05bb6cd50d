"""Train checkpoints: orbax CheckpointManager (async, keep K) over the train state, plus each
process's data-iterator state, so a restart resumes on exactly the next batch.

Layout: WORKDIR/checkpoints/<step>/state (orbax, written by all processes together) and
WORKDIR/checkpoints/data_state/<step>/process_<i>.json (the grain iterator of process i).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class TrainCheckpointer:
    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.data_dir = os.path.join(self.directory, "data_state")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save),
            item_names=("state",))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: Optional[bytes | dict | str]) -> None:
        """Writes the iterator state first (synchronously, tiny), then starts the async save."""
        if data_state is not None:
            path = os.path.join(self.data_dir, str(step))
            os.makedirs(path, exist_ok=True)
            tmp = os.path.join(path, f".process_{jax.process_index()}.json.tmp")
            with open(tmp, "w") as f:
                json.dump(_jsonable(data_state), f)
            os.replace(tmp, os.path.join(path, f"process_{jax.process_index()}.json"))
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                          force=True)
        self._prune_data_states()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Optional[Any]]:
        """State restored onto the shardings in `abstract_state` (any mesh shape) and this
        process's iterator state (None when the checkpoint has none)."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        path = os.path.join(self.data_dir, str(step), f"process_{jax.process_index()}.json")
        data_state = None
        if os.path.exists(path):
            with open(path) as f:
                data_state = _from_jsonable(json.load(f))
        return restored["state"], data_state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def _prune_data_states(self) -> None:
        if jax.process_index() != 0 or not os.path.isdir(self.data_dir):
            return
        kept = set(self.manager.all_steps()) | {s for s in [self.manager.latest_step()] if s}
        for name in os.listdir(self.data_dir):
            # Keep states of retained checkpoints and of saves still in flight (newer steps).
            if name.isdigit() and int(name) not in kept and int(name) < max(kept or {0}):
                shutil.rmtree(os.path.join(self.data_dir, name), ignore_errors=True)


def _jsonable(state):
    if isinstance(state, bytes):
        return {"__bytes__": state.decode("latin-1")}
    return state


def _from_jsonable(obj):
    if isinstance(obj, dict) and set(obj) == {"__bytes__"}:
        return obj["__bytes__"].encode("latin-1")
    return obj
