"""Tensor- and pipeline-parallel runs through `python -m launcher` (CPU processes, gloo), checked against the DDP run
of the same job: same data, same global batch, same per-step loss; then resume and export of their checkpoints.

Why a tolerance: tensor parallel splits each matmul and sums the partial products with an all-reduce, and data and
pipeline parallel regroup micro batches, so float32 sums run in another order. The step losses differ in the last
bits (measured: below 1e-7 relative over 20 steps), and Adam carries those bits on. 1e-3 relative is the bound the
issue asks for; a wrong mask, normalisation or sample order moves the loss by far more than that.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from launcher.plan.types import Plan
from tests.conftest import read_metrics, run_launcher

pytestmark = pytest.mark.integration
STEPS = ("train.max_steps=20", "train.save_every=10", "train.keep_last=0", "data.val_size=40", "train.eval_every=10")
RUNS = {
    "ddp": ("+plan=ddp",),
    "tp_zero1": ("+plan=tp",),  # tp=2, dp=1 on 2 processes
    "tp_zero2_dp2": ("+plan=tp", "plan.zero_stage=2", "topo.cpu_procs_per_host=4"),  # tp=2 x dp=2
    "pp_zero1_dp2": ("+plan=pp", "topo.cpu_procs_per_host=4"),  # pp=2 x dp=2
}
PARALLEL = ["tp_zero1", "tp_zero2_dp2", "pp_zero1_dp2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each run of RUNS once per module, on first use: name -> run dir."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            result = run_launcher(*RUNS[name], f"run.dir={run_dir}", *STEPS)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            done[name] = run_dir
        return done[name]

    return get


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_run_matches_ddp_losses_for_20_steps(trained, name):
    ddp, run = read_metrics(trained("ddp")), read_metrics(trained(name))
    assert [m["step"] for m in run] == list(range(1, 21))
    loss_diff = max(relative(m["loss"], r["loss"]) for m, r in zip(run, ddp))
    norm_diff = max(relative(m["grad_norm"], r["grad_norm"]) for m, r in zip(run, ddp))
    print(f"{name}: per-step loss vs DDP within {loss_diff:.1e} relative, grad norm within {norm_diff:.1e}")
    assert loss_diff < 1e-3, f"{name}: per-step loss differs from DDP by up to {loss_diff:.2e} relative"
    assert norm_diff < 1e-3, f"{name}: grad norm differs from DDP by up to {norm_diff:.2e} relative"
    assert [m["tokens"] for m in run] == [r["tokens"] for r in ddp]  # each sample once per step, none twice
    plan, ddp_plan = (json.loads((trained(n) / "plan.json").read_text()) for n in (name, "ddp"))
    assert plan["global_batch_size"] == ddp_plan["global_batch_size"]
    assert plan["dp"] * plan["tp"] * plan["pp"] == plan["world_size"]


def eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if "eval_loss" in row]


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_run_scores_the_validation_set_as_ddp_does(trained, name):
    """The eval loss is a token-weighted mean over the whole validation set: the same under tp and pp (the
    pipeline sums its own token losses rather than averaging micro batches)."""
    ddp, run = eval_rows(trained("ddp")), eval_rows(trained(name))
    assert [(r["step"], r["eval_tokens"]) for r in run] == [(r["step"], r["eval_tokens"]) for r in ddp]
    assert [r["step"] for r in run] == [10, 20]
    worst = max(relative(a["eval_loss"], b["eval_loss"]) for a, b in zip(run, ddp))
    print(f"{name}: eval loss vs DDP within {worst:.1e} relative")
    assert worst < 1e-5


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_run_resumes_from_its_checkpoint_bit_for_bit(trained, tmp_path, name):
    """Same plan, same world size: the resumed steps repeat the uninterrupted run's losses exactly."""
    whole = trained(name)
    again = tmp_path / "run"
    shutil.copytree(whole, again)
    shutil.rmtree(again / "checkpoints" / "global_step20")  # as if the run had died after step 19
    result = run_launcher(*RUNS[name], f"run.dir={again}", *STEPS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from global step 10" in result.stdout
    resumed = read_metrics(again)
    assert [m["step"] for m in resumed] == list(range(1, 21))
    assert [m["loss"] for m in resumed] == [m["loss"] for m in read_metrics(whole)]
    assert [(r["step"], r["eval_loss"]) for r in eval_rows(again)] == [(r["step"], r["eval_loss"])
                                                                      for r in eval_rows(whole)]
    assert (again / "checkpoints" / "global_step20" / "complete.json").exists()


def full_weights(run_dir: Path, step: int = 20) -> dict[str, torch.Tensor]:
    from launcher.checkpoint.export_parallel import hf_state_dict_from_checkpoint

    plan = Plan.from_dict(json.loads((run_dir / "plan.json").read_text()))
    return hf_state_dict_from_checkpoint(run_dir / "checkpoints" / f"global_step{step}", plan)


def hf_model(run_dir: Path, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    from launcher.data.tokenization import load_tokenizer
    from launcher.train.model import build_model

    plan = Plan.from_dict(json.loads((run_dir / "plan.json").read_text()))
    model = build_model(plan, load_tokenizer(plan.model.tokenizer), 0)
    model.load_state_dict(weights, strict=True)
    return model.eval()


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_checkpoint_exports_the_weights_ddp_trained(trained, name):
    ddp = torch.load(trained("ddp") / "checkpoints" / "global_step20" / "mp_rank_00_model_states.pt",
                     map_location="cpu", weights_only=False)["module"]
    weights = full_weights(trained(name))
    assert set(weights) == set(ddp)
    for key, tensor in ddp.items():
        assert weights[key].shape == tensor.shape, key
        torch.testing.assert_close(weights[key], tensor, rtol=1e-3, atol=1e-4, msg=key)
    hf_model(trained(name), weights)  # loads strictly into the Hugging Face model


@pytest.mark.parametrize("name", PARALLEL)
def test_model_parallel_export_reproduces_the_engine_logits(trained, name):
    """probe.pt holds logits the AutoTP engine or the pipeline (DeepSpeed's inference schedule over both stages)
    computed at save time; the rebuilt model must give them."""
    probe = torch.load(trained(name) / "checkpoints" / "global_step20" / "probe.pt", weights_only=False)
    model = hf_model(trained(name), full_weights(trained(name)))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], use_cache=False).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=0, atol=1e-4)


def test_lora_on_a_pipeline_trains_adapters_on_every_stage_and_exports_them(tmp_path):
    """Tied embeddings, frozen under LoRA: shared, not a TiedLayerSpec. Adapters of layer 0 (stage 0) and layer 1
    (stage 1) leave their zero init; the base weights come back unchanged."""
    run_dir = tmp_path / "run"
    result = run_launcher("+plan=pp", "method=lora", "model.arch.tie_word_embeddings=true", f"run.dir={run_dir}",
                          "train.max_steps=4", "train.save_every=4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(m["grad_norm"] > 0 for m in metrics)
    weights = full_weights(run_dir, 4)
    for layer in (0, 1):
        b = [v for k, v in weights.items() if f"layers.{layer}." in k and "lora_B" in k]
        assert b and all(v.abs().sum() > 0 for v in b), f"layer {layer}: adapters did not train"
    assert torch.equal(weights["base_model.model.lm_head.weight"], weights["base_model.model.model.embed_tokens.weight"])
    hf_model(run_dir, weights)


def test_tp_with_pp_is_refused_through_the_cli(tmp_path):
    result = run_launcher("plan.tp=2", "plan.pp=2", "topo.cpu_procs_per_host=4", f"run.dir={tmp_path}/r")
    paragraph = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "plan.pp=2 cannot be used" in paragraph and "cannot run on DeepSpeed" in paragraph
    assert not (tmp_path / "r").exists()
