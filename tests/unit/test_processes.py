"""launcher/processes.py: a process's age from /proc, which the launcher prints before its ranks start."""
from __future__ import annotations

import subprocess
import sys
import time

from launcher.processes import age_s


def test_a_process_age_counts_from_its_start_not_from_when_it_is_asked():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        first = age_s(child.pid)
        time.sleep(0.3)
        second = age_s(child.pid)
        assert first is not None and second is not None
        assert first >= 0.4, first  # started before the first 0.5 s sleep; /proc counts in ticks of 10 ms
        assert 0.25 <= second - first <= 5, (first, second)
        assert age_s() >= first  # this process started before its child
    finally:
        child.kill()
        child.wait()
    assert age_s(child.pid) is None  # gone: /proc cannot say
