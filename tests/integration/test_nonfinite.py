"""train.nonfinite=stop (the default): a step whose loss or gradient norm is not finite ends the run there, before
its save, as one paragraph with exit code 2, and rerunning the command resumes from the newest checkpoint. The inf/NaN
is injected (LAUNCHER_FAULT_NONFINITE_STEP multiplies that step's loss by NaN before its backward pass, as a diverging
run's would be); everything after it is the real path."""
from __future__ import annotations

import math

import pytest

from launcher.train.failures import FAULT_NONFINITE_VAR
from tests.conftest import launcher_env, read_metrics, run_launcher

pytestmark = pytest.mark.integration
JOB = ("train.max_steps=6", "train.save_every=2")


def test_a_nonfinite_step_stops_the_run_before_its_save_and_the_rerun_trains_on_from_the_checkpoint(tmp_path,
                                                                                                    trained_run):
    run_dir = tmp_path / "run"
    result = run_launcher(f"run.dir={run_dir}", *JOB, env={**launcher_env(), FAULT_NONFINITE_VAR: "3"})
    paragraph = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "error: train.lr=0.002 cannot be used. global step 3 gave a loss of" in paragraph
    assert "which is not finite: the run stopped there without saving (train.nonfinite=stop)" in paragraph
    assert "set train.nonfinite=skip" in paragraph and "Traceback" not in result.stdout + result.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("global_step*")) == ["global_step2"]
    logged = read_metrics(run_dir)
    assert [m["step"] for m in logged] == [1, 2, 3] and not math.isfinite(logged[-1]["grad_norm"])

    rerun = run_launcher(f"run.dir={run_dir}", *JOB)  # the fault gone: resumes at step 2, trains the clean steps
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resumed from global step 2" in rerun.stdout
    _, clean_dir = trained_run(*JOB)
    resumed = {m["step"]: m["loss"] for m in read_metrics(run_dir)}
    assert [resumed[s] for s in range(1, 7)] == [m["loss"] for m in read_metrics(clean_dir)]
