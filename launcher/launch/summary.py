"""The compact start-of-run summary printed by the entry (rank 0's console only)."""
from __future__ import annotations

import shlex

from launcher.checkpoint.store import Checkpoint
from launcher.plan.memory import UNIFIED_HOST_RESERVE_GB, MemoryEstimate
from launcher.plan.types import Plan
from launcher.render.launch import LaunchSpec
from launcher.script.launch import Script, flag_values


def summary_lines(plan: Plan, spec: LaunchSpec, resume: Checkpoint | None, script: Script | None = None) -> list[str]:
    m = plan.memory
    hosts = ", ".join(plan.hosts)
    fit = "fits" if m.fits else "DOES NOT FIT"
    model = (f"{model_name(plan)}, method {plan.method.name}, {m.params / 1e6:.1f}M params, "
             f"{m.trainable_params / 1e6:.2f}M trainable{_kernels(plan)}")
    seq = f"seq {plan.train.seq_len}"
    if script is not None:  # the script loads its own model and data; the launcher's config only sizes the estimate
        model = f"the script's own (the memory estimate is for the launcher's model config: {model})"
        seq = "seq: the script's"
    data = [] if script is not None else _data_lines(plan)
    return [
        f"run        {plan.run_name}  ->  {plan.run_dir}",
        f"topology   {plan.topo_name} ({plan.backend}): {plan.num_hosts} host(s) [{hosts}] x {plan.procs_per_host} "
        f"{'GPU(s)' if plan.accelerator == 'cuda' else 'CPU process(es)'} = world size {plan.world_size}",
        f"plan       {plan.plan_name}: ZeRO-{plan.zero_stage} dp={plan.dp} tp={plan.tp} pp={plan.pp}"
        f"{f' sp={plan.sp}' if plan.sp > 1 else ''}"
        f"{' offload(opt)' if plan.offload_optimizer else ''}{' offload(params)' if plan.offload_params else ''}, "
        f"{plan.precision}{' + fp8 matmuls' if plan.fp8 else ''}",
        f"model      {model}",
        *data,
        f"batch      global {plan.global_batch_size} = micro {plan.micro_batch_size} x dp {plan.dp} x accum "
        f"{plan.grad_accum}; {seq}; {steps(plan, script)}{_micro_note(plan)}",
        f"memory     ~{m.total_gb:.2f} GiB per {'GPU' if plan.accelerator == 'cuda' else 'process'} (params "
        f"{m.params_gb:.2f}, grads {m.grads_gb:.2f}, optimizer {m.optimizer_gb:.2f}, activations "
        f"{m.activations_gb:.2f}, offloaded {m.cpu_offload_gb:.2f}) of {m.capacity_gb:.0f} GiB: {fit}",
        f"resume     {f'from global step {resume.global_step} ({resume.path})' if resume else 'none (fresh start)'}",
        f"command    {shlex.join(spec.argv)}",
    ]


def _data_lines(plan: Plan) -> list[str]:
    """Each data set's rows, what was held out for validation and its share of an epoch (data.weights)."""
    from launcher.data.selection import describe

    lines = describe(plan.train_sets, plan.eval_sets, list(plan.data.weights))
    every = plan.train.eval_every
    if plan.has_validation:
        lines[-1] += f"; scored every {every} steps and after the last" if every else "; scored after the last step"
    return [f"{'data' if i == 0 else '':<11}{line}" for i, line in enumerate(lines)]


def _micro_note(plan: Plan) -> str:
    """Why this micro batch, when train.micro_batch_size=auto chose it on a GPU (on a CPU auto is the old default)."""
    return f" (micro batch {plan.micro_batch_note})" if plan.micro_batch_note and plan.accelerator == "cuda" else ""


def model_name(plan: Plan) -> str:
    """What is loaded: the model.path (hub id or folder) when there is one, else the preset built from its config."""
    return plan.model.path or f"{plan.model.name} (built from config)"


def _kernels(plan: Plan) -> str:
    if not plan.model.liger_kernel:
        return ""
    return ", liger-kernel kernels" + (" and fused loss" if plan.model.liger_fused_loss else "") + " if installed"


def steps(plan: Plan, script: Script | None) -> str:
    """The built-in job trains train.max_steps; a user script decides its own steps, and train.max_steps is not
    passed to it: only the script's own --max_steps (when given after --) says how many."""
    if script is None:
        return f"{plan.max_steps} steps"
    given = flag_values(script.args).get("max_steps", "")
    if given.isdigit() and int(given) > 0:  # a Trainer's --max_steps -1 means its epochs decide
        return f"{int(given)} steps (the script's --max_steps)"
    return "steps: decided by the script (train.max_steps is not passed to it)"


def print_summary(plan: Plan, spec: LaunchSpec, resume: Checkpoint | None, script: Script | None = None) -> None:
    print("\n".join(summary_lines(plan, spec, resume, script)), flush=True)


def plan_table(plan: Plan) -> list[str]:
    """The dry run's table: degrees, batch arithmetic and the memory estimate part by part, then the verdict."""
    m, t = plan.memory, plan.train
    per = "GPU" if plan.accelerator == "cuda" else "process"
    ckpt = t.gradient_checkpointing
    row = "  {:<19}{:>9.2f} GiB  {}".format
    stage = f"ZeRO-{plan.zero_stage}" if plan.zero_stage else "no ZeRO (ddp)"
    offload = " + ".join(n for n, on in (("optimizer", plan.offload_optimizer), ("parameters", plan.offload_params))
                         if on) or "none"
    lines = [
        f"plan table ({plan.plan_name}, estimated per {per})",
        f"  degrees            world {plan.world_size} = dp {plan.dp} x tp {plan.tp} x pp {plan.pp}"
        f"{f' x sp {plan.sp}' if plan.sp > 1 else ''}; {stage}; offload {offload}; {plan.precision}"
        f"{' + fp8 matmuls' if plan.fp8 else ''}",
        f"  batch              global {plan.global_batch_size} = micro {plan.micro_batch_size} x dp {plan.dp} x accum "
        f"{plan.grad_accum}; seq {t.seq_len} = {plan.micro_batch_size * t.seq_len:,} tokens per micro batch"
        f"{'; micro batch ' + plan.micro_batch_note if plan.micro_batch_note else ''}",
        f"  model              {model_name(plan)}: {m.params / 1e9:.2f}B parameters; {_method(plan)}",
        row("parameters", m.params_gb, f"{_share(plan, 3)}, {m.base_bytes_per_param:.2f} bytes each"
            + (" (nf4 projections)" if plan.method.name == "qlora" else "")),
        row("gradients", m.grads_gb, f"16-bit, of the trained weights, {_share(plan, 2)}"),
        row("optimizer states", m.optimizer_gb, f"fp32 master weights + 2 Adam moments, {_share(plan, 1)}"),
        row("activations", m.activations_gb, f"{'with' if ckpt else 'without'} gradient checkpointing "
            f"({m.activations_checkpointed_gb if not ckpt else m.activations_full_gb:.2f} GiB "
            f"{'with' if not ckpt else 'without'}){_sp_tokens(plan)}"
            f"{'; tiled MLP (train.tiled_mlp): no MLP activations kept' if plan.tiled_mlp else ''}"),
        row("optimizer step", m.step_gb, "fp32 gradient copy at the step; activations are freed by then, so the "
            "peak counts the larger of the two"),
        row("buffers", m.buffers_gb, "ZeRO gradient buckets, gathered ZeRO-3 weights, dequantized nf4 weights"),
        row("overhead", m.overhead_gb, "CUDA context, NCCL, allocator slack"),
        row(f"total per {per}", m.total_gb, "at the peak: start of the backward pass or the optimizer step"),
    ]
    if m.cpu_offload_gb:
        lines.append(row("CPU offload", m.cpu_offload_gb, f"per rank; CPU RAM needed per host ~{m.host_ram_gb:.1f} "
                         "GiB (DeepSpeed's 1.5x for pinned buffers)"))
    lines.append(f"  fits?              {_verdict(m)}")
    if plan.auto_reason:
        lines.append(f"  {plan.auto_reason}")
    return [line.rstrip() for line in lines]


def _method(plan: Plan) -> str:
    m, name = plan.memory, plan.method.name
    if name == "full":
        return "full fine-tune: every weight is trained"
    base = "4-bit nf4 base (bitsandbytes, double quantization)" if name == "qlora" else "frozen 16-bit base"
    return (f"{name} r={plan.method.lora_r}: {m.trainable_params / 1e6:.1f}M trainable "
            f"({m.trainable_params / m.params:.2%}) on a {base}")


def _share(plan: Plan, stage: int) -> str:
    """Which share of it a GPU holds. Under sequence parallel ZeRO shards over every rank (dp x sp)."""
    split, shards = plan.tp * plan.pp, plan.dp * plan.sp
    over = "dp x sp" if plan.sp > 1 else "dp"
    sharded = plan.zero_stage >= stage and shards > 1
    parts = ([f"1/{shards} (ZeRO-{plan.zero_stage} over {over})"] if sharded else []) + (
        [f"1/{split} by tp x pp"] if split > 1 else [])
    return " and ".join(parts) or "all of it on every GPU"


def _sp_tokens(plan: Plan) -> str:
    """Under sequence parallel a rank holds seq_len / sp tokens of each row (attention: all tokens, heads / sp)."""
    if plan.sp == 1:
        return ""
    local = -(-plan.train.seq_len // plan.sp)
    return f", per seq_len/sp = {local:,} tokens of each row (attention: all {plan.train.seq_len:,}, heads/{plan.sp})"


def _verdict(m: MemoryEstimate) -> str:
    if m.capacity_gb <= 0:
        return "unknown (no memory size for this topology: set topo.gpu_memory_gb)"
    verdict = "fits" if m.fits else "DOES NOT FIT"
    if m.unified_memory:
        return (f"{m.need_gb:.1f} GiB of {m.capacity_gb:.0f} GiB unified memory (GPU and CPU share it: offloaded "
                f"state and {UNIFIED_HOST_RESERVE_GB:.0f} GiB for the OS count too): {verdict}")
    text = f"{m.total_gb:.1f} of {m.capacity_gb:.0f} GiB per GPU: {verdict}"
    if m.host_ram_gb:
        text += f"; CPU RAM {m.host_ram_gb:.1f} of {m.host_capacity_gb:.0f} GiB per host"
    return text
