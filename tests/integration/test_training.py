"""Real 2-process CPU training runs (torchrun + DeepSpeed over gloo) through `python -m launcher`, as a user runs it."""
from __future__ import annotations

import gzip
import json
import re
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
    started = re.search(r"ranks starting ([\d.]+) s after `python -m launcher` started", result.stdout)
    assert started and float(started.group(1)) > 0, result.stdout[:3000]  # the launcher's own share of the start
    ready = re.search(r"ready in [\d.]+ s since the rank started: (.*)", result.stdout)
    assert ready and [p.rsplit(" ", 2)[0] for p in ready.group(1).split(", ")] == [
        "imports and process group", "tokenizer", "data", "model", "engine", "resume"]  # where a slow start went


def test_lora_trains_only_adapters_and_saves_under_zero3(trained_run):
    """Under ZeRO-3 a layer's frozen weights are gathered whole (plan.stage3_fetch=layer): DeepSpeed fetches them for
    the backward only when the layer's input requires grad, which a frozen embedding's output does not by itself.
    (LoRA under ZeRO-2 trains and exports in test_export.py.)"""
    result, run_dir = trained_run("method=lora", "+plan=zero3", *STEPS)
    assert_trained(result, run_dir)
    assert "method lora" in result.stdout
    saved = json.loads((run_dir / "plan.json").read_text())
    assert saved["memory"]["trainable_params"] < saved["memory"]["params"] / 5
    assert "ZeRO-3 fetches whole layers: LlamaDecoderLayer" in (run_dir / "logs" / "rank0.log").read_text()


PER_MODULE = ("+plan=zero3", "plan.stage3_fetch=module", "train.profile_steps=3-4", *STEPS)


def test_zero3_whole_layer_fetch_trains_like_per_module_fetch(trained_run):
    """The default fetch (a decoder layer's weights in one gather) against DeepSpeed's per-submodule fetch: the same
    arithmetic in another order of gathers, so the same losses and gradient norms."""
    layer = assert_trained(*trained_run("+plan=zero3", *STEPS))
    module = assert_trained(*trained_run(*PER_MODULE))
    for a, b in zip(layer, module):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    _, run_dir = trained_run(*PER_MODULE)
    assert "ZeRO-3 fetches whole layers" not in (run_dir / "logs" / "rank0.log").read_text()


def test_a_chosen_sdpa_kernel_goes_first_on_every_rank_and_trains_the_same_losses(trained_run):
    """model.sdpa_backend=math puts torch's math kernel ahead of the fused CPU one on both ranks: another kernel for
    the same attention, so the default run's losses and gradient norms (on a CPU, `auto` measures nothing)."""
    default = assert_trained(*trained_run("+plan=zero2", *STEPS))
    result, run_dir = trained_run("+plan=zero2", "model.sdpa_backend=math", *STEPS)
    for a, b in zip(assert_trained(result, run_dir), default):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    for rank in (0, 1):
        assert "attention: SDPA tries math first" in (run_dir / "logs" / f"rank{rank}.log").read_text()
    assert "attention: " not in (trained_run("+plan=zero2", *STEPS)[1] / "logs" / "rank0.log").read_text()


def test_profile_steps_write_a_trace_and_top_operators_per_rank(trained_run):
    result, run_dir = trained_run(*PER_MODULE)
    assert "profile of steps 3-4:" in result.stdout and "s of host time (no GPU)" in result.stdout
    for rank in (0, 1):
        table = (run_dir / "profile" / f"rank{rank}-steps3-4.txt").read_text()
        assert "aten::mm" in table and "Self CPU time total" in table
        trace = run_dir / "profile" / f"rank{rank}-steps3-4.json.gz"
        assert json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]


def test_rerunning_a_finished_run_does_nothing_and_keeps_its_files(run_dir):
    assert run_launcher(f"run.dir={run_dir}", "train.max_steps=2").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = run_launcher(f"run.dir={run_dir}", "train.max_steps=2")
    assert again.returncode == 0 and "already complete at global step 2" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
