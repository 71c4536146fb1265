"""SIGTERM and SIGHUP at the entry points: raised as Ctrl-C is, unless already ignored (nohup); the exit code and
the line they end with."""
from __future__ import annotations

import os
import signal

import pytest

from launcher.interrupts import Stopped, stop_on_term_and_hangup, stopped


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_sigterm_raises_like_ctrl_c_and_an_ignored_sighup_stays_ignored(handlers):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts it
    stop_on_term_and_hangup()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    with pytest.raises(KeyboardInterrupt) as err:
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next bytecode
    assert isinstance(err.value, Stopped) and err.value.signum == signal.SIGTERM


def test_each_stop_ends_with_the_shells_code_and_one_line_unless_nobody_can_read_it(capsys):
    assert stopped(KeyboardInterrupt()) == 130 and capsys.readouterr().err.strip() == "stopped (Ctrl-C)"
    assert stopped(Stopped(signal.SIGTERM)) == 143 and capsys.readouterr().err.strip() == "stopped (SIGTERM)"
    assert stopped(Stopped(signal.SIGHUP)) == 129 and capsys.readouterr().err == ""
