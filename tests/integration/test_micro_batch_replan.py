"""An out-of-memory in the first steps at an auto-chosen micro batch is re-planned one micro batch smaller, says so,
and is remembered for the rerun. The trigger is injected (LAUNCHER_FAULT_OOM_ABOVE_MICRO): a CPU machine cannot run
a GPU out of memory; everything after the rank's error is the real path."""
from __future__ import annotations

import json

import pytest

from tests.conftest import launcher_env, read_metrics, run_launcher

pytestmark = pytest.mark.integration
JOB = ("train.max_steps=6", "train.save_every=3")


def faulty_env() -> dict[str, str]:
    return {**launcher_env(), "LAUNCHER_FAULT_OOM_ABOVE_MICRO": "1"}


def test_an_early_out_of_memory_at_an_auto_micro_batch_retries_smaller_and_a_rerun_keeps_it(tmp_path):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    result = run_launcher(f"run.dir={run_dir}", *JOB, env=faulty_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("out of GPU memory in the first steps at micro batch 2: retrying at train.micro_batch_size=1 (gradient "
            "accumulation 4 keeps the global batch 8)") in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    plan = json.loads((run_dir / "plan.json").read_text())
    assert (plan["micro_batch_size"], plan["grad_accum"]) == (1, 4)
    assert json.loads((run_dir / "micro_batch.json").read_text()) == {"micro_batch_size": 1, "out_of_memory_at": 2}
    assert json.loads((run_dir / "ds_config.json").read_text())["train_micro_batch_size_per_gpu"] == 1

    # the same job asked for micro 1 from the start trains the very same steps
    asked = run_launcher(f"run.dir={reference}", *JOB, "train.micro_batch_size=1")
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert [m["loss"] for m in read_metrics(run_dir)] == [m["loss"] for m in read_metrics(reference)]

    # a rerun of the auto job starts at the recorded micro batch (nothing to do here: it is complete)
    dry = run_launcher(f"run.dir={run_dir}", *JOB, "run.dry_run=true")
    assert dry.returncode == 0 and "micro 1 x dp 2 x accum 4" in dry.stdout
    assert json.loads((run_dir / "dry_run" / "plan.json").read_text())["micro_batch_note"] == (
        "auto: 1 on the CPU, at most 1 after an out-of-memory (run dir's micro_batch.json)")


def test_an_out_of_memory_at_a_micro_batch_the_user_chose_is_the_usual_paragraph(tmp_path):
    result = run_launcher(f"run.dir={tmp_path}/run", *JOB, "train.micro_batch_size=2", env=faulty_env())
    assert result.returncode == 2
    assert "train.micro_batch_size=2 cannot be used" in result.stderr and "ran out of GPU memory" in result.stderr
    assert "retrying" not in result.stderr and not (tmp_path / "run" / "micro_batch.json").exists()
