"""`+plan=auto` picks the fastest plan that fits; a plan that does not fit is told which plans, methods, micro batch
sizes or how many GPUs would. Pure: candidate configs are resolved by the `evaluate` function plan.resolve passes in.

Expected speed: with train.micro_batch_size=auto (the default), the plans without checkpointing, ddp and ZeRO-1/2/3,
each at the largest micro batch it fits, are ranked together by launcher/plan/micro_batch.speed (a stage's relative
speed measured on H100s times the share of a micro step that is compute, so ZeRO-2 at micro 8 beats DDP at micro 2).
With a given micro batch, or when none of those fits, an order decides: ddp, zero1, zero2, zero3, then the same with
gradient checkpointing (one more forward pass), then tensor or pipeline parallel (traffic per layer, or a pipeline
bubble; they also split the activations), and CPU offload (the optimizer step runs on the CPU). Ulysses sequence
parallel (plan.sp) comes only after all of them: it is for a sequence whose activations fit no other plan, and it costs
all-to-alls in every layer.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Iterator

from launcher.config.schema import LauncherConfig
from launcher.errors import LauncherError
from launcher.plan.memory import UNIFIED_HOST_RESERVE_GB, MemoryJob, estimate, liger_applies
from launcher.plan.micro_batch import speed

if TYPE_CHECKING:
    from launcher.plan.types import Plan

AUTO = "auto"
ZERO = (("ddp", 0), ("zero1", 1), ("zero2", 2), ("zero3", 3))
COST = {"ddp": "no sharding traffic", "zero1": "shards the optimizer states",
        "zero2": "also shards the gradients (one reduction per bucket)",
        "zero3": "also shards the weights (gathered again for every layer, ~1.5x the traffic of ddp)",
        "tp": "two all-reduces per layer", "pp": "a pipeline bubble per step",
        "zero3_offload": "steps the optimizer on the CPU and moves the weights over PCIe",
        "sp": "four all-to-alls per layer (q, k, v and the attention output), again in the backward pass"}
SP_PRESET = (2, 3)  # conf/plan/sp.yaml: plan.sp and plan.zero_stage
Evaluate = Callable[[LauncherConfig], "Plan"]


def variant(cfg: LauncherConfig, name: str, stage: int, tp: int = 1, pp: int = 1, offload: bool = False,
            checkpointing: bool | None = None, sp: int = 1) -> LauncherConfig:
    plan = dataclasses.replace(cfg.plan, name=name, zero_stage=stage, tp=tp, pp=pp, sp=sp, offload_optimizer=offload,
                               offload_params=offload)
    train = cfg.train if checkpointing is None else dataclasses.replace(cfg.train, gradient_checkpointing=checkpointing)
    return dataclasses.replace(cfg, plan=plan, train=train)


def candidates(cfg: LauncherConfig, world: int, procs_per_host: int) -> Iterator[LauncherConfig]:
    """Every plan auto may pick, fastest first; checkpointing only after every plan without it, sequence parallel
    only after every plan without it."""
    layers = cfg.model.arch.num_layers
    for ckpt in (True,) if cfg.train.gradient_checkpointing else (False, True):
        for name, stage in ZERO:
            yield variant(cfg, name, stage, checkpointing=ckpt)
    for ckpt in (True,) if cfg.train.gradient_checkpointing else (False, True):
        for tp in (d for d in (2, 4, 8) if procs_per_host % d == 0):
            yield variant(cfg, "tp", 1, tp=tp, checkpointing=ckpt)
        for pp in (d for d in (2, 4, 8, 16) if world % d == 0 and d <= layers):
            yield variant(cfg, "pp", 1, pp=pp, checkpointing=ckpt)
    for ckpt in (True,) if cfg.train.gradient_checkpointing else (False, True):
        yield variant(cfg, "zero3_offload", 3, offload=True, checkpointing=ckpt)
    for ckpt in (True,) if cfg.train.gradient_checkpointing else (False, True):
        for sp in sp_degrees(cfg, world):
            for _, stage in ZERO:
                yield variant(cfg, "sp", stage, sp=sp, checkpointing=ckpt)


def sp_degrees(cfg: LauncherConfig, world: int) -> list[int]:
    """Sequence-parallel degrees DeepSpeed's Ulysses attention accepts here: powers of two dividing the world size and
    the attention heads, and dividing the kv heads or a multiple of them (it then repeats the kv heads)."""
    heads, kv = cfg.model.arch.num_heads, cfg.model.arch.num_kv_heads
    out, sp = [], 2
    while sp <= world:
        if world % sp == 0 and heads % sp == 0 and (kv % sp == 0 or sp % kv == 0):
            out.append(sp)
        sp *= 2
    return out


def _plans(cfg: LauncherConfig, evaluate: Evaluate, base: Plan) -> Iterator[Plan]:
    for c in candidates(cfg, base.world_size, base.procs_per_host):
        try:
            yield evaluate(c)
        except LauncherError:
            continue  # degrees this model, batch or method does not allow


def label(plan: Plan, asked_checkpointing: bool = False) -> str:
    """The overrides that select this plan, as a user would type them."""
    text = f"+plan={plan.plan_name}"
    if plan.plan_name == "tp":
        text += f" plan.tp={plan.tp}"
    if plan.plan_name == "pp":
        text += f" plan.pp={plan.pp}"
    if plan.plan_name == "sp":
        text += f" plan.sp={plan.sp}" if plan.sp != SP_PRESET[0] else ""
        text += f" plan.zero_stage={plan.zero_stage}" if plan.zero_stage != SP_PRESET[1] else ""
    if plan.train.gradient_checkpointing and not asked_checkpointing:
        text += " train.gradient_checkpointing=true"
    return text


def _gib(plan: Plan) -> str:
    return f"~{plan.memory.need_gb:.1f} GiB"


def _fastest_flat(cfg: LauncherConfig, evaluate: Evaluate, base: Plan) -> list[Plan]:
    """The data-parallel plans without checkpointing (unless asked for) that fit, fastest first by `speed`: with
    train.micro_batch_size=auto each takes its own largest micro batch, so a ZeRO-2 plan at micro 8 can beat a DDP
    plan at micro 4. Empty when none fits (the ordered tiers of `candidates` then decide)."""
    plans = []
    for name, stage in ZERO:
        try:
            p = evaluate(variant(cfg, name, stage, checkpointing=cfg.train.gradient_checkpointing))
        except LauncherError:
            continue
        if p.memory.fits:
            plans.append(p)
    return sorted(plans, key=speed, reverse=True)


def choose(cfg: LauncherConfig, evaluate: Evaluate) -> Plan:
    """The fastest data-parallel plan that fits (plan and micro batch together), else the first candidate that fits,
    with the reason and the runner-up in `auto_reason`. When none fits, the one needing the least memory, with
    `memory_hint` set (the launch then refuses it; a dry run shows it)."""
    base = evaluate(cfg)  # the batch arithmetic and method checks, with the auto preset's neutral degrees
    asked = cfg.train.gradient_checkpointing
    flat = _fastest_flat(cfg, evaluate, base) if cfg.train.micro_batch_size == "auto" else []
    if flat:
        return _by_speed(flat, asked)
    ruled_out: list[Plan] = []  # in order, until the first that fits
    fitting: list[Plan] = []
    for p in _plans(cfg, evaluate, base):
        if p.memory.fits:
            fitting.append(p)
            if len(fitting) == 2:
                break
        elif not fitting:
            ruled_out.append(p)
    if not fitting:
        smallest = min(ruled_out, key=lambda p: p.memory.need_gb)
        reason = (f"plan=auto: no plan fits {smallest.memory.capacity_gb:.0f} GiB; the smallest is "
                  f"{label(smallest, asked)} ({_gib(smallest)})")
        hint = what_fits(config_of(cfg, smallest), smallest, evaluate)
        return dataclasses.replace(smallest, auto_reason=reason, memory_hint=hint)
    chosen = fitting[0]
    reason = (f"plan=auto chose {label(chosen, asked)}: the fastest plan that fits ({_gib(chosen)} of "
              f"{chosen.memory.capacity_gb:.0f} GiB)")
    if chosen.sp > 1:
        reason += _why_sp(chosen, ruled_out, asked)
    if ruled_out:
        reason += "; faster ones do not: " + ", ".join(f"{label(p, asked)} {_gib(p)}" for p in ruled_out[:4])
        reason += ", ..." if len(ruled_out) > 4 else ""
    if len(fitting) > 1:
        runner = fitting[1]
        reason += f". Runner-up: {label(runner, asked)} ({_gib(runner)}; {_cost(runner, chosen)})"
    return dataclasses.replace(chosen, auto_reason=reason + ".")


def _by_speed(plans: list[Plan], asked: bool) -> Plan:
    chosen = plans[0]
    reason = (f"plan=auto chose {label(chosen, asked)} train.micro_batch_size={chosen.micro_batch_size}: the fastest "
              f"that fits, by expected speed ({speed(chosen):.2f}: ZeRO-{chosen.zero_stage} at micro "
              f"{chosen.micro_batch_size}; {_gib(chosen)} of {chosen.memory.capacity_gb:.0f} GiB)")
    if len(plans) > 1:
        runner = plans[1]
        reason += (f". Runner-up: {label(runner, asked)} train.micro_batch_size={runner.micro_batch_size} "
                   f"({speed(runner):.2f}; {_gib(runner)})")
    return dataclasses.replace(chosen, auto_reason=reason + ".")


def _cost(runner: Plan, chosen: Plan) -> str:
    """What makes the runner-up slower than the chosen plan."""
    if runner.train.gradient_checkpointing and not chosen.train.gradient_checkpointing:
        return "recomputes the forward pass"
    if runner.sp != chosen.sp:
        return f"sequence parallel over {runner.sp} ranks: {COST['sp']}"
    name = dict((stage, n) for n, stage in ZERO)[runner.zero_stage] if runner.plan_name == "sp" else runner.plan_name
    return COST.get(name, "")  # two sp plans differ in their ZeRO stage: the cost of that stage


def _why_sp(chosen: Plan, ruled_out: list[Plan], asked: bool) -> str:
    """Sequence parallel is picked only when no plan without it fits: say which came closest, and what sp costs."""
    flat = [p for p in ruled_out if p.sp == 1]
    text = "; no plan without sequence parallel fits"
    if flat:
        closest = min(flat, key=lambda p: p.memory.need_gb)
        text += f" (the smallest, {label(closest, asked)}, needs {_gib(closest)})"
    return text + f", so each sequence is split over {chosen.sp} ranks, at the cost of {COST['sp']}"


def config_of(cfg: LauncherConfig, plan: Plan) -> LauncherConfig:
    """The config that resolves to `plan` (one of the candidates)."""
    return variant(cfg, plan.plan_name, plan.zero_stage, plan.tp, plan.pp, plan.offload_optimizer,
                   plan.train.gradient_checkpointing, plan.sp)


def what_fits(cfg: LauncherConfig, plan: Plan, evaluate: Evaluate) -> str:
    """The advice of the not-fitting error: other plans, a smaller micro batch, LoRA/QLoRA, more GPUs."""
    tips = [f"{label(p, cfg.train.gradient_checkpointing)} ({_gib(p)})"
            for p in _first_fitting(cfg, evaluate, plan, 2)]
    tips += _micro_batch(cfg, plan, evaluate)
    full = cfg.method.name == "full"
    for method in ("lora", "qlora") if full else ("qlora",) if cfg.method.name == "lora" else ():
        if method == "qlora" and plan.accelerator != "cuda":
            continue
        other = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name=method))
        found = _first_fitting(other, evaluate, plan, 1)
        if found:
            tips.append(f"method={method} with {label(found[0])} ({_gib(found[0])})")
    if not _first_fitting(cfg, evaluate, plan, 1):
        more = min_gpus(plan)
        if more:
            n, need = more
            tips.append(f"{n} GPUs like these with +plan=zero3 train.gradient_checkpointing=true (~{need:.1f} GiB "
                        f"each)")
    return "; ".join(tips)


def _first_fitting(cfg: LauncherConfig, evaluate: Evaluate, base: Plan, count: int) -> list[Plan]:
    out: list[Plan] = []
    for p in _plans(cfg, evaluate, base):
        if p.memory.fits:
            out.append(p)
            if len(out) == count:
                break
    return out


def _micro_batch(cfg: LauncherConfig, plan: Plan, evaluate: Evaluate) -> list[str]:
    """The largest smaller micro batch that fits this plan (gradient accumulation keeps the global batch)."""
    t = cfg.train
    for m in range(plan.micro_batch_size - 1, 0, -1):
        if t.global_batch_size % (m * plan.dp):
            continue
        try:
            p = evaluate(dataclasses.replace(cfg, train=dataclasses.replace(t, micro_batch_size=m)))
        except LauncherError:
            continue
        if p.memory.fits:
            return [f"train.micro_batch_size={m} ({_gib(p)}; gradient accumulation keeps the global batch)"]
    return []


def memory_job(plan: Plan) -> MemoryJob:
    """The estimate's inputs, read back from a resolved plan (the same as plan.resolve computes them)."""
    liger = liger_applies(plan.model.liger_kernel, plan.accelerator, plan.tp, plan.pp, plan.method.name,
                          plan.compile)
    return MemoryJob(
        arch=plan.model.arch, method=plan.method.name, lora_r=plan.method.lora_r,
        target_modules=tuple(plan.method.target_modules), precision=plan.precision, accelerator=plan.accelerator,
        micro_batch_size=plan.micro_batch_size, seq_len=plan.train.seq_len, grad_accum=plan.grad_accum,
        gradient_checkpointing=plan.train.gradient_checkpointing, zero_stage=plan.zero_stage, dp=plan.dp, tp=plan.tp,
        pp=plan.pp, sp=plan.sp, offload_optimizer=plan.offload_optimizer, offload_params=plan.offload_params,
        procs_per_host=plan.procs_per_host, overlap_comm=plan.overlap_comm, reduce_bucket_mb=plan.reduce_bucket_mb,
        liger=liger, fused_loss=liger and plan.model.liger_fused_loss, tiled_mlp=plan.tiled_mlp,
    )


def min_gpus(plan: Plan, limit: int = 4096) -> tuple[int, float] | None:
    """The fewest GPUs of this size (whole hosts) on which ZeRO-3 with checkpointing fits, and its need in GiB."""
    m = plan.memory
    if m.capacity_gb <= 0:
        return None
    job = dataclasses.replace(memory_job(plan), zero_stage=3, gradient_checkpointing=True, tp=1, pp=1, sp=1,
                              offload_optimizer=False, offload_params=False)
    step = plan.procs_per_host
    for n in range(plan.world_size + step, limit + 1, step):
        e = estimate(dataclasses.replace(job, dp=n), m.capacity_gb, m.host_capacity_gb, m.unified_memory)
        if e.fits:
            return n, e.need_gb
    return None


def memory_error(plan: Plan) -> LauncherError:
    """The refusal of a plan whose estimate does not fit, saying by how much and what would."""
    m = plan.memory
    if m.unified_memory:
        reserve = UNIFIED_HOST_RESERVE_GB
        where = (f"of unified memory (GPU and CPU share it; this counts offloaded state and {reserve:.0f} GiB for the "
                 "OS and the rank's CPU side)")
    else:
        where = "per GPU"
    parts = (f"parameters {m.params_gb:.1f}, gradients {m.grads_gb:.1f}, optimizer states {m.optimizer_gb:.1f}, "
             f"activations {m.activations_gb:.1f}")
    if m.over_gb > 0:
        problem = (f"its memory estimate is ~{m.need_gb:.1f} GiB {where} and there are {m.capacity_gb:.0f} GiB: "
                   f"{m.over_gb:.1f} GiB too much ({parts} GiB)")
    else:
        problem = (f"it needs ~{m.host_ram_gb:.1f} GiB of CPU RAM per host for offloaded state and the host has "
                   f"{m.host_capacity_gb:.0f} GiB")
    advice = f"what would fit: {plan.memory_hint}" if plan.memory_hint else "nothing on this topology fits"
    return LauncherError(
        "plan", AUTO if plan.auto_reason else plan.plan_name,
        f"{advice}. run.dry_run=true shows the whole table; run.check_memory=false launches anyway",
        problem=problem,
    )
