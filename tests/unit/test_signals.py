"""PreemptionFlag in a real process: one stop delivered twice, seconds apart (directly by Slurm and again through the
rank's parent, on a loaded node), is one request to save; a signal well after it exits at once."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

RANK = """
import os, signal, sys, time
import launcher.train.signals as signals
signals.SAME_EVENT_S = float(sys.argv[1])
flag = signals.PreemptionFlag()
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(1.5)  # the second copy, late
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.2)
print("requested" if flag() else "not requested", flush=True)
"""


def run(window: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RANK, str(window)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_a_stop_delivered_twice_seconds_apart_is_one_request_to_save():
    result = run(10.0)  # the shipped window
    assert result.returncode == 0 and result.stdout.strip() == "requested", result.stderr
    assert result.stderr.count("received SIGUSR1: saving at the next step boundary") == 1
    assert "second signal" not in result.stderr


def test_a_signal_after_the_window_exits_at_once_without_saving():
    result = run(1.0)
    assert result.returncode == 128 + 10 and result.stdout == ""
    assert "second signal SIGUSR1: exiting now without saving" in result.stderr
