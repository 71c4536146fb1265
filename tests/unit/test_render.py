"""Rendered artifacts: DeepSpeed JSON per plan preset and launch.sh, compared with reviewed golden files.

Set LAUNCHER_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then review the diff.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from launcher.backends.local import local_spec
from launcher.config.compose import compose, presets
from launcher.plan.hardware import Hardware
from launcher.plan.resolve import resolve
from launcher.render.deepspeed import render_ds_config
from launcher.render.env import rank_env, sanitize_arch_list
from launcher.render.launch import render_launch_sh
from tests.conftest import check_golden

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
H200x2 = Hardware("cuda", 2, "NVIDIA H200", 139.8, "9.0", True, 32, 256.0, "x86_64")


@pytest.mark.parametrize("preset", presets("plan"))
@pytest.mark.parametrize("hw", [CPU, H200x2], ids=["cpu", "gpu"])
def test_ds_config_matches_golden_and_has_no_auto(preset, hw):
    cfg, _ = compose([f"+plan={preset}", "train.micro_batch_size=2"])  # auto: tests/unit/test_micro_batch.py
    plan = resolve(cfg, hw, run_dir="/runs/x", run_name="x")
    ds = render_ds_config(plan)
    text = json.dumps(ds, indent=2) + "\n"
    assert '"auto"' not in text
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * plan.dp
    check_golden(f"ds_config/{preset}-{'cpu' if hw is CPU else 'gpu'}.json", text)


@pytest.mark.parametrize("preset", presets("plan"))
def test_deepspeed_accepts_every_rendered_config(preset):
    """DeepSpeedConfig checks the batch numbers against the world size it sees: 1 outside a process group, so the
    plan is made for one GB10; the 2-process engine initialisation is tests/integration/test_engine_init.py."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg, _ = compose(["+topo=single_pgx", f"+plan={preset}", "train.micro_batch_size=2"])
    degrees = cfg.plan.tp * cfg.plan.pp * cfg.plan.sp
    if degrees > 1:  # still one data-parallel rank: the box gets tp x pp x sp GPUs
        cfg, _ = compose(["+topo=single_pgx", f"topo.gpus_per_host={degrees}", f"+plan={preset}",
                          "train.micro_batch_size=2"])
    plan = resolve(cfg, H200x2, run_dir="/runs/x", run_name="x")
    rendered = render_ds_config(plan)
    # DeepSpeedConfig divides the world it sees (1 here) by sequence_parallel_size; the sp runs are integration tests
    assert rendered.pop("sequence_parallel_size", 1) == plan.sp
    ds = DeepSpeedConfig(rendered)
    assert ds.train_batch_size == plan.global_batch_size == 8
    assert ds.gradient_accumulation_steps == plan.grad_accum == 4
    assert ds.zero_optimization_stage == plan.zero_stage
    assert ds.bfloat16_config.enabled


def test_launch_sh_matches_golden():
    cfg, _ = compose([])
    plan = resolve(cfg, CPU, run_dir="/runs/x", run_name="x")
    env = rank_env(plan, {})
    spec = local_spec(plan, "python3", 0, env, "/work", "torchrun")
    check_golden("launch/local-cpu.sh", render_launch_sh(spec, "x"))


def test_rank_env_sets_cpu_accelerator_and_never_copies_secrets():
    cfg, _ = compose([])
    plan = resolve(cfg, CPU, run_dir="/runs/x", run_name="x")
    env = rank_env(plan, {"WANDB_API_KEY": "secret", "TORCH_CUDA_ARCH_LIST": "9.0a;12.1a"})
    assert env["DS_ACCELERATOR"] == "cpu" and env["OMP_NUM_THREADS"] == "1"
    assert "WANDB_API_KEY" not in env and env["TORCH_CUDA_ARCH_LIST"] == "9.0;12.1"


@pytest.mark.parametrize("given, expected", [("9.0a", "9.0"), ("8.0 9.0a", "8.0;9.0"), ("12.1a;12.1", "12.1"),
                                             ("9.0+PTX", "9.0+PTX")])
def test_arch_list_suffixes_are_stripped_for_deepspeed(given, expected):
    assert sanitize_arch_list(given) == expected


def test_torch_compile_is_the_engine_s_not_a_deepspeed_config_key():
    cfg, _ = compose(["+topo=single_pgx", "+plan=zero3", "plan.compile=torch"])
    assert "compile" not in render_ds_config(resolve(cfg, H200x2, run_dir="/runs/x", run_name="x"))


def test_plan_deepspeed_keys_are_merged_into_the_rendered_config_and_accepted():
    """The escape hatch for DeepSpeed keys the plan has no field for: merged at every depth, the plan's keys kept."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg, _ = compose(["+topo=single_pgx", "+plan=zero3", "+plan.deepspeed.wall_clock_breakdown=true",
                      "+plan.deepspeed.zero_optimization.stage3_max_live_parameters=100000000"])
    plan = resolve(cfg, H200x2, run_dir="/runs/x", run_name="x")
    ds = render_ds_config(plan)
    assert ds["wall_clock_breakdown"] is True and ds["zero_optimization"]["stage3_max_live_parameters"] == 10**8
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["stage3_prefetch_bucket_size"] > 0
    parsed = DeepSpeedConfig(ds)
    assert parsed.wall_clock_breakdown and parsed.zero_config.max_live_parameters == 10**8
    assert json.loads(json.dumps(dataclasses.asdict(plan)))["deepspeed"] == {
        "wall_clock_breakdown": True, "zero_optimization": {"stage3_max_live_parameters": 100000000}}


def test_bf16_gradient_check_is_deepspeed_s_only_with_nonfinite_skip_and_for_users_scripts():
    """train.nonfinite=stop (default): the loop watches loss and gradient norm, DeepSpeed's per-gradient bf16 check
    is off; skip keeps it. A user's script has no launcher loop watching it: DeepSpeed's own default there."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from launcher.script.launch import ds_config_for

    def bf16(*overrides: str) -> dict:
        cfg, _ = compose(["+topo=single_pgx", "+plan=zero2", *overrides])
        return render_ds_config(resolve(cfg, H200x2, run_dir="/runs/x", run_name="x"))

    stop, skip = bf16(), bf16("train.nonfinite=skip")
    assert stop["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert skip["bf16"] == {"enabled": True, "check_grad_overflow": True}
    assert not DeepSpeedConfig(stop).bfloat16_config.check_grad_overflow
    for api in ("hf_trainer", "accelerate", "deepspeed"):
        assert ds_config_for(stop, api)["bf16"] == {"enabled": True}
    assert bf16("train.precision=fp32")["bf16"] == {"enabled": False}
