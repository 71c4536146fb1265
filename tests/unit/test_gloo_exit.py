"""Waiting for gloo's worker threads before the interpreter ends (launcher/gloo_exit.py), with real threads: torch's
own gloo workers in a child process, and named threads here that work without the GIL as a preempted worker would."""
from __future__ import annotations

import ctypes
import hashlib
import subprocess
import sys
import threading
import time

from launcher import gloo_exit
from tests.conftest import REPO

PR_SET_NAME = 15
NAME = "lnch_test_wk"


def named_thread(name: str, busy_s: float, done: threading.Event) -> threading.Thread:
    """A thread called `name` (its /proc comm) that hashes without the GIL for busy_s, then sleeps until done."""
    named = threading.Event()

    def run() -> None:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode())
        named.set()
        block, end = b"x" * (8 << 20), time.monotonic() + busy_s
        while time.monotonic() < end:
            hashlib.sha256(block).digest()  # releases the GIL for large buffers: the thread runs (R) without it
        done.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert named.wait(10)  # a loaded machine may start it late
    return thread


def test_the_wait_lasts_while_a_worker_runs_and_ends_once_it_sleeps():
    done = threading.Event()
    named_thread(NAME, busy_s=0.6, done=done)
    try:
        assert any("R" in gloo_exit.worker_states(name=NAME) or time.sleep(0.005) for _ in range(100))  # it runs
        start = time.monotonic()
        assert gloo_exit.wait_for_idle_workers(timeout_s=5.0, name=NAME)
        assert 0.4 < time.monotonic() - start < 3.0
        assert gloo_exit.worker_states(name=NAME) == ["S"]
    finally:
        done.set()


def test_the_wait_gives_up_after_its_timeout_and_returns_at_once_without_workers():
    done = threading.Event()
    named_thread(NAME, busy_s=1.0, done=done)
    try:
        start = time.monotonic()
        assert not gloo_exit.wait_for_idle_workers(timeout_s=0.3, name=NAME)
        assert 0.3 <= time.monotonic() - start < 1.5
    finally:
        done.set()
    start = time.monotonic()
    assert gloo_exit.wait_for_idle_workers(name="no_such_thread")
    assert time.monotonic() - start < 0.5  # at once: well under WAIT_S (2 s), with room for a descheduled test process


def test_torch_names_its_gloo_workers_as_the_wait_expects(tmp_path):
    """If torch renamed them, the wait would silently find none: a real gloo group, its workers counted by name."""
    script = (
        "import time, torch, torch.distributed as dist\n"
        "from launcher import gloo_exit\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path}/store', rank=0, world_size=1)\n"
        "group = dist.new_group([0])\n"
        "dist.all_reduce(torch.ones(8)); dist.all_reduce(torch.ones(8), group=group)\n"
        # a worker names itself once it first runs: on a loaded machine one collective's idle twin may not have yet
        "for _ in range(1000):\n"
        "    if len(gloo_exit.worker_states()) >= 4: break\n"
        "    time.sleep(0.01)\n"
        "print(len(gloo_exit.worker_states()), gloo_exit.wait_for_idle_workers(timeout_s=10))\n"
        "gloo_exit.leave_gloo()\n"
        "print(len(gloo_exit.worker_states()), dist.is_initialized())\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    before, after = out.stdout.split("\n")[:2]
    assert before.split() == ["4", "True"]  # two workers per group, both groups
    assert after.split() == ["2", "False"]  # the default group's are gone; the kept subgroup's workers remain
