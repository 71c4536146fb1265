"""Saved activations per GPU, counted tensor by tensor for a Hugging Face Llama-style decoder layer with sdpa
attention (no s^2 term), and the few shape facts the memory estimate shares with them. Pure; plan/memory.py adds
them to the model states.

Ulysses sequence parallel (plan.sp, DeepSpeed's UlyssesSPAttentionHF) splits each row over sp ranks: the embedding,
norms, projections, MLP, checkpointed layer inputs and the loss see ceil(seq_len / sp) tokens per rank (the worker
pads the row to a multiple of sp). Inside attention an all-to-all gives each rank the whole sequence for heads / sp
of the heads: q, k, v and the sdpa output then hold [seq, heads / sp] per rank, the same element count as
[seq / sp, heads], so they too count per local token, except k and v when sp exceeds the kv heads (DeepSpeed repeats
each kv head sp / kv_heads times). What sp adds is transient: the all-to-alls' send and receive buffers while the
local q, k, v are still referenced (`exchange_bytes`). The position ids all-gathered in every attention call are
[micro, seq] integers, negligible; weights, gradients, optimizer states and the optimizer step do not depend on sp.
"""
from __future__ import annotations

import math

from launcher.config.schema import ArchConfig


def kv_width(arch: ArchConfig) -> int:
    """Elements per token of k (or v): the kv heads times the head size (GQA)."""
    return arch.num_kv_heads * (arch.hidden_size // arch.num_heads)


def vocab_rows(arch: ArchConfig) -> int:
    return arch.vocab_size or 512  # 0: the shipped tokenizer's size


def local_tokens(seq: int, sp: int) -> int:
    """Tokens of one row a rank holds under sequence parallel: the row is padded to a multiple of sp, then sliced."""
    return math.ceil(seq / sp)


def _kv_held(arch: ArchConfig, sp: int) -> float:
    """k (or v) elements per local token after Ulysses' all-to-all: kv / sp heads of the whole sequence, or one whole
    kv head when sp > kv heads (repeated, so each rank gets a copy)."""
    return kv_width(arch) * max(1.0, sp / arch.num_kv_heads)


def exchange_bytes(arch: ArchConfig, bytes_per: int, sp: int) -> float:
    """Transient bytes per local token of Ulysses' all-to-alls, on top of what attention saves: the local q, k, v
    (still referenced while they are exchanged) and the send (a contiguous copy) and receive buffer of the largest
    exchange (q; the backward pass swaps the same sizes of gradients back). 0 without sp."""
    if sp == 1:
        return 0.0
    h, kv = arch.hidden_size, _kv_held(arch, sp)
    return bytes_per * (h + 2 * kv + 2 * max(h, kv))


def _mlp_bytes(arch: ArchConfig, b: int, tp: int, liger: bool) -> float:
    """The MLP's saved bytes per token: gate, silu(gate) (not with liger, which recomputes it), up and their product."""
    return (3 if liger else 4) * b * arch.intermediate_size / tp


def _layer_bytes(arch: ArchConfig, b: int, norm: float, tp: int, sp: int, liger: bool, tiled: bool) -> float:
    """Saved bytes per (local) token of one decoder layer: two RMSNorms, attention's rotated q and k, v, the sdpa
    output and o_proj's input, and the MLP's tensors (none under DeepSpeed's tiled MLP, which keeps only its input,
    the second norm's output counted already, and recomputes a slice at a time in the backward pass)."""
    attention = b * (3 * arch.hidden_size + 2 * _kv_held(arch, sp)) / tp
    return 2 * norm + attention + (0.0 if tiled else _mlp_bytes(arch, b, tp, liger))


def tiled_slice_bytes(arch: ArchConfig, micro: int, tokens: int, b: int, tp: int, liger: bool) -> float:
    """What a tiled MLP holds at once: one slice of ceil(tokens / hidden) slices (about hidden-size tokens of each
    row), its tensors and their gradients while the backward pass recomputes it."""
    per_slice = math.ceil(tokens / math.ceil(tokens / arch.hidden_size))
    return 2 * micro * per_slice * _mlp_bytes(arch, b, tp, liger)


def activation_bytes(arch: ArchConfig, micro: int, seq: int, bytes_per: int, checkpointing: bool, tp: int = 1,
                     pp: int = 1, in_flight: int = 1, liger: bool = False, fused_loss: bool = False,
                     sp: int = 1, tiled_mlp: bool = False) -> float:
    """Saved activations at the start of the backward pass, per GPU.

    Per token and layer: each RMSNorm keeps an fp32 copy of its input (liger: the 16-bit input) and the normalized
    output, plus the layer's attention and MLP tensors (`_layer_bytes`). The loss keeps the 16-bit logits, fp32
    log-probabilities and, at the start of the backward pass, two fp32 gradients of them; liger's fused loss keeps
    only the gradient of its input and a chunk of logits. With checkpointing each layer keeps only its input and the
    backward pass recomputes one layer at a time (counted twice: its activations and their gradients). A pipeline
    stage holds its layers for up to `in_flight` micro batches (1F1B keeps at most pp in flight on the first stage).
    Under sequence parallel every term counts the rank's seq / sp tokens, and one layer's work adds the all-to-all
    buffers (module docstring). A tiled MLP keeps none of the MLP's tensors and adds one slice's while it runs.
    """
    h, b = arch.hidden_size, bytes_per
    norm = 2 * b * h if liger else (4 + b) * h
    layer = _layer_bytes(arch, b, norm, tp, sp, liger, tiled_mlp)
    layers = -(-arch.num_layers // pp)
    logits = (b + 8) * h if fused_loss else (b + 12) * vocab_rows(arch)
    exchange = exchange_bytes(arch, b, sp)
    stack, work = (layers * b * h, 2 * layer + exchange) if checkpointing else (layers * layer, exchange)
    tokens = micro * local_tokens(seq, sp)
    tiled = tiled_slice_bytes(arch, micro, local_tokens(seq, sp), b, tp, liger) if tiled_mlp else 0.0
    last = tokens * (stack + norm) + max(tokens * logits, tokens * work + tiled)
    first = tokens * (stack * in_flight + work) + tiled if pp > 1 else last
    return max(first, last)
