"""grain worker processes end when the process that started them dies, however it died.

grain (0.2.18) runs each DataLoader worker in a `spawn`ed multiprocessing child that loops
until the parent sets a stop event; a parent killed by SIGKILL (preemption, the OOM killer)
never sets it, and the workers would run on, re-parented to init, for as long as the machine
is up. The multiprocessing resource tracker then outlives them too: it exits when the last
holder of its pipe is gone, and every worker holds one.

The mechanism: in a worker, a daemon thread blocks on `multiprocessing.parent_process().
sentinel`, the read end of a pipe whose write end only the parent holds (opened close-on-exec,
so no other process inherits it). The kernel closes it when the parent dies, whatever killed
it, and the thread then ends the worker at once (os._exit: the parent is gone, there is nobody
to hand results or errors to). No polling, no Linux-only call, and no race: a parent dead before
the watch starts leaves the pipe already closed. Once the workers are gone the resource tracker
reads end-of-file, unlinks any shared memory they left behind and exits.

Not prctl(PR_SET_PDEATHSIG): it fires when the *thread* that started the child exits, and grain
starts workers from its own prefetch threads, so it would kill healthy workers.

grain's DataLoader takes no worker init function, so the hook is unpickling: every grain
loader here reads a `RecordSource`, which is pickled into each worker and calls
`exit_with_parent()` when it is unpickled there (a no-op in the main process).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
import threading

_lock = threading.Lock()
_watching = False
EXIT_CODE = 70  # what a worker whose parent died exits with (EX_SOFTWARE): tells it apart


def exit_with_parent() -> bool:
    """In a multiprocessing child: end this process as soon as its parent dies (started once per
    process). Returns whether a watch is running; False in a main process, which has no parent
    to follow."""
    global _watching
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return False
    with _lock:
        if not _watching:
            threading.Thread(target=_watch, args=(parent.sentinel, parent.pid), daemon=True,
                             name="blip_jax-exit-with-parent").start()
            _watching = True
    return True


def _watch(sentinel: int, parent_pid: int | None) -> None:
    multiprocessing.connection.wait([sentinel])  # returns when the parent's end is closed
    try:
        sys.stderr.write(f"blip_jax data worker {os.getpid()}: parent {parent_pid} is gone; exiting\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_CODE)
