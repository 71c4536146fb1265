"""resolve(): what will happen, from the config and the hardware, validated, with every number concrete - the
batch arithmetic, degrees, memory estimate, +plan=auto. Pure: it reads only its arguments, so it is tested in
milliseconds. The Plan it returns (plan/types.py) is written to plan.json; workers never re-derive it.
"""
from __future__ import annotations

import dataclasses
import functools
import math

from launcher.config.schema import LauncherConfig, ModelConfig, TrainConfig
from launcher.plan import auto as autoplan
from launcher.errors import LauncherError
from launcher.plan import placement as where
from launcher.plan.hardware import Hardware
from launcher.config.inputs import looks_local
from launcher.plan import micro_batch
from launcher.plan.memory import MemoryEstimate, MemoryJob, estimate, liger_applies
from launcher.plan.checks import check_deepspeed_extra, check_fp8, check_method, check_model_parallel
from launcher.plan.comm_sizes import comm_sizes
from launcher.plan.types import Plan, launch_settings
from launcher.data.selection import DataSet


def resolve(cfg: LauncherConfig, hw: Hardware, run_dir: str, run_name: str,
            data_sets: tuple[tuple[DataSet, ...], tuple[DataSet, ...]] = ((), ()),
            wandb_env: tuple[str, bool, bool] = ("", False, True), micro_cap: int = 0) -> Plan:
    """Turn what the user asked for into what will run. Raises LauncherError for anything that cannot work.

    data_sets are the training and validation sets the launching host counted (data/selection.py); wandb_env is
    (WANDB_MODE, whether WANDB_API_KEY is set, whether wandb is installed), read by the caller.
    +plan=auto picks the plan here; a plan whose memory estimate does not fit carries what would (memory_hint)."""
    evaluate = functools.partial(_resolve, hw=hw, run_dir=run_dir, run_name=run_name, data_sets=data_sets,
                                 wandb_env=wandb_env, micro_cap=micro_cap)
    if cfg.plan.name == autoplan.AUTO:
        return autoplan.choose(cfg, evaluate)
    plan = evaluate(cfg)
    if plan.memory.fits:
        return plan
    return dataclasses.replace(plan, memory_hint=autoplan.what_fits(cfg, plan, evaluate))


def _resolve(cfg: LauncherConfig, hw: Hardware, run_dir: str, run_name: str,
             data_sets: tuple[tuple[DataSet, ...], tuple[DataSet, ...]], wandb_env: tuple[str, bool, bool],
             micro_cap: int = 0) -> Plan:
    wandb_mode = _wandb_mode(cfg.logging.wandb.mode, wandb_env)
    backend, hosts, slots = where.placement(cfg)
    accelerator = where.accelerator(cfg, hw, backend)
    procs = slots or where.procs_per_host(cfg, hw, accelerator)
    world = len(hosts) * procs
    tp, pp, sp = cfg.plan.tp, cfg.plan.pp, cfg.plan.sp
    check_model_parallel(cfg, world)
    dp = world // (tp * pp * sp)
    precision = _precision(cfg.train.precision, accelerator, hw)
    check_method(cfg, accelerator)
    check_fp8(cfg, accelerator, hw.gpu_arch, backend == "local")
    check_deepspeed_extra(cfg)
    max_steps = _max_steps(cfg.train, sum(s.samples for s in data_sets[0]))
    liger = liger_applies(cfg.model.liger_kernel, accelerator, tp, pp, cfg.method.name, cfg.plan.compile)
    p = cfg.plan
    sizes = comm_sizes(cfg.model.arch, cfg.method.name, cfg.method.lora_r, tuple(cfg.method.target_modules), tp * pp,
                       p.reduce_bucket_mb, p.allgather_bucket_mb, p.stage3_prefetch_mb, shape_known=_shape_known(cfg))
    base = MemoryJob(
        arch=cfg.model.arch, method=cfg.method.name, lora_r=cfg.method.lora_r,
        target_modules=tuple(cfg.method.target_modules), precision=precision, accelerator=accelerator,
        seq_len=cfg.train.seq_len, gradient_checkpointing=cfg.train.gradient_checkpointing,
        zero_stage=cfg.plan.zero_stage, dp=dp, tp=tp, pp=pp, sp=sp,
        offload_optimizer=cfg.plan.offload_optimizer, offload_params=cfg.plan.offload_params, procs_per_host=procs,
        overlap_comm=cfg.plan.overlap_comm, reduce_bucket_mb=sizes.reduce_bucket_mb,
        liger=liger, fused_loss=liger and cfg.model.liger_fused_loss, tiled_mlp=_tiled_mlp(cfg) == "on",
    )
    unified = cfg.topo.unified_memory or (backend == "local" and hw.unified_memory)
    host_gb = cfg.topo.host_memory_gb or (hw.host_memory_gb if backend == "local" else 0.0)
    fit = functools.partial(estimate, capacity_gb=_capacity_gb(cfg, hw, accelerator), host_memory_gb=host_gb,
                            unified=unified)

    def memory_at(micro: int, tiling: bool = True) -> tuple[MemoryJob, MemoryEstimate]:
        job = dataclasses.replace(base, micro_batch_size=micro,
                                  grad_accum=max(1, cfg.train.global_batch_size // (micro * dp)))
        mem = fit(job)
        if tiling and _tiled_mlp(cfg) == "auto" and accelerator == "cuda" and not mem.fits:
            tiled = fit(dataclasses.replace(job, tiled_mlp=True))  # only where it makes the plan fit: it costs speed
            return (dataclasses.replace(job, tiled_mlp=True), tiled) if tiled.fits else (job, mem)
        return job, mem

    # An auto micro batch is chosen without the tiled MLP: tiling to fit a larger micro batch would spend the speed
    # the larger batch is for (and a 1.14B model at micro 32 tiled ran out of memory on an H100, perf.md 2026-12-07);
    # tiling stays for rows too long for even the chosen micro batch.
    asked = cfg.train.micro_batch_size
    micro, micro_note = (asked, "") if asked != micro_batch.AUTO else micro_batch.choose(
        cfg.train.global_batch_size, dp, accelerator, lambda m: memory_at(m, tiling=False)[1], micro_cap)
    grad_accum = _grad_accum(cfg.train, micro, dp)
    job, mem = memory_at(micro)
    return Plan(
        topo_name=cfg.topo.name if backend == cfg.topo.backend else backend,  # hostfile= on the default topology
        plan_name=cfg.plan.name,
        backend=backend,
        hosts=hosts,
        procs_per_host=procs,
        accelerator=accelerator,
        dp=dp,
        tp=tp,
        pp=pp,
        sp=sp,
        zero_stage=cfg.plan.zero_stage,
        offload_optimizer=cfg.plan.offload_optimizer,
        offload_params=cfg.plan.offload_params,
        global_batch_size=cfg.train.global_batch_size,
        micro_batch_size=micro,
        micro_batch_note=micro_note,
        grad_accum=grad_accum,
        max_steps=max_steps,
        precision=precision,
        run_dir=run_dir,
        run_name=run_name,
        model=_what_runs(cfg.model, liger),
        data=cfg.data,
        method=cfg.method,
        train=cfg.train,
        memory=mem,
        nccl_env=where.nccl_env(cfg),
        resume=cfg.run.resume,
        wandb_mode=wandb_mode,
        collective_timeout_s=cfg.run.collective_timeout_s,
        wandb_project=cfg.logging.wandb.project,
        wandb_entity=cfg.logging.wandb.entity,
        overlap_comm=cfg.plan.overlap_comm,
        reduce_bucket_mb=sizes.reduce_bucket_mb,
        allgather_bucket_mb=sizes.allgather_bucket_mb,
        stage3_prefetch_mb=sizes.stage3_prefetch_mb,
        stage3_param_persistence_kb=cfg.plan.stage3_param_persistence_kb,
        stage3_fetch=cfg.plan.stage3_fetch,
        compile=cfg.plan.compile,
        fp8=cfg.train.precision == "fp8",
        deepspeed=dict(cfg.plan.deepspeed),
        launch=launch_settings(cfg, hw),
        tiled_mlp=job.tiled_mlp,
        train_sets=data_sets[0],
        eval_sets=data_sets[1],
    )


def _tiled_mlp(cfg: LauncherConfig) -> str:
    """train.tiled_mlp: on, off or auto, which turns it on only for a CUDA plan that does not fit without it and does
    with it (measured on one H100, bench/results/long_context.md: it costs ~13% of the speed and cuts nothing where
    the model states, not the MLP's activations, set the peak). Under ZeRO-3 it needs whole-layer fetches: with
    per-module fetches each slice would gather the MLP's weights again, a different number of times on ranks whose
    rows differ in length."""
    asked, p = cfg.train.tiled_mlp, cfg.plan
    if p.zero_stage == 3 and p.stage3_fetch == "module":
        if asked == "on":
            raise LauncherError("train.tiled_mlp", "on", "use plan.stage3_fetch=layer (the default) with it, or "
                                "train.tiled_mlp=off", problem="ZeRO-3 with plan.stage3_fetch=module would gather "
                                "the MLP's weights once per slice, a different number of times on ranks with other "
                                "row lengths")
        return "off"
    return asked


def _what_runs(model: ModelConfig, liger: bool) -> ModelConfig:
    """The model as the ranks run it: model.liger_kernel and model.liger_fused_loss say whether liger-kernel's kernels
    apply on this accelerator and plan (memory.liger_applies), not only whether they were asked for."""
    return dataclasses.replace(model, liger_kernel=liger, liger_fused_loss=liger and model.liger_fused_loss)


def _shape_known(cfg: LauncherConfig) -> bool:
    """A local model's shape comes from its config.json (launcher/config/inputs.py) and a preset names its own; a hub id
    given on the tiny preset keeps the tiny shape, which says nothing about the model."""
    path = cfg.model.path
    return not path or looks_local(path) or cfg.model.name != "tiny"


def _wandb_mode(asked: str, wandb_env: tuple[str, bool, bool]) -> str:
    """auto: WANDB_MODE if set, online with an API key, else offline; off when the wandb package is missing."""
    mode_env, has_key, installed = wandb_env
    if asked == "auto":
        return (mode_env or ("online" if has_key else "offline")) if installed else "disabled"
    if asked != "disabled" and not installed:
        raise LauncherError("logging.wandb.mode", asked, "install it (pip install wandb) or use logging.wandb.mode=disabled",
                            problem="the wandb package is not installed")
    return asked


def _grad_accum(train: TrainConfig, micro: int, dp: int) -> int:
    per_step = micro * dp
    if train.global_batch_size % per_step:
        lower = max(per_step, train.global_batch_size // per_step * per_step)
        micros = [m for m in range(1, train.global_batch_size + 1) if train.global_batch_size % (m * dp) == 0]
        fix = f"use train.global_batch_size={lower} or {lower + per_step}"
        if micros:
            fix += f", or keep it and use train.micro_batch_size in {micros[:6]}"
        raise LauncherError(
            "train.global_batch_size",
            train.global_batch_size,
            fix,
            problem=f"it must be a multiple of micro batch {micro} x data-parallel size {dp} = {per_step}",
        )
    return train.global_batch_size // per_step


def _precision(asked: str, accelerator: str, hw: Hardware) -> str:
    if asked == "fp8":  # bf16 everywhere but the large linear layers' matmuls (plan.fp8, launcher/train/fp8.py)
        return "bf16"
    if asked == "auto":
        return "bf16" if accelerator == "cuda" and (hw.bf16 or hw.accelerator == "cpu") else "fp32"
    if asked == "fp16" and accelerator == "cpu":
        raise LauncherError("train.precision", asked, "fp16 needs a GPU: use train.precision=fp32 or bf16 on CPU")
    return asked


def _max_steps(train: TrainConfig, num_samples: int) -> int:
    if train.epochs and num_samples:
        return max(1, math.floor(train.epochs * num_samples / train.global_batch_size))
    return train.max_steps


def _capacity_gb(cfg: LauncherConfig, hw: Hardware, accelerator: str) -> float:
    # issue 28: on a GB10 (unified memory) the budget is MemAvailable measured at launch, never more than the preset
    unified_here = accelerator == "cuda" and hw.unified_memory and hw.mem_available_gb > 0
    if unified_here and (cfg.topo.unified_memory or cfg.topo.backend == "local"):
        return min(cfg.topo.gpu_memory_gb or hw.gpu_memory_gb, hw.mem_available_gb)
    if cfg.topo.gpu_memory_gb:
        return cfg.topo.gpu_memory_gb
    if accelerator == "cpu":
        return cfg.topo.host_memory_gb or hw.host_memory_gb
    return hw.gpu_memory_gb
