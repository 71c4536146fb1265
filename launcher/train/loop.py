"""The training loop: for each global step, accumulate micro batches, step the engine, log, maybe save.

The loss of a step is the mean over every label token of the whole global batch (not a mean of micro-batch means),
so the same job gives the same optimization on any number of ranks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from launcher.plan import Plan
from launcher.train.batching import collate, global_batch_target_tokens, micro_batch_indices, sample_stream_indices
from launcher.train.metrics import StepMetrics
from launcher.train.parallel import replicated_grad_norm


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    dp_rank: int
    dp_size: int
    device: torch.device
    reports: bool = True  # loss and tokens enter the step totals: one rank per data-parallel replica (tp/pp)


def train(
    engine: Any,
    examples: Sequence[Any],
    plan: Plan,
    info: RankInfo,
    pad_id: int,
    start_step: int,
    on_step: Callable[[StepMetrics], None],
    should_save: Callable[[int], bool],
    save: Callable[[int], None],
    stop_requested: Callable[[], bool],
) -> int:
    """Run from start_step to plan.max_steps; returns the last completed global step."""
    step = start_step
    step_fn = train_step
    if plan.pp > 1:
        from launcher.train.pipeline import train_step as step_fn  # engine.train_batch over the pipeline
    while step < plan.max_steps:
        t0 = time.perf_counter()
        lr = float(engine.get_lr()[0])
        loss_sum, tokens, grad_norm = step_fn(engine, examples, plan, info, pad_id, step)
        step += 1
        if not info.reports:
            loss_sum, tokens = 0.0, 0
        totals = torch.tensor([loss_sum, float(tokens), float(stop_requested())], dtype=torch.float64,
                              device=info.device)  # NCCL reduces only GPU tensors
        dist.all_reduce(totals)
        elapsed = time.perf_counter() - t0
        on_step(
            StepMetrics(
                step=step,
                loss=totals[0].item() / (info.dp_size * plan.grad_accum),
                lr=lr,
                grad_norm=grad_norm,
                tokens=int(totals[1].item()),
                tokens_per_s=totals[1].item() / elapsed,
                step_time_s=elapsed,
                time=time.time(),
            )
        )
        preempted = totals[2].item() > 0
        if should_save(step) or step == plan.max_steps or preempted:
            save(step)
        if preempted:
            break
    return step


def train_step(engine: Any, examples: Sequence[Any], plan: Plan, info: RankInfo, pad_id: int, step: int
               ) -> tuple[float, int, float | None]:
    """One optimizer step over grad_accum micro batches: this rank's summed scaled loss, tokens, and grad norm."""
    n, seed, g = len(examples), plan.train.seed, plan.global_batch_size
    targets = global_batch_target_tokens(examples, sample_stream_indices(n, seed, step * g, g))
    per_micro = max(targets, 1) / (info.dp_size * plan.grad_accum)
    loss_sum, tokens, grad_norm = 0.0, 0, None
    for micro in range(plan.grad_accum):
        idx = micro_batch_indices(n, seed, step, g, plan.micro_batch_size, plan.grad_accum, info.dp_rank,
                                  info.dp_size, micro)
        batch = {k: v.to(info.device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        out = engine(**batch, num_items_in_batch=torch.tensor(per_micro, device=info.device), use_cache=False)
        engine.backward(out.loss)
        if micro == plan.grad_accum - 1 and plan.zero_stage == 0:
            grad_norm = replicated_grad_norm(engine, plan.tp)
        engine.step()
        loss_sum += out.loss.detach().float().item()
        tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    if plan.zero_stage > 0:
        grad_norm = engine.get_global_grad_norm()
    return loss_sum, tokens, float(grad_norm) if grad_norm is not None else None
