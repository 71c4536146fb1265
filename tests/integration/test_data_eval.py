"""LLaMA-Factory data as users hold it, and the validation loss, through `python -m launcher` (CPU processes, gloo).

One registry with a custom-column alpaca entry and the shipped tool-call sharegpt entry, mixed 70/30 with a tenth of
each set held out for validation, is trained once per variant: scored every 5 steps, scored only at the end, on one
rank, and resumed mid-epoch. Every comparison reads what the real runs wrote.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from launcher.assets import ASSETS_DIR
from launcher.data.mixing import mix_counts
from tests.conftest import read_metrics, run_launcher

pytestmark = pytest.mark.integration

STEPS = ("train.max_steps=20", "train.save_every=10", "train.keep_last=0")
MIX = ("data.datasets=[renamed,toolcall]", "data.weights=[0.7,0.3]", "data.val_size=0.1")
RUNS = {
    "every5": ("+plan=ddp", "train.eval_every=5", "logging.wandb.mode=offline", *MIX),
    "at_end": ("+plan=ddp", *MIX),
    "one_rank": ("+plan=ddp", "train.eval_every=5", "topo.cpu_procs_per_host=1", *MIX),
    "four_ranks": ("+plan=ddp", "train.eval_every=5", "topo.cpu_procs_per_host=4", *MIX),
    # a separate validation file, named by path: data.format applies to it (the tool-call rows, default tags)
    "lora_zero3": ("+plan=zero3", "method=lora", "train.eval_every=10", "data.datasets=[renamed]",
                   "data.format=sharegpt", "data.eval_path={folder}/tools.json"),
}


def eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if "eval_loss" in row]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """A dataset_info.json as a LLaMA-Factory user writes it: the shipped alpaca rows under other column names, and
    the shipped tool-call file, both named relative to the registry's folder."""
    folder = tmp_path_factory.mktemp("data")
    rows = [json.loads(line) for line in Path(ASSETS_DIR, "data", "default.jsonl").read_text().splitlines()]
    renamed = [{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in rows]
    (folder / "renamed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in renamed))
    shutil.copy(Path(ASSETS_DIR, "data", "toolcall_sample.json"), folder / "tools.json")
    (folder / "dataset_info.json").write_text(json.dumps({
        "renamed": {"file_name": "renamed.jsonl", "columns": {"prompt": "question", "query": "context",
                                                               "response": "answer"}},
        "toolcall": {"file_name": "tools.json", "formatting": "sharegpt",
                     "columns": {"messages": "conversations", "tools": "tools"},
                     "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                              "assistant_tag": "gpt", "observation_tag": "observation",
                              "function_tag": "function_call"}},
    }, indent=1))
    return folder / "dataset_info.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, registry):
    """Each run of RUNS once per module, on first use: name -> (run dir, stdout)."""
    done: dict[str, tuple[Path, str]] = {}

    def get(name: str) -> tuple[Path, str]:
        if name not in done:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            overrides = [o.format(folder=registry.parent) for o in RUNS[name]]
            result = run_launcher(*overrides, f"data.registry={registry}", f"run.dir={run_dir}", *STEPS)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            done[name] = (run_dir, result.stdout)
        return done[name]

    return get


def test_registry_sets_are_counted_split_and_mixed_as_the_summary_says(trained):
    run_dir, stdout = trained("every5")
    plan = json.loads((run_dir / "plan.json").read_text())
    sets = [(s["source"]["name"], s["rows"], s["val_rows"], s["samples"]) for s in plan["train_sets"]]
    samples = mix_counts([360, 72], [0.7, 0.3])
    assert sets == [("renamed", 400, 40, samples[0]), ("toolcall", 80, 8, samples[1])]
    assert sum(samples) == 432 and samples[0] == round(0.7 * 432)
    assert f"renamed: 400 rows, 40 held out for validation; {samples[0]} samples per epoch (70%" in stdout
    assert f"toolcall: 80 rows, 8 held out for validation; {samples[1]} samples per epoch (30%" in stdout
    assert "validation: 48 rows held out of the training sets; scored every 5 steps and after the last" in stdout


def test_eval_loss_is_scored_every_5_steps_on_the_console_in_metrics_and_in_the_plot(trained):
    run_dir, stdout = trained("every5")
    rows = eval_rows(run_dir)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert len({r["eval_tokens"] for r in rows}) == 1 and rows[0]["eval_tokens"] > 0
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]  # the tiny model learns the held-out tasks too
    for r in rows:
        assert f"eval after step {r['step']}/20 | eval loss {r['eval_loss']:.4f}" in stdout
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 21))
    assert (run_dir / "loss.png").stat().st_size > 0


def test_wandb_gets_every_eval_loss_at_its_step(trained):
    """The offline run's record file (wandb's own binary log of protobuf records) holds each eval_loss value as the
    JSON text wandb logged, beside its key."""
    run_dir, _ = trained("every5")
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    assert b"eval_loss" in data
    for row in eval_rows(run_dir):
        assert json.dumps(row["eval_loss"]).encode() in data


def test_evaluation_does_not_change_a_single_training_loss(trained):
    scored, at_end = trained("every5")[0], trained("at_end")[0]
    assert [m["loss"] for m in read_metrics(scored)] == [m["loss"] for m in read_metrics(at_end)]
    assert [m["grad_norm"] for m in read_metrics(scored)] == [m["grad_norm"] for m in read_metrics(at_end)]
    assert [(r["step"], r["eval_loss"]) for r in eval_rows(at_end)] == [(20, eval_rows(scored)[-1]["eval_loss"])]


@pytest.mark.parametrize("name", ["one_rank", "four_ranks"])
def test_eval_loss_on_one_or_four_ranks_equals_two_ranks(trained, name):
    other, two = eval_rows(trained(name)[0]), eval_rows(trained("every5")[0])
    assert [(r["step"], r["eval_tokens"]) for r in other] == [(r["step"], r["eval_tokens"]) for r in two]
    worst = max(abs(a["eval_loss"] - b["eval_loss"]) / b["eval_loss"] for a, b in zip(other, two))
    print(f"eval loss, {name} vs 2 ranks: within {worst:.1e} relative")
    assert worst < 1e-5


def test_mixed_run_resumes_mid_epoch_bit_for_bit_evaluation_included(trained, registry, tmp_path):
    whole, _ = trained("every5")
    again = tmp_path / "run"
    shutil.copytree(whole, again)
    shutil.rmtree(again / "checkpoints" / "global_step20")  # as if the run had died after step 19
    result = run_launcher(*RUNS["every5"], f"data.registry={registry}", f"run.dir={again}", *STEPS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from global step 10" in result.stdout
    assert [m["loss"] for m in read_metrics(again)] == [m["loss"] for m in read_metrics(whole)]
    scores = [[(r["step"], r["eval_loss"], r["eval_tokens"]) for r in eval_rows(d)] for d in (whole, again)]
    assert scores[1] == scores[0] and len(scores[0]) == 4


def test_lora_under_zero3_reports_the_eval_loss_of_a_separate_validation_file(trained):
    run_dir, stdout = trained("lora_zero3")
    plan = json.loads((run_dir / "plan.json").read_text())
    assert [(s["source"]["formatting"], s["rows"]) for s in plan["eval_sets"]] == [("sharegpt", 80)]
    assert [(s["rows"], s["val_rows"]) for s in plan["train_sets"]] == [(400, 0)]
    rows = eval_rows(run_dir)
    assert [r["step"] for r in rows] == [10, 20] and all(0 < r["eval_loss"] < 20 for r in rows)
    assert "eval after step 20/20" in stdout and "validation: " in stdout and "tools.json (80 rows)" in stdout
