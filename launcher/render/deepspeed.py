"""Plan -> DeepSpeed config dict. Every number is concrete: no "auto" is left for DeepSpeed or a Trainer to guess."""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from launcher.plan.memory import STAGE3_MAX_LIVE_PARAMS
from launcher.plan.types import Plan

MB = 1024 * 1024
STEPS_PER_PRINT_OFF = 10**9  # the launcher logs steps itself


def render_ds_config(plan: Plan) -> dict[str, Any]:
    t = plan.train
    ds = {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": t.grad_clip,
        "steps_per_print": STEPS_PER_PRINT_OFF,
        "wall_clock_breakdown": False,
        "bf16": _bf16(plan),
        "fp16": _fp16(plan),
        "zero_optimization": _zero(plan),
        "optimizer": _optimizer(plan),
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    if plan.tp > 1:
        ds["tensor_parallel"] = {"autotp_size": plan.tp}
    if plan.pp > 1:
        ds["pipeline"] = _pipeline(plan)
    if plan.sp > 1:
        ds["sequence_parallel_size"] = plan.sp
    if not plan.deepspeed:
        return ds
    # plan.deepspeed over the rendered config, key by key at every depth (plan_checks refused the plan's own keys)
    return OmegaConf.to_container(OmegaConf.merge(ds, plan.deepspeed))  # type: ignore[return-value]


def universal_ds_config(ds: dict[str, Any]) -> dict[str, Any]:
    """The same config for a resume through DeepSpeed's universal checkpoint (world size or ZeRO stage changed):
    checkpoint.load_universal merged in, every other key - the user's plan.deepspeed.checkpoint.* included - kept. A
    rank that converts a checkpoint loads this file: what runs is always a config on disk."""
    return OmegaConf.to_container(OmegaConf.merge(ds, {"checkpoint": {"load_universal": True}}))  # type: ignore[return-value]


def _pipeline(plan: Plan) -> dict[str, Any]:
    """What the worker builds (launcher/train/pipeline.py): stages, partition and activation checkpointing are
    PipelineModule arguments and listed for the reader; DeepSpeed's pipeline engine reads the last two keys."""
    return {"stages": plan.pp, "partition": "parameters", "activation_checkpoint_interval": 0,
            "pipe_partitioned": True, "grad_partitioned": True}


def _bf16(plan: Plan) -> dict[str, Any]:
    """ZeRO-1/2's bf16 path checks every gradient for inf/NaN before each step (reductions per gradient, then a host
    sync: ~20 ms of GPU idle in a ~190 ms micro-4 step of a 1.1B model in an H100 profile, bench/results/perf.md) and
    skips the step if one is found. train.nonfinite=stop turns that off: the loop stops the run at a non-finite loss or gradient
    norm instead (launcher/train/loop.py), which it reads every step anyway. fp16 always checks (loss scaling needs
    it)."""
    if plan.precision != "bf16":
        return {"enabled": False}
    return {"enabled": True, "check_grad_overflow": plan.train.nonfinite == "skip"}


def _fp16(plan: Plan) -> dict[str, Any]:
    if plan.precision != "fp16":
        return {"enabled": False}
    return {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2}


def _zero(plan: Plan) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": plan.zero_stage}
    if plan.zero_stage == 0:
        return zero
    zero.update(
        {
            "overlap_comm": plan.overlap_comm and plan.pp == 1,  # the pipeline engine turns it off
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "reduce_bucket_size": plan.reduce_bucket_mb * MB,
            "allgather_bucket_size": plan.allgather_bucket_mb * MB,
        }
    )
    if plan.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": plan.accelerator == "cuda"}
    if plan.zero_stage == 3:
        zero.pop("allgather_bucket_size")
        zero.update(
            {
                "stage3_prefetch_bucket_size": plan.stage3_prefetch_mb * MB,
                "stage3_param_persistence_threshold": plan.stage3_param_persistence_kb * 1024,
                "stage3_max_live_parameters": STAGE3_MAX_LIVE_PARAMS,
                "stage3_max_reuse_distance": 10**9,
                "stage3_gather_16bit_weights_on_model_save": False,
            }
        )
        if plan.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": plan.accelerator == "cuda"}
    return zero


def _optimizer(plan: Plan) -> dict[str, Any]:
    """torch's AdamW (fused on CUDA): no DeepSpeed op to JIT-build, which fails on GB10 (aarch64, sm_121)."""
    t = plan.train
    params: dict[str, Any] = {
        "lr": t.lr,
        "betas": [t.adam_beta1, t.adam_beta2],
        "eps": t.adam_eps,
        "weight_decay": t.weight_decay,
        "torch_adam": True,
    }
    if plan.accelerator == "cuda" and not plan.offload_optimizer:
        params["fused"] = True
    return {"type": "AdamW", "params": params}
