"""Two passes of DeepSpeed's ZeRO-1/2 optimizer step that cost a bf16 run time and buy it nothing, removed on the
engine the worker built (issue 27; the micro-4 profile in bench/results/perf.md, 2026-12-07 11:55 UTC: ~13 ms of a
145 ms step of the 1.14B model on one H100):

- The gradient norm. DeepSpeed 0.19 copies every gradient to float64 before taking its norm (8 bytes written per
  parameter, one reduction launched per tensor). Here one `torch._foreach_norm` over the gradients accumulates in
  float32 and writes nothing, which is what torch's own clip_grad_norm_ does.
- The clip. DeepSpeed multiplies the fp32 gradient partition by 1/scale in a pass of its own, after a host sync on the
  norm. torch's fused AdamW divides by the same scale (`grad_scale`, the hook torch's GradScaler uses) inside its one
  pass over the optimizer states, and the scale stays on the GPU.

Everything else in the step stays DeepSpeed's: the partitions, the collectives (the norm is all-reduced over the same
groups), the master weights, the overflow rules, the -1 sentinel for a non-finite norm. Only DeepSpeed's
DeepSpeedZeroOptimizer is patched, one instance at a time; an engine whose helpers are not where this module read them
is left as it is, and the worker says so in its log.
"""
from __future__ import annotations

import logging
import math
import types
from typing import Any

import torch

log = logging.getLogger(__name__)


def speed_up_zero_step(engine: Any) -> list[str]:
    """Patch the engine's ZeRO-1/2 optimizer where that is safe; logs and returns what was changed."""
    try:
        from deepspeed.runtime.zero import stage_1_and_2 as zero
    except ImportError:
        return []
    opt = getattr(engine, "optimizer", None)
    if type(opt) is not zero.DeepSpeedZeroOptimizer or getattr(opt, "cpu_offload", True):
        return []
    needed = ("dist", "is_model_parallel_parameter", "mask_nan_or_inf_with_val_inplace", "PIPE_REPLICATED")
    if not all(hasattr(zero, name) for name in needed) or not hasattr(opt, "_model_parallel_all_reduce"):
        log.info("the ZeRO optimizer's gradient norm and clip stay DeepSpeed's: its helpers moved in this version")
        return []
    done = []
    opt.get_grad_norm_direct = types.MethodType(_grad_norm_fp32(zero, type(opt).get_grad_norm_direct), opt)
    done.append("gradient norm in one float32 pass")
    if _fused_adam(opt.optimizer) and not getattr(opt, "torch_autocast_gradscaler", None):
        opt.unscale_and_clip_grads = types.MethodType(_clip_inside_adam, opt)
        opt._optimizer_step = types.MethodType(_step_forgetting_scale(type(opt)._optimizer_step), opt)
        done.append("clip inside fused AdamW")
    log.info("ZeRO optimizer step: " + ", ".join(done))
    return done


def _fused_adam(optimizer: Any) -> bool:
    """torch's Adam or AdamW built with fused=True: the kernels that take `grad_scale`."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and bool(optimizer.defaults.get("fused"))


def _grad_norm_fp32(zero: Any, original: Any) -> Any:
    """DeepSpeedZeroOptimizer.get_grad_norm_direct for the 2-norm, with the same selection of gradients (no ZeRO
    padding, no pipeline-replicated copy, model-parallel shards on every rank, replicated weights on model-parallel
    rank 0) and the same reductions over the data- and model-parallel groups."""

    def get_grad_norm_direct(self: Any, gradients: list, params: list, norm_type: float = 2) -> torch.Tensor:
        if float(norm_type) != 2.0:
            return original(self, gradients, params, norm_type)
        kept = []
        unpadded = (g for g in gradients if not getattr(g, "_zero_padding", False))
        for g, p in zip(unpadded, params):
            if hasattr(p, zero.PIPE_REPLICATED) and p.ds_pipe_replicated:
                continue
            if zero.is_model_parallel_parameter(p) or self.model_parallel_rank == 0:
                kept.append(g.detach())
        if kept:
            norms = torch._foreach_norm(kept, 2.0, dtype=torch.float32)
            total = torch.stack(norms).square().sum()
        else:
            total = torch.zeros((), dtype=torch.float32, device=self.device)
        zero.dist.all_reduce(total, op=zero.dist.ReduceOp.SUM, group=self.dp_process_group)
        self._model_parallel_all_reduce(tensor=total, op=zero.dist.ReduceOp.SUM)
        total = total.sqrt()
        zero.mask_nan_or_inf_with_val_inplace(total, device=self.device)
        return total

    return get_grad_norm_direct


def _clip_inside_adam(self: Any, grad_groups_flat: list, total_norm: Any) -> None:
    """DeepSpeedZeroOptimizer.unscale_and_clip_grads's scale (loss scale times the clip factor, an invalid norm
    clipping to zero), handed to the fused optimizer instead of applied in a pass of its own; no host sync."""
    if self.clip_grad == 0.0 and self.loss_scale == 1.0:
        return
    scale = torch.full((1,), float(self.loss_scale), dtype=torch.float32, device=grad_groups_flat[0].device)
    if self.clip_grad > 0.0:
        norm = torch.as_tensor(total_norm, dtype=torch.float32, device=scale.device).reshape(1)
        norm = torch.where(torch.isfinite(norm) & (norm >= 0), norm, torch.full_like(norm, math.inf))
        clip = ((norm / self.loss_scale) + 1e-6) / self.clip_grad
        scale = torch.clamp(clip, min=1.0) * self.loss_scale
    self.optimizer.grad_scale = scale


def _step_forgetting_scale(original: Any) -> Any:
    """The optimizer step, then the scale dropped, so no later step() (a checkpoint load's) divides by it."""

    def _optimizer_step(self: Any, group_no: int) -> None:
        try:
            original(self, group_no)
        finally:
            self.optimizer.__dict__.pop("grad_scale", None)

    return _optimizer_step
