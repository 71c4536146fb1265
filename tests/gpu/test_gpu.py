"""GPU runs through `python -m launcher` on a lent machine (not in CI): every plan on all local GPUs, tp=2 and pp=2 on
two, LoRA and QLoRA, loss going down and the checkpoint resuming; liger-kernel's fused kernels against transformers'. Run: `source .device/setup.sh qlora && python3 -m pytest -m gpu -x`."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_launcher

pytestmark = [pytest.mark.gpu, pytest.mark.integration]
# The worker uses liger-kernel on CUDA when it is installed and Triton can find a C compiler (model.py).
LIGER = importlib.util.find_spec("liger_kernel") is not None and any(shutil.which(c) for c in ("cc", "gcc", "clang"))
JOB = ("train.max_steps=16", "train.save_every=8", "train.global_batch_size=16", "train.micro_batch_size=4")


def gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def trained(result, run_dir: Path, steps: int = 16) -> list[dict]:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    metrics = read_metrics(run_dir)
    assert metrics[-1]["step"] == steps
    assert sum(m["loss"] for m in metrics[-3:]) < sum(m["loss"] for m in metrics[:3]) - 0.3
    assert (run_dir / "checkpoints" / f"global_step{steps}" / "complete.json").exists()
    return metrics


@pytest.mark.skipif(gpus() < 1, reason="needs a GPU")
@pytest.mark.parametrize("plan", ["ddp", "zero1", "zero2", "zero3", "zero3_offload"])
def test_every_plan_trains_on_all_local_gpus_in_bf16_and_resumes(plan, tmp_path):
    run_dir = tmp_path / "run"
    metrics = trained(run_launcher(f"+plan={plan}", f"run.dir={run_dir}", *JOB), run_dir)
    saved = json.loads((run_dir / "plan.json").read_text())
    assert saved["accelerator"] == "cuda" and saved["precision"] == "bf16" and saved["world_size"] == gpus()
    assert metrics[-1]["memory_gb"] > 0 and metrics[-1]["mfu"] is not None
    if LIGER:  # the fast path is the one these runs exercise
        assert "liger-kernel: rms_norm, swiglu, rope" in (run_dir / "logs" / "rank0.log").read_text()
    if plan in ("zero1", "zero2"):  # launcher/train/zero_step.py on the engine the worker built
        assert ("ZeRO optimizer step: gradient norm in one float32 pass, clip inside fused AdamW"
                in (run_dir / "logs" / "rank0.log").read_text())
    again = run_launcher(f"+plan={plan}", f"run.dir={run_dir}", "train.max_steps=20", "train.save_every=8")
    assert again.returncode == 0 and "resumed from global step 16" in again.stdout
    assert read_metrics(run_dir)[-1]["step"] == 20


@pytest.mark.skipif(gpus() < 1, reason="needs a GPU")
def test_cuda_fused_adamw_divides_by_grad_scale_as_the_zero_step_patch_needs():
    """launcher/train/zero_step.py hands DeepSpeed's clip scale to torch's fused AdamW as `grad_scale`; on CUDA the
    step must equal one on gradients divided first (tests/integration/test_zero_step.py checks the CPU kernel)."""
    import torch

    torch.manual_seed(0)
    start, grads = torch.randn(1 << 20, device="cuda"), [torch.randn(1 << 20, device="cuda") * 5 for _ in range(3)]
    finals = []
    for handed in (True, False):
        p = torch.nn.Parameter(start.clone())
        opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.1, fused=True)
        for g in grads:
            scale = torch.full((1,), 7.0, device="cuda")
            p.grad = g.clone() if handed else g / scale
            if handed:
                opt.grad_scale = scale
            opt.step()
        finals.append(p.detach())
    assert (finals[0] - start).abs().max() > 1e-3
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(gpus() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("plan", ["tp", "pp"])
def test_tp2_and_pp2_train_on_two_gpus_and_resume(plan, tmp_path):
    run_dir = tmp_path / "run"
    trained(run_launcher(f"+plan={plan}", "topo.gpus_per_host=2", f"run.dir={run_dir}", *JOB), run_dir)
    saved = json.loads((run_dir / "plan.json").read_text())
    assert (saved["tp"], saved["pp"], saved["dp"]) == ((2, 1, 1) if plan == "tp" else (1, 2, 1))
    again = run_launcher(f"+plan={plan}", "topo.gpus_per_host=2", f"run.dir={run_dir}", "train.max_steps=20",
                         "train.save_every=8")
    assert again.returncode == 0 and "resumed from global step 16" in again.stdout
    assert read_metrics(run_dir)[-1]["step"] == 20


@pytest.mark.skipif(gpus() < 1 or not LIGER, reason="needs a GPU and liger-kernel")
@pytest.mark.parametrize("plan", ["zero2", "zero3"])
def test_liger_kernels_train_like_transformers_kernels(plan, tmp_path):
    """Same job with and without liger-kernel, its fused linear cross-entropy included (under ZeRO-3 lm_head's weight
    is gathered with the model's): the kernels change rounding, not the math, so the bf16 losses agree closely at
    first and both go down."""
    losses = {}
    for liger in (True, False):
        run_dir = tmp_path / f"liger-{liger}"
        result = run_launcher(f"+plan={plan}", f"model.liger_kernel={str(liger).lower()}", f"run.dir={run_dir}", *JOB)
        losses[liger] = [m["loss"] for m in trained(result, run_dir)]
        if liger:
            assert "liger-kernel: rms_norm, swiglu, rope, fused_linear_cross_entropy" in \
                (run_dir / "logs" / "rank0.log").read_text()
    assert all(abs(a - b) / b < 2e-2 for a, b in zip(losses[True][:4], losses[False][:4])), losses


@pytest.mark.skipif(gpus() < 1, reason="needs a GPU")
@pytest.mark.parametrize("plan,compile_mode", [("zero2", "torch"), ("zero3", "torch")])
def test_compiled_plans_train_like_eager_and_resume(plan, compile_mode, tmp_path):
    """plan.compile=torch: torch.compile through engine.compile(); same losses as eager. (DeepCompile is refused:
    plan_checks.py.)"""
    losses = {}
    for mode in (compile_mode, "off"):
        run_dir = tmp_path / mode
        result = run_launcher(f"+plan={plan}", f"plan.compile={mode}", f"run.dir={run_dir}", *JOB)
        losses[mode] = [m["loss"] for m in trained(result, run_dir)]
    assert all(abs(a - b) / b < 2e-2 for a, b in zip(losses[compile_mode][:4], losses["off"][:4])), losses
    run_dir = tmp_path / compile_mode
    again = run_launcher(f"+plan={plan}", f"plan.compile={compile_mode}", f"run.dir={run_dir}", "train.max_steps=20",
                         "train.save_every=8")
    assert again.returncode == 0 and "resumed from global step 16" in again.stdout, again.stdout[-3000:]
    assert read_metrics(run_dir)[-1]["step"] == 20


@pytest.mark.skipif(gpus() < 1, reason="needs a GPU")
@pytest.mark.parametrize("method,plan", [("lora", "zero2"), ("qlora", "zero2"), ("lora", "zero3"),
                                         pytest.param("qlora", "sp", marks=pytest.mark.skipif(gpus() < 2,
                                                                                              reason="needs 2 GPUs"))])
def test_lora_and_qlora_train_a_local_model(method, plan, tmp_path):
    """QLoRA needs weights to quantize: the tiny model is first written as a local Hugging Face directory. LoRA under
    ZeRO-3 loads the weights already partitioned, with whole-layer fetches and liger's fused loss when installed.
    QLoRA under Ulysses sequence parallel (+plan=sp: sp=2 with ZeRO-3) takes two GPUs."""
    from transformers import AutoModelForCausalLM

    from launcher.config.compose import compose
    from launcher.plan.hardware import detect
    from launcher.plan.resolve import resolve
    from launcher.data.tokenization import load_tokenizer
    from launcher.train.model import tiny_config

    cfg, _ = compose(["model.arch.hidden_size=256", "model.arch.num_layers=4"])
    tiny = resolve(cfg, detect(), run_dir=str(tmp_path), run_name="x")
    tokenizer = load_tokenizer("")
    model_dir = tmp_path / "tiny-hf"
    AutoModelForCausalLM.from_config(tiny_config(tiny, tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run_dir = tmp_path / "run"
    result = run_launcher(f"model.path={model_dir}", f"method={method}", f"+plan={plan}", f"run.dir={run_dir}",
                          "train.lr=5e-3", *JOB)
    trained(result, run_dir)
    if plan == "zero3":
        assert "ZeRO-3 fetches whole layers: LlamaDecoderLayer" in (run_dir / "logs" / "rank0.log").read_text()


@pytest.mark.skipif(gpus() < 1, reason="needs a GPU")
def test_out_of_memory_at_the_first_step_is_one_paragraph_with_what_would_fit(tmp_path):
    big = ("model.arch.hidden_size=4096", "model.arch.num_layers=4", "model.arch.num_heads=32",
           "model.arch.num_kv_heads=8", "model.arch.intermediate_size=14336", "model.arch.vocab_size=32000",
           "train.seq_len=4096", "data.packing=true", "train.micro_batch_size=64", "train.global_batch_size=64",
           "topo.gpus_per_host=1", "+plan=ddp", "run.check_memory=false")  # the estimate alone would refuse it
    result = run_launcher(*big, f"run.dir={tmp_path / 'run'}", "train.max_steps=2")
    paragraph = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "error: train.micro_batch_size=64 cannot be used. rank 0 ran out of GPU memory in global step 1" in paragraph
    assert "run.dry_run=true" in paragraph and "train.micro_batch_size=32" in paragraph


@pytest.mark.skipif(gpus() < 1, reason="needs a GPU")
def test_auto_micro_batch_picks_a_micro_batch_that_fits_and_trains(tmp_path):
    """train.micro_batch_size=auto on a GPU: the largest the estimate fits with headroom, dividing the global batch;
    the run trains at it without running out of memory (the chosen micro batch and why are in the summary)."""
    run_dir = tmp_path / "run"
    result = run_launcher(f"run.dir={run_dir}", "train.max_steps=16", "train.save_every=8",
                          "train.global_batch_size=64", "train.micro_batch_size=auto", "train.seq_len=512")
    trained(result, run_dir)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["micro_batch_size"] > 2 and 64 % (plan["micro_batch_size"] * plan["dp"]) == 0
    assert plan["micro_batch_note"].startswith("auto: the largest") and "(micro batch auto:" in result.stdout
    assert not (run_dir / "micro_batch.json").exists()  # no out-of-memory, no re-plan


@pytest.mark.skipif(gpus() < 1, reason="needs a GPU")
def test_peak_is_measured_on_each_gpu_recorded_and_mfu_is_taken_against_it(tmp_path):
    """`python -m launcher.preflight --peak` times a bf16 matmul per GPU, records it per GPU model, and a run then
    labels its MFU 'of measured peak' (below a datasheet figure: not comparable with datasheet MFU elsewhere)."""
    import subprocess
    import sys

    import torch

    from launcher.peaks import read_peaks
    from launcher.train.metrics import find_peak
    from tests.conftest import REPO, launcher_env

    env = {**launcher_env(), "LAUNCHER_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "launcher.preflight", "--peak"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout)
    name = torch.cuda.get_device_name(0)
    measured = read_peaks(tmp_path / "cache" / "peak.json")[name]
    table = find_peak(name, {})
    assert 0 < measured and (table is None or measured < 1.1 * table.flops / 1e12)
    run_dir = tmp_path / "run"
    metrics = trained(run_launcher(f"run.dir={run_dir}", "+plan=ddp", *JOB, env=env), run_dir)
    assert metrics[-1]["mfu_peak"] == "measured"
    assert "of measured peak" in (run_dir / "logs" / "rank0.log").read_text()


@pytest.mark.skipif(gpus() < 1, reason="needs a GPU")
def test_sdpa_backend_auto_measures_cudnn_and_trains_like_torchs_order(tmp_path):
    """model.sdpa_backend=auto times cuDNN-first against torch's order at the job's attention shape and says which it
    took and why; either way the losses are those of torch's order within bf16 rounding (the kernels are exact)."""
    losses = {}
    for setting in ("auto", "torch"):
        run_dir = tmp_path / setting
        result = run_launcher("+plan=zero2", f"model.sdpa_backend={setting}", f"run.dir={run_dir}", *JOB)
        losses[setting] = [m["loss"] for m in trained(result, run_dir)]
        log = (run_dir / "logs" / "rank0.log").read_text()
        if setting == "auto":
            line = next(x for x in log.splitlines() if "attention: " in x)
            print(line)
            assert "forward+backward at micro 4 x" in line and "cuDNN first" in line and "torch's order" in line
        else:
            assert "attention: " not in log
    assert all(abs(a - b) / b < 2e-2 for a, b in zip(losses["auto"][:4], losses["torch"][:4])), losses


FP8 = importlib.util.find_spec("torchao") is not None
# A model whose MLP layers are large enough for FP8 (launcher/train/fp8.py converts gate/up: 256 -> 2048)
FP8_MODEL = ("model.arch.hidden_size=256", "model.arch.intermediate_size=2048", "data.val_size=0.1",
             "train.eval_every=8")


@pytest.mark.skipif(gpus() < 1 or not FP8, reason="needs a GPU and torchao")
def test_fp8_trains_like_bf16_resumes_and_its_checkpoint_resumes_in_bf16(tmp_path):
    """train.precision=fp8 converts the MLP's large layers, pads micro batches of varied widths (the shipped data)
    to a few compiled widths, trains and scores the validation set like bf16, resumes itself, and its checkpoint
    resumes in a bf16 run."""
    import torch

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs FP8 tensor cores (compute capability 8.9+)")
    losses = {}
    for precision in ("bf16", "fp8"):
        run_dir = tmp_path / precision
        result = run_launcher("+plan=zero2", f"train.precision={precision}", f"run.dir={run_dir}", *FP8_MODEL, *JOB)
        losses[precision] = [m["loss"] for m in trained(result, run_dir)]
        scores = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
        losses[f"{precision} eval"] = [row["eval_loss"] for row in scores]  # compiled layers under no_grad too
    log = (tmp_path / "fp8" / "logs" / "rank0.log").read_text()
    assert "train.precision=fp8: 4 linear layers run their matmuls in float8" in log, log[-3000:]
    assert "bf16 + fp8 matmuls" in result.stdout
    late = lambda xs: sum(xs[-4:]) / 4  # noqa: E731
    assert abs(late(losses["fp8"]) - late(losses["bf16"])) / late(losses["bf16"]) < 0.05, losses
    assert len(losses["fp8 eval"]) == 2 and abs(losses["fp8 eval"][-1] - losses["bf16 eval"][-1]) < 0.05 * losses[
        "bf16 eval"][-1], losses
    again = run_launcher("+plan=zero2", "train.precision=fp8", f"run.dir={tmp_path / 'fp8'}", *FP8_MODEL,
                         "train.max_steps=20", "train.save_every=8")
    assert again.returncode == 0 and "resumed from global step 16" in again.stdout, again.stdout[-3000:]
    in_bf16 = run_launcher("+plan=zero2", "train.precision=bf16", f"run.dir={tmp_path / 'fp8'}", *FP8_MODEL,
                           "train.max_steps=24", "train.save_every=8")
    assert in_bf16.returncode == 0 and "resumed from global step 20" in in_bf16.stdout, in_bf16.stdout[-3000:]
    assert read_metrics(tmp_path / "fp8")[-1]["step"] == 24
