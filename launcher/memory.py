"""Per-GPU memory estimate for a plan, from the model's shape alone (no weights are loaded).

Bytes per parameter follow mixed-precision training as DeepSpeed does it: 16-bit weights and gradients, fp32
master weights and two Adam moments (12 bytes) in the optimizer, each sharded by the ZeRO stage over dp ranks.
Activations follow Korthikanti et al. (2022) for a decoder layer, plus the logits of the loss.
"""
from __future__ import annotations

from dataclasses import dataclass

from launcher.config import ArchConfig

GIB = 1024**3
RUNTIME_OVERHEAD_GB = 1.5  # CUDA context, allocator fragmentation, NCCL buffers


@dataclass(frozen=True)
class MemoryEstimate:
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


def count_params(arch: ArchConfig, vocab_size: int = 0) -> int:
    """Parameters of a Llama-style decoder (GQA attention, SwiGLU MLP, RMSNorm)."""
    h, i, layers = arch.hidden_size, arch.intermediate_size, arch.num_layers
    head_dim = h // arch.num_heads
    kv = arch.num_kv_heads * head_dim
    vocab = vocab_size or arch.vocab_size or 512
    attn = h * h + 2 * h * kv + h * h
    mlp = 3 * h * i
    per_layer = attn + mlp + 2 * h
    embed = vocab * h
    head = 0 if arch.tie_word_embeddings else vocab * h
    return embed + layers * per_layer + h + head


def lora_params(arch: ArchConfig, r: int) -> int:
    """LoRA on all attention and MLP projections: r x (in + out) per adapted matrix."""
    h, i = arch.hidden_size, arch.intermediate_size
    kv = arch.num_kv_heads * (h // arch.num_heads)
    per_layer = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    return arch.num_layers * per_layer


def activation_bytes(arch: ArchConfig, micro: int, seq: int, bytes_per: int, checkpointing: bool, tp: int,
                     pp: int = 1, in_flight: int = 1) -> float:
    """A pipeline stage holds its share of the layers for up to `in_flight` micro batches (1F1B keeps at most pp
    in flight on the first stage)."""
    h, heads = arch.hidden_size, arch.num_heads
    layers = -(-arch.num_layers // pp)
    vocab = arch.vocab_size or 512
    per_layer = seq * micro * h * (34 + 5 * heads * seq / h) * bytes_per / 2 / tp  # sdpa drops the s^2 term mostly
    per_layer_sdpa = seq * micro * (h * 34 + 4 * arch.intermediate_size) * bytes_per / 2 / tp
    layer = min(per_layer, per_layer_sdpa)
    body = (2 * seq * micro * h * bytes_per * layers + layer) if checkpointing else layer * layers
    logits = micro * seq * vocab * 4 * 2  # fp32 logits and their gradient
    return body * in_flight + logits


def estimate(
    arch: ArchConfig,
    method: str,
    zero_stage: int,
    dp: int,
    tp: int,
    pp: int,
    micro_batch_size: int,
    grad_accum: int,
    seq_len: int,
    precision: str,
    gradient_checkpointing: bool,
    offload_optimizer: bool,
    offload_params: bool,
    lora_r: int,
    capacity_gb: float,
    unified_memory: bool,
    procs_per_host: int,
) -> MemoryEstimate:
    n = count_params(arch)
    trainable = lora_params(arch, lora_r) if method in ("lora", "qlora") else n
    wbytes = 4 if precision == "fp32" else 2
    base_bytes = 0.55 if method == "qlora" else wbytes  # nf4 + double-quant constants
    embed_share = arch.hidden_size * (arch.vocab_size or 512) / n
    shard_mp = pp / ((1 - embed_share) / tp + embed_share)  # AutoTP keeps the embedding whole on every rank
    frozen = n - trainable if method != "full" else 0
    params = (frozen * base_bytes + trainable * wbytes) / shard_mp
    grads = trainable * wbytes / shard_mp
    optim = trainable * (12 if precision != "fp32" else 8) / shard_mp
    if zero_stage >= 1:
        optim /= dp
    if zero_stage >= 2:
        grads /= dp
    if zero_stage >= 3:
        params /= dp
    cpu = 0.0
    if offload_optimizer:
        cpu += optim
        optim = 0.0
    if offload_params:
        cpu += params
        params = params * 0.1  # the layers being computed are fetched back
    act = activation_bytes(arch, micro_batch_size, seq_len, wbytes, gradient_checkpointing, tp, pp, min(pp, grad_accum))
    gpu = (params + grads + optim + act) / GIB + RUNTIME_OVERHEAD_GB
    cpu_gb = cpu / GIB
    need = gpu + (cpu_gb if unified_memory else 0.0)  # on GB10 offloaded state draws from the same pool
    fits = capacity_gb <= 0 or need <= capacity_gb
    return MemoryEstimate(
        params=n,
        trainable_params=trainable,
        params_gb=round(params / GIB, 3),
        grads_gb=round(grads / GIB, 3),
        optimizer_gb=round(optim / GIB, 3),
        activations_gb=round(act / GIB, 3),
        overhead_gb=RUNTIME_OVERHEAD_GB,
        total_gb=round(gpu, 3),
        cpu_offload_gb=round(cpu_gb, 3),
        capacity_gb=round(capacity_gb, 3),
        fits=fits,
    )
