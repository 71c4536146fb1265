"""DeepSpeed's tiled MLP (from the ALST work) on a decoder's MLP blocks: for long sequences.

A Llama MLP's forward keeps three [tokens x intermediate] tensors for its backward (gate, up and their product),
about 3 x 3.5 = 10x the hidden state of its input. TiledMLP runs the MLP over slices of the sequence without keeping
them, and recomputes each slice in the backward: the MLP's activation peak becomes one slice's, for a second MLP
forward. Whether it applies is the plan's decision (plan/memory.py: tiled_mlp_applies); this module only patches.
"""
from __future__ import annotations

import math
from typing import Any

import torch

MLP_PARTS = ("gate_proj", "up_proj", "down_proj")


def apply_tiled_mlp(model: torch.nn.Module) -> int:
    """Give every gated MLP block (gate/up/down projections: Llama, Qwen2, Mistral, liger's SwiGLU) a tiled forward;
    returns how many were patched. Each block is cut into ceil(tokens / hidden size) slices, as DeepSpeed's example
    does: a slice's intermediate tensors are then about 3.5x one hidden state of the whole sequence."""
    patched = 0
    for module in model.modules():
        if all(isinstance(getattr(module, name, None), torch.nn.Module) for name in MLP_PARTS):
            module.forward = _tiled(module, module.forward)
            patched += 1
    return patched


def _tiled(module: torch.nn.Module, forward: Any) -> Any:
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    def mlp(_self: Any, x: torch.Tensor) -> torch.Tensor:
        return forward(x)

    def tiled_forward(x: torch.Tensor) -> torch.Tensor:
        shards = math.ceil(x.shape[-2] / x.shape[-1])
        if shards <= 1 or not torch.is_grad_enabled():
            return forward(x)
        trained = [p for p in module.parameters() if p.requires_grad]
        return TiledMLP.apply(mlp, module, x, shards, trained)

    return tiled_forward
