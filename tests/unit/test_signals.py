"""PreemptionFlag in a real process: one stop delivered twice, seconds apart (directly by Slurm and again through the
rank's parent, on a loaded node), is one request to save; a SIGTERM well after it exits at once, a late SIGUSR1 (a
warning, never a hurry) does not; and a signal that lands while the rank is stuck writing to its stderr is taken
without an error."""
from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import REPO

RANK = """
import os, signal, sys, time
import launcher.train.signals as signals
signals.SAME_EVENT_S = float(sys.argv[1])
flag = signals.PreemptionFlag()
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(1.5)  # the second copy, late
os.kill(os.getpid(), getattr(signal, sys.argv[2]))
time.sleep(0.2)
print("requested" if flag() else "not requested", flush=True)
"""

# The main thread blocks in a write to stderr (the reader is not reading: a stalled log copier) when the signal comes.
BLOCKED_WRITER = """
import os, signal, sys, threading, time
import launcher.train.signals as signals
flag = signals.PreemptionFlag()
threading.Thread(target=lambda: (time.sleep(0.5), os.kill(os.getpid(), signal.SIGUSR1)), daemon=True).start()
sys.stderr.write("x" * 1_000_000)
sys.stderr.flush()
print("requested" if flag() else "not requested", flush=True)
"""


def run(window: float, late: str = "SIGUSR1") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RANK, str(window), late], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_a_stop_delivered_twice_seconds_apart_is_one_request_to_save():
    result = run(10.0)  # the shipped window
    assert result.returncode == 0 and result.stdout.strip() == "requested", result.stderr
    assert result.stderr.count("received SIGUSR1: saving at the next step boundary") == 1
    assert "second signal" not in result.stderr


def test_a_sigterm_after_the_window_exits_at_once_without_saving():
    result = run(1.0, "SIGTERM")
    assert result.returncode == 128 + 15 and result.stdout == ""
    assert "second signal SIGTERM: exiting now without saving" in result.stderr


def test_a_late_copy_of_slurms_warning_signal_is_still_the_same_stop():
    result = run(1.0, "SIGUSR1")
    assert result.returncode == 0 and result.stdout.strip() == "requested", result.stderr
    assert result.stderr.count("received SIGUSR1") == 1 and "second signal" not in result.stderr


def test_a_signal_while_the_rank_is_blocked_writing_to_stderr_is_taken_and_the_write_completes():
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_WRITER], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)  # the pipe is full and the signal has come before anything is read
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "requested", err[-2000:]
    assert err.startswith("x" * 65536)  # what the pipe held before; CPython's write may end early when interrupted
    assert "received SIGUSR1: saving at the next step boundary" in err and "Traceback" not in err
