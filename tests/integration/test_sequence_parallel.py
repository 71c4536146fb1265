"""Ulysses sequence parallel (`+plan=sp`) through `python -m launcher` on 2 CPU processes (gloo), against the same
job without sp: the same per-step losses and gradient norms under ZeRO-1, 2 and 3, full and LoRA, and ZeRO-3 with
optimizer and parameters offloaded to the CPU; the same eval loss;
exact resume; resume with sp changed at the same world size, without a universal conversion.

Why a tolerance: with sp each rank computes half of every row's tokens and the losses and gradients are added by
collectives in another order, so float32 sums differ in the last bits (measured: ~1e-7 relative). A wrong loss
scale, label shift or slice moves them by far more than 1e-5.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_launcher

pytestmark = pytest.mark.integration
STEPS = ("train.max_steps=8", "train.save_every=4", "train.keep_last=0", "data.val_size=40", "train.eval_every=4")
RUNS = {
    "zero1": ("+plan=zero1",), "zero1_sp": ("+plan=zero1", "plan.sp=2"),
    "zero2": ("+plan=zero2",), "zero2_sp": ("+plan=zero2", "plan.sp=2"),
    "zero3": ("+plan=zero3",), "zero3_sp": ("+plan=sp",),
    "lora": ("+plan=zero3", "method=lora"), "lora_sp": ("+plan=sp", "method=lora"),
    "offload": ("+plan=zero3_offload",), "offload_sp": ("+plan=zero3_offload", "plan.sp=2"),
}
PAIRS = [("zero1", "zero1_sp"), ("zero2", "zero2_sp"), ("zero3", "zero3_sp"), ("lora", "lora_sp"),
         ("offload", "offload_sp")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    done: dict[str, tuple[Path, str]] = {}

    def get(name: str) -> tuple[Path, str]:
        if name not in done:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            result = run_launcher(*RUNS[name], f"run.dir={run_dir}", *STEPS)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            done[name] = (run_dir, result.stdout)
        return done[name]

    return get


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if "eval_loss" in row]


@pytest.mark.parametrize("base, sp", PAIRS)
def test_sp_trains_the_job_without_sp_loss_grad_norm_and_eval_loss(trained, base, sp):
    (ref_dir, _), (sp_dir, stdout) = trained(base), trained(sp)
    ref, run = read_metrics(ref_dir), read_metrics(sp_dir)
    assert [m["step"] for m in run] == list(range(1, 9))
    assert [m["tokens"] for m in run] == [m["tokens"] for m in ref]  # each token counted once per sp group
    worst = {key: max(relative(a[key], b[key]) for a, b in zip(run, ref)) for key in ("loss", "grad_norm")}
    evals = [(a["step"], a["eval_tokens"], relative(a["eval_loss"], b["eval_loss"]))
             for a, b in zip(eval_rows(sp_dir), eval_rows(ref_dir))]
    print(f"{sp} vs {base}: loss within {worst['loss']:.1e}, grad norm within {worst['grad_norm']:.1e}, eval loss "
          f"within {max(e[2] for e in evals):.1e} relative")
    assert worst["loss"] < 1e-5 and worst["grad_norm"] < 1e-5
    assert [(s, t) for s, t, _ in evals] == [(r["step"], r["eval_tokens"]) for r in eval_rows(ref_dir)]
    assert [e[0] for e in evals] == [4, 8] and max(e[2] for e in evals) < 1e-5
    plan = json.loads((sp_dir / "plan.json").read_text())
    assert (plan["sp"], plan["dp"], plan["world_size"]) == (2, 1, 2)
    assert json.loads((sp_dir / "ds_config.json").read_text())["sequence_parallel_size"] == 2
    assert "dp=1 tp=1 pp=1 sp=2" in stdout


def resumed_from_step_4(whole: Path, again: Path, run: str) -> str:
    """A copy of the finished sp run without its last checkpoint (as if it died after step 7), resumed by `run`."""
    shutil.copytree(whole, again)
    shutil.rmtree(again / "checkpoints" / "global_step8")
    result = run_launcher(*RUNS[run], f"run.dir={again}", *STEPS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from global step 4" in result.stdout
    return result.stdout


def test_sp_run_resumes_bit_for_bit(trained, tmp_path):
    whole, _ = trained("zero3_sp")
    again = tmp_path / "run"
    resumed_from_step_4(whole, again, "zero3_sp")
    assert [m["loss"] for m in read_metrics(again)] == [m["loss"] for m in read_metrics(whole)]
    assert [r["eval_loss"] for r in eval_rows(again)] == [r["eval_loss"] for r in eval_rows(whole)]


def test_a_checkpoint_saved_with_sp_resumes_without_it_at_the_same_world_size_with_no_conversion(trained, tmp_path):
    """ZeRO shards over dp x sp, the whole world: sp=2 -> sp=1 keeps the layout, so DeepSpeed loads it as it is."""
    whole, _ = trained("zero3_sp")
    again = tmp_path / "run"
    assert "universal" not in resumed_from_step_4(whole, again, "zero3")
    assert not (again / "checkpoints" / "global_step4_universal").exists()
    resumed, ref = read_metrics(again), read_metrics(whole)
    assert max(relative(a["loss"], b["loss"]) for a, b in zip(resumed[4:], ref[4:])) < 1e-5
