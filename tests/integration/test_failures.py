"""A rank that fails: the console's last paragraph names that rank's exception, its host and its log, not the broken
collectives that follow on the other ranks, and shows no traceback."""
from __future__ import annotations

import pytest

from tests.conftest import run_launcher

pytestmark = pytest.mark.integration


def test_the_rank_that_raised_is_named_not_the_rank_that_lost_its_peer(tmp_path):
    run_dir = tmp_path / "run"
    result = run_launcher(f"run.dir={run_dir}", "script=tests/integration/fail_at_step.py", "preflight=skip", "--",
                          "--fail_rank", "1", "--fail_step", "2")
    assert result.returncode == 1, result.stderr[-3000:]
    err = result.stderr
    assert "rank 1 (on " in err and "failed with ValueError: rank 1 fails at global step 2 on purpose" in err
    assert f"read {run_dir}/logs/rank1.log for its whole output" in err
    assert "Connection closed by peer" not in err and "lost the connection" not in err
    assert "Traceback" not in result.stdout + err
    assert "Connection closed by peer" in (run_dir / "logs" / "rank0.log").read_text()  # the consequence, logged
