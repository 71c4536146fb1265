"""Real 2-process CPU training runs (torchrun + DeepSpeed over gloo) through `python -m launcher`, as a user runs it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_launcher

pytestmark = pytest.mark.integration
STEPS = ("train.max_steps=12", "train.save_every=6")


def assert_trained(result, run_dir: Path, steps: int = 12) -> list[dict]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    first = sum(m["loss"] for m in metrics[:3]) / 3
    last = sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < first - 0.3, f"loss did not go down: {first:.3f} -> {last:.3f}"
    ckpt = run_dir / "checkpoints" / f"global_step{steps}"
    assert (ckpt / "complete.json").exists()
    assert (run_dir / "checkpoints" / "latest").read_text() == f"global_step{steps}"
    return metrics


@pytest.mark.parametrize("plan", ["ddp", "zero1", "zero2", "zero3"])  # zero3_offload: tests/gpu (CPU offload on a CPU is moot)
def test_full_finetune_trains_and_saves_with_two_processes(plan, trained_run):
    result, run_dir = trained_run(f"+plan={plan}", *STEPS)
    metrics = assert_trained(result, run_dir)
    assert all(m["grad_norm"] is not None and m["grad_norm"] > 0 for m in metrics)
    saved = json.loads((run_dir / "plan.json").read_text())
    assert (saved["world_size"], saved["dp"], saved["grad_accum"], saved["zero_stage"]) == (2, 2, 2, {"ddp": 0, "zero1": 1, "zero2": 2}.get(plan, 3))
    assert (run_dir / "logs" / "rank0.log").exists() and (run_dir / "logs" / "rank1.log").exists()
    for name in ("resolved.yaml", "ds_config.json", "launch.sh"):
        assert (run_dir / name).exists()
    assert "step 12/12" in result.stdout


def test_lora_trains_only_adapters_and_saves(trained_run):
    result, run_dir = trained_run("method=lora", *STEPS)
    assert_trained(result, run_dir)
    assert "method lora" in result.stdout
    saved = json.loads((run_dir / "plan.json").read_text())
    assert saved["memory"]["trainable_params"] < saved["memory"]["params"] / 5


def test_rerunning_a_finished_run_does_nothing_and_keeps_its_files(run_dir):
    assert run_launcher(f"run.dir={run_dir}", "train.max_steps=2").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = run_launcher(f"run.dir={run_dir}", "train.max_steps=2")
    assert again.returncode == 0 and "already complete at global step 2" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
