"""Leaving a gloo job without an abort at exit. Standard library only: a user script's sitecustomize imports it.

A rank whose training finished can still die with SIGABRT ("terminate called without an active exception", exit code
134) while the interpreter shuts down. gdb on a core of that abort in a 2-rank gloo script (torch 2.13, Python 3.11)
shows how: one of gloo's worker threads (`pt_gloo_runloop`) destroys a finished collective after the main thread has
gone on; dropping the collective's tensors takes the GIL; a thread that takes the GIL once the interpreter is
finalizing is ended with pthread_exit, and that unwinding through a noexcept destructor calls std::terminate.
Destroying the default group is not enough: DeepSpeed and the Trainer keep subgroups whose worker threads live until
the process ends, and a worker preempted right after a collective's end (a loaded machine) still holds its tensors.
So, before the interpreter finalizes: destroy the default gloo group, then wait, with the GIL released, until gloo's
worker threads are asleep. One that still runs shows as R in /proc/self/task/<tid>/stat; an idle one sleeps (S) on
its queue. Not covered: a collective still in flight at exit (a script that did not wait for its own async work).
"""
from __future__ import annotations

import os
import sys
import time

WORKER_THREAD = "pt_gloo_runloop"  # the name torch gives ProcessGroupGloo's worker threads
WAIT_S = 2.0  # at most this long at exit; past it the process leaves as before
POLL_S = 0.01
QUIET_POLLS = 3  # consecutive polls with every worker asleep


def worker_states(task_dir: str = "/proc/self/task", name: str = WORKER_THREAD) -> list[str]:
    """The scheduler state (R, S, D, ...) of each of this process's threads called `name`."""
    states = []
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"{task_dir}/{tid}/stat") as f:
                states.append(f.read().rpartition(")")[2].split()[0])  # the name may hold spaces and parentheses
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
    return states


def wait_for_idle_workers(timeout_s: float = WAIT_S, name: str = WORKER_THREAD) -> bool:
    """Sleep (the GIL and the CPU free for them) until every `name` thread has been asleep for QUIET_POLLS polls in a
    row; True when they were, at once when there are none. Sleeping at least once also lets a worker that waits for
    the GIL take it."""
    if not worker_states(name=name):
        return True
    deadline, quiet = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        quiet = quiet + 1 if all(s == "S" for s in worker_states(name=name)) else 0
        if quiet >= QUIET_POLLS:
            return True
    return False


def leave_gloo() -> None:
    """Destroy a gloo default group (local: an NCCL one may wait on peers that are gone, so it is left), then wait
    for gloo's workers, from a rank's last exit hook or at the end of its training."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
            dist.destroy_process_group()
    except Exception:  # the process is exiting anyway: never turn a clean exit into a traceback
        pass
    wait_for_idle_workers()
