"""The compact start-of-run summary printed by the entry (rank 0's console only)."""
from __future__ import annotations

import shlex

from launcher.checkpoint import Checkpoint
from launcher.plan import Plan
from launcher.render.launch import LaunchSpec


def summary_lines(plan: Plan, spec: LaunchSpec, resume: Checkpoint | None) -> list[str]:
    m = plan.memory
    hosts = ", ".join(plan.hosts)
    fit = "fits" if m.fits else "DOES NOT FIT"
    return [
        f"run        {plan.run_name}  ->  {plan.run_dir}",
        f"topology   {plan.topo_name} ({plan.backend}): {plan.num_hosts} host(s) [{hosts}] x {plan.procs_per_host} "
        f"{'GPU' if plan.accelerator == 'cuda' else 'CPU process'}(es) = world size {plan.world_size}",
        f"plan       {plan.plan_name}: ZeRO-{plan.zero_stage} dp={plan.dp} tp={plan.tp} pp={plan.pp}"
        f"{' offload(opt)' if plan.offload_optimizer else ''}{' offload(params)' if plan.offload_params else ''}, "
        f"{plan.precision}",
        f"model      {plan.model.name} ({plan.model.path or 'built from config'}), method {plan.method.name}, "
        f"{m.params / 1e6:.1f}M params, {m.trainable_params / 1e6:.2f}M trainable",
        f"batch      global {plan.global_batch_size} = micro {plan.micro_batch_size} x dp {plan.dp} x accum "
        f"{plan.grad_accum}; seq {plan.train.seq_len}; {plan.max_steps} steps",
        f"memory     ~{m.total_gb:.2f} GiB per {'GPU' if plan.accelerator == 'cuda' else 'process'} (params "
        f"{m.params_gb:.2f}, grads {m.grads_gb:.2f}, optimizer {m.optimizer_gb:.2f}, activations "
        f"{m.activations_gb:.2f}, offloaded {m.cpu_offload_gb:.2f}) of {m.capacity_gb:.0f} GiB: {fit}",
        f"resume     {f'from global step {resume.global_step} ({resume.path})' if resume else 'none (fresh start)'}",
        f"command    {shlex.join(spec.argv)}",
    ]


def print_summary(plan: Plan, spec: LaunchSpec, resume: Checkpoint | None) -> None:
    print("\n".join(summary_lines(plan, spec, resume)), flush=True)
