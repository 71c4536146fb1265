"""Per-GPU memory estimate for a plan, from the model's shape alone (no weights are loaded). Pure.

Model states follow what DeepSpeed allocates (its estimate_zero2/3_model_states_mem_needs: 16-bit weights and
gradients, fp32 master weights, an fp32 gradient copy at the step and two fp32 Adam moments, sharded by the ZeRO stage
over the dp x sp ranks: under sequence parallel DeepSpeed's ZeRO uses the sequence-data-parallel group, the whole
world). Activations are counted tensor by tensor (plan/activations.py). The peak is at the start of the backward pass
(activations live) or at the optimizer step (activations freed, fp32 gradients made), whichever is larger.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from launcher.config.schema import ArchConfig
from launcher.plan.activations import activation_bytes, kv_width, vocab_rows

GIB = 1024**3
CUDA_CONTEXT_GB = 1.0  # CUDA context, cuBLAS workspaces, NCCL buffers: outside torch's allocator
ALLOCATOR_SLACK = 0.05  # reserved by torch's caching allocator but not allocated (fragmentation)
UNIFIED_HOST_RESERVE_GB = 8.0  # GB10: the OS and each rank's own CPU memory come out of the same pool
OFFLOAD_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor for the CPU memory of offloaded state
# bitsandbytes nf4: 4 bits per weight, one absmax per block of 64 weights, double-quantized to 8 bits with one fp32
# constant per 256 blocks
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
ADAM_BYTES = 8  # two fp32 moments
MASTER_BYTES = 4  # fp32 master weights
FP32_GRAD_BYTES = 4  # the fp32 gradient partition DeepSpeed makes at the step
STAGE3_MAX_LIVE_PARAMS = 10**9  # ZeRO-3 keeps at most this many gathered parameters (rendered into ds_config.json)
STAGE3_SUB_GROUP = 10**9  # ZeRO-3 steps the optimizer over sub-groups of this many parameters (DeepSpeed's default)
DDP_BUCKET = 5 * 10**8  # stage 0: DeepSpeed all-reduces gradients flattened in buckets of this many elements
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class MemoryJob:
    """What the estimate reads: the model, what is trained, the batch, and how the model is split."""

    arch: ArchConfig
    method: str = "full"
    lora_r: int = 16
    target_modules: tuple[str, ...] = TARGETS
    precision: str = "bf16"
    accelerator: str = "cuda"
    micro_batch_size: int = 1
    seq_len: int = 2048
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    zero_stage: int = 2
    dp: int = 1
    tp: int = 1
    pp: int = 1
    sp: int = 1  # Ulysses sequence parallel: each rank holds seq_len / sp tokens of every row; ZeRO shards over dp x sp
    tiled_mlp: bool = False  # DeepSpeed's TiledMLP: the MLP keeps no activations, one slice at a time
    offload_optimizer: bool = False
    offload_params: bool = False
    procs_per_host: int = 1
    overlap_comm: bool = True
    reduce_bucket_mb: int = 200
    liger: bool = False  # liger-kernel's RMSNorm, SwiGLU and RoPE replace transformers' (model.liger_kernel on CUDA)
    fused_loss: bool = False  # liger's fused linear cross-entropy: the logits are never materialized


@dataclass(frozen=True)
class MemoryEstimate:
    """GiB per GPU unless named otherwise. total = params + grads + optimizer + buffers + max(activations, step)
    + overhead; `need_gb` is what is compared with `capacity_gb` (on unified memory it adds the CPU side)."""

    params: int
    trainable_params: int
    params_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float
    total_gb: float
    cpu_offload_gb: float
    capacity_gb: float
    fits: bool
    step_gb: float = 0.0
    buffers_gb: float = 0.0
    activations_full_gb: float = 0.0
    activations_checkpointed_gb: float = 0.0
    base_bytes_per_param: float = 2.0
    host_ram_gb: float = 0.0
    host_capacity_gb: float = 0.0
    unified_memory: bool = False
    need_gb: float = 0.0

    @property
    def over_gb(self) -> float:
        """How much does not fit (<= 0: it fits); 0 when the capacity is unknown."""
        return self.need_gb - self.capacity_gb if self.capacity_gb > 0 else 0.0


def liger_applies(enabled: bool, accelerator: str, tp: int, pp: int, method: str,
                  compile_mode: str = "off") -> bool:
    """When the ranks swap in liger-kernel's kernels (launcher.train.model.apply_liger_kernels; it assumes the package
    is installed: without it the activations are those of model.liger_kernel=false). Not under plan.compile: the
    compiler fuses the same operations itself, and liger's fused loss under torch.compile gives illegal memory
    accesses or wrong losses (Liger-Kernel issue 916, pull request 1338; an illegal access here on an H200)."""
    return enabled and accelerator == "cuda" and tp == pp == 1 and method != "qlora" and compile_mode == "off"


def linear_params(arch: ArchConfig) -> int:
    """Weights of the attention and MLP projections: what QLoRA stores in 4 bits and tensor parallel shards."""
    h, i, kv = arch.hidden_size, arch.intermediate_size, kv_width(arch)
    return arch.num_layers * (2 * h * h + 2 * h * kv + 3 * h * i)


def count_params(arch: ArchConfig, vocab_size: int = 0) -> int:
    """Parameters of a Llama-style decoder (GQA attention, SwiGLU MLP, RMSNorm)."""
    h = arch.hidden_size
    vocab = vocab_size or vocab_rows(arch)
    head = 0 if arch.tie_word_embeddings else vocab * h
    return vocab * h + linear_params(arch) + arch.num_layers * 2 * h + h + head


def lora_params(arch: ArchConfig, r: int, target_modules: Sequence[str] = TARGETS) -> int:
    """LoRA adds r x (in + out) parameters per adapted projection."""
    h, i, kv = arch.hidden_size, arch.intermediate_size, kv_width(arch)
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
              "up_proj": (h, i), "down_proj": (i, h)}
    return arch.num_layers * sum(r * sum(shapes[t]) for t in target_modules if t in shapes)


def _model_parallel_share(arch: ArchConfig, n: int, tp: int, pp: int) -> float:
    """Fraction of the parameters one rank holds under tp x pp: tp shards the projections and the head (the model's
    tp_plan; the embedding and norms stay whole), pp gives a stage its layers plus the embedding (first) or the head
    (last)."""
    linear = linear_params(arch)
    h, vocab, layers = arch.hidden_size, vocab_rows(arch), arch.num_layers
    per_layer = (linear / tp + layers * 2 * h) / layers
    head = 0 if arch.tie_word_embeddings else vocab * h / tp
    stage_layers = -(-layers // pp)
    if pp == 1:
        return (per_layer * layers + vocab * h + head + h) / n
    return (per_layer * stage_layers + max(vocab * h, head + h)) / n


def estimate(job: MemoryJob, capacity_gb: float, host_memory_gb: float = 0.0, unified: bool = False
             ) -> MemoryEstimate:
    """Per-GPU peak for `job`, and whether it fits `capacity_gb` (0: unknown, counted as fitting)."""
    arch, zero = job.arch, job.zero_stage
    dp = job.dp * job.sp  # the ranks ZeRO shards over and gradients are reduced over (sequence-data-parallel group)
    n = count_params(arch)
    lora = job.method in ("lora", "qlora")
    trainable = lora_params(arch, job.lora_r, job.target_modules) if lora else n
    b = 4 if job.precision == "fp32" else 2
    share = _model_parallel_share(arch, n, job.tp, job.pp)
    linear = linear_params(arch)
    base_bytes = ((linear * NF4_BYTES + (n - linear) * b) / n) if job.method == "qlora" else b
    t = trainable * share  # trainable parameters on this rank before ZeRO sharding

    params = (n * base_bytes + (trainable * b if lora else 0)) * share
    grads = t * b
    master = 0 if (b == 4 and zero == 0) else MASTER_BYTES  # only plain fp32 data parallel steps the weights in place
    optim = t * (master + ADAM_BYTES)
    step = 0.0 if (b == 4 and zero == 0) else t * FP32_GRAD_BYTES
    if zero == 0 and dp > 1:
        step += min(t, DDP_BUCKET) * b
    if zero >= 1:
        optim /= dp
        step /= dp
    if zero >= 2:
        grads /= dp
    if zero >= 3:
        params /= dp
        step = min(step, STAGE3_SUB_GROUP * FP32_GRAD_BYTES)
    buffers = _buffers(job, n * share, b)
    cpu = 0.0
    if job.offload_optimizer:
        cpu += optim + step
        optim = step = 0.0
        if zero >= 3:  # stage3.py puts the gradient partitions on the optimizer's device, the CPU
            cpu += grads
        if zero >= 2:  # stage 2 copies each reduced gradient straight into the CPU fp32 gradient (`step`)
            grads = 0.0
    if job.offload_params:
        cpu += params
        params = 0.0  # the gathered layers are in buffers
    act_full, act_ckpt = _activations(job, b, lora)
    act = act_ckpt if job.gradient_checkpointing else act_full
    allocated = (params + grads + optim + buffers + max(act, step)) / GIB
    overhead = CUDA_CONTEXT_GB + ALLOCATOR_SLACK * allocated
    total = allocated + overhead
    cpu_gb = cpu / GIB
    host_ram = cpu_gb * job.procs_per_host * OFFLOAD_BUFFER_FACTOR
    need = total * job.procs_per_host + host_ram + UNIFIED_HOST_RESERVE_GB if unified else total
    host_fits = unified or host_memory_gb <= 0 or host_ram <= host_memory_gb
    return MemoryEstimate(
        params=n,
        trainable_params=trainable,
        params_gb=_gb(params),
        grads_gb=_gb(grads),
        optimizer_gb=_gb(optim),
        activations_gb=_gb(act),
        overhead_gb=round(overhead, 3),
        total_gb=round(total, 3),
        cpu_offload_gb=round(cpu_gb, 3),
        capacity_gb=round(capacity_gb, 3),
        fits=host_fits and (capacity_gb <= 0 or need <= capacity_gb),
        step_gb=_gb(step),
        buffers_gb=_gb(buffers),
        activations_full_gb=_gb(act_full),
        activations_checkpointed_gb=_gb(act_ckpt),
        base_bytes_per_param=round(base_bytes, 4),
        host_ram_gb=round(host_ram, 3),
        host_capacity_gb=round(host_memory_gb, 3),
        unified_memory=unified,
        need_gb=round(need, 3),
    )


def _activations(job: MemoryJob, b: int, lora: bool) -> tuple[float, float]:
    """Activation bytes without and with gradient checkpointing; the fused loss of a full fine-tune also holds
    lm_head's weight gradient, computed during the forward pass."""
    arch = job.arch
    kw = {"tp": job.tp, "pp": job.pp, "in_flight": min(job.pp, job.grad_accum), "liger": job.liger,
          "fused_loss": job.fused_loss, "sp": job.sp, "tiled_mlp": job.tiled_mlp}
    full, ckpt = (activation_bytes(arch, job.micro_batch_size, job.seq_len, b, c, **kw) for c in (False, True))
    head = arch.hidden_size * vocab_rows(arch) * b if job.fused_loss and not lora else 0
    return full + head, ckpt + head


def _buffers(job: MemoryJob, params_here: float, b: int) -> float:
    """GPU buffers besides the model states: ZeRO's gradient buckets (torch.empty of reduce_bucket_size elements,
    two with overlap_comm; with offload also a staging buffer), the parameters ZeRO-3 keeps gathered, and QLoRA's
    dequantized weight of one projection. None of them depends on sequence parallel."""
    if job.accelerator != "cuda":
        return 0.0  # untouched pages of a CPU torch.empty cost no memory
    bucket = job.reduce_bucket_mb * 1024**2 * b
    out = 0.0
    if job.zero_stage in (1, 2):
        out += bucket * (2 if job.overlap_comm else 1)
        if job.offload_optimizer:  # temp_grad_buffer_for_gpu_offload: the largest parameter, staged for the copy out
            arch = job.arch
            out += max(vocab_rows(arch) * arch.hidden_size, arch.hidden_size * arch.intermediate_size) * b
    if job.zero_stage == 3:
        out += bucket + min(STAGE3_MAX_LIVE_PARAMS, params_here) * b
    if job.method == "qlora":
        out += job.arch.hidden_size * job.arch.intermediate_size * b
    return out


def _gb(nbytes: float) -> float:
    return round(nbytes / GIB, 3)
