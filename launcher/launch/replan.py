"""The re-plan after an out-of-memory: a rank that runs out of GPU memory in its first steps at a micro batch that
train.micro_batch_size=auto chose ends with OOM_REPLAN_EXIT_CODE (launcher/train/failures.py); the engine's
collectives cannot be recovered inside the ranks, so the supervisor's caller starts the job again one micro batch
smaller. Gradient accumulation keeps the global batch, so the optimization and an exact resume stay the job's.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from launcher.errors import LauncherError
from launcher.plan import micro_batch
from launcher.plan.auto import memory_job
from launcher.plan.memory import estimate
from launcher.plan.types import Plan
from launcher.render.deepspeed import render_ds_config
from launcher.rundir import DS_CONFIG_FILE, PLAN_FILE, write_artifacts


def with_micro_batch(plan: Plan, micro: int, note: str) -> Plan:
    """The same plan at another micro batch: accumulation keeps the global batch, the estimate is redone on the same
    device capacity (the supervisor's re-plan after an out-of-memory)."""
    grad_accum = plan.global_batch_size // (micro * plan.dp)
    job = dataclasses.replace(memory_job(plan), micro_batch_size=micro, grad_accum=grad_accum)
    m = plan.memory
    mem = estimate(job, m.capacity_gb, m.host_capacity_gb, m.unified_memory)
    return dataclasses.replace(plan, micro_batch_size=micro, grad_accum=grad_accum, memory=mem, micro_batch_note=note)


def replanned(plan: Plan) -> Plan | None:
    """After an out-of-memory in the first steps at an auto-chosen micro batch: the same plan at the next smaller
    micro batch, written where the ranks read it (plan.json, ds_config.json) and recorded in the run dir so that a
    rerun starts from it. None, with the paragraph printed, when there is no smaller one."""
    run_dir, old = Path(plan.run_dir), plan.micro_batch_size
    smaller = micro_batch.next_smaller(plan.global_batch_size, plan.dp, old)
    if not smaller:
        err = LauncherError("train.micro_batch_size", "auto", "turn on train.gradient_checkpointing, choose a plan "
                            "that shards more (+plan=zero3, +plan=zero3_offload) or method=lora; run.dry_run=true "
                            "shows the memory estimate", problem=f"the job ran out of GPU memory in its first steps "
                            f"at micro batch {old}, and there is no smaller one")
        print(err.paragraph(), file=sys.stderr, flush=True)
        return None
    note = f"auto: {smaller} after an out-of-memory at {old} (run dir's {micro_batch.RECORD_FILE})"
    plan = with_micro_batch(plan, smaller, note)
    write_artifacts(run_dir, {PLAN_FILE: plan.to_json(),
                              DS_CONFIG_FILE: json.dumps(render_ds_config(plan), indent=2) + "\n",
                              micro_batch.RECORD_FILE: json.dumps({"micro_batch_size": smaller, "out_of_memory_at": old})
                              + "\n"})
    print(f"out of GPU memory in the first steps at micro batch {old}: retrying at train.micro_batch_size={smaller} "
          f"(gradient accumulation {plan.grad_accum} keeps the global batch {plan.global_batch_size}); recorded in "
          f"{run_dir / micro_batch.RECORD_FILE} so a rerun keeps it", file=sys.stderr, flush=True)
    return plan
