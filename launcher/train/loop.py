"""The training loop: for each global step, accumulate micro batches, step the engine, log, maybe save.

The loss of a step is the mean over every label token of the whole global batch (not a mean of micro-batch means),
so the same job gives the same optimization on any number of ranks.
"""
from __future__ import annotations

import gc
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from launcher.plan.types import Plan
from launcher.train.batching import batch_tokens, rank_micro_batches, step_target_tokens
from launcher.train.fp8 import pad_multiple
from launcher.train.failures import injected_nonfinite_step, nonfinite_error
from launcher.train.metrics import StepMetrics
from launcher.train.parallel import replicated_grad_norm
from launcher.train.sequence_parallel import loss_factor

FULL_GC_EVERY = 20  # train.gc_interval collections
FAULT_NONFINITE_STEP = injected_nonfinite_step(dict(os.environ))


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    dp_rank: int
    dp_size: int
    device: torch.device
    reports: bool = True  # loss and tokens enter the step totals: one rank per data-parallel replica (tp/pp)
    sp_rank: int = 0  # sequence parallel: which slice of each micro batch's tokens this rank holds
    sp: int = 1

    def shard(self, batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
        """This rank's part of a collated micro batch: all of it, or under sequence parallel its slice of tokens."""
        if self.sp == 1:
            return batch
        from launcher.train.sequence_parallel import slice_batch

        return slice_batch(batch, self.sp_rank, self.sp, pad_id)

    @property
    def counts_tokens(self) -> bool:
        """Every rank of a sequence-parallel group reports its slice's loss; the group's tokens are counted once."""
        return self.sp_rank == 0


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
    evaluate_at: Callable[[int], None] = lambda step: None,
) -> int:
    """Run from start_step to plan.max_steps; returns the last completed global step. evaluate_at(step) runs after
    every step on every rank (it decides whether the validation set is due), before the step's save."""
    step = start_step
    step_fn = train_step
    if plan.pp > 1:
        from launcher.train.pipeline import train_step as step_fn  # engine.train_batch over the pipeline
    with step_aligned_gc(plan.train.gc_interval) as collect:
        while step < plan.max_steps:
            t0 = time.perf_counter()
            lr = float(engine.get_lr()[0])
            loss_sum, tokens, grad_norm = step_fn(engine, examples, plan, info, pad_id, step)
            step += 1
            collect(step)  # while the GPU finishes the step, before the sync below
            with phase("step sync"):
                loss_total, tokens_total, stops = step_totals(loss_sum, tokens, stop_requested(), info)
            elapsed = time.perf_counter() - t0
            metrics = StepMetrics(
                step=step,
                loss=loss_total / (info.dp_size * plan.grad_accum * loss_factor(plan)),
                lr=lr,
                grad_norm=float(grad_norm) if grad_norm is not None else None,
                tokens=int(tokens_total),
                tokens_per_s=tokens_total / elapsed,
                step_time_s=elapsed,
                time=time.time(),
            )
            on_step(metrics)
            diverged = nonfinite_error(plan, step, metrics.loss, metrics.grad_norm)
            if diverged and plan.train.nonfinite == "stop":
                raise diverged
            preempted = stops > 0
            if not preempted:  # a stop request wants the save now; the resumed run scores its next due step
                evaluate_at(step)
            if should_save(step) or step == plan.max_steps or preempted:
                save(step)
            if preempted:
                break
    return step


@contextmanager
def step_aligned_gc(interval: int) -> Iterator[Callable[[int], None]]:
    """train.gc_interval=N: Python's automatic collector is off while training and a young-generation collection
    runs after every N-th global step instead, on every rank at the same step. An automatic collection starts on
    whichever rank crosses its allocation threshold, and the other ranks then wait for it in the next collective
    (torchtitan and OLMo-core train the same way). Every FULL_GC_EVERY-th of them is a full collection (~0.2 s),
    so that cycles which outlived a young collection are not kept for the whole run. 0 leaves Python's collector
    as it is."""
    if interval <= 0 or not gc.isenabled():
        yield lambda step: None
        return

    def collect(step: int) -> None:
        if step % interval == 0:
            gc.collect(2 if step % (FULL_GC_EVERY * interval) == 0 else 1)

    gc.disable()
    try:
        yield collect
    finally:
        gc.enable()


def step_totals(loss_sum: torch.Tensor | float, tokens: int, stop: bool, info: RankInfo) -> list[float]:
    """Summed loss and tokens of every reporting rank, and how many ranks were asked to stop: one all-reduce, and the
    step's only host sync (the loss stays on the GPU until here)."""
    loss = torch.as_tensor(loss_sum if info.reports else 0.0, dtype=torch.float64, device=info.device).reshape(1)
    counts = torch.tensor([float(tokens if info.reports else 0), float(stop)], dtype=torch.float64)
    totals = torch.cat([loss, to_device(counts, info.device)])  # NCCL reduces only GPU tensors
    dist.all_reduce(totals)
    return totals.tolist()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pinned and asynchronous on CUDA: a copy from pageable memory first waits for all queued GPU work."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def train_step(engine: Any, examples: Sequence[Any], plan: Plan, info: RankInfo, pad_id: int, step: int
               ) -> tuple[torch.Tensor, int, Any]:
    """One optimizer step over grad_accum micro batches: this rank's summed scaled loss (on the device), tokens,
    and the grad norm (a float or a device tensor; read after the step's sync)."""
    t, g = plan.train, plan.global_batch_size
    targets = step_target_tokens(examples, t.seed, g, step)
    per_micro = to_device(torch.tensor(max(targets, 1) / (info.dp_size * plan.grad_accum * loss_factor(plan))),
                          info.device)
    loss_sum, tokens, grad_norm = torch.zeros((), dtype=torch.float64, device=info.device), 0, None
    batches = rank_micro_batches(examples, t.seed, g, plan.micro_batch_size, plan.grad_accum, info.dp_rank,
                                 info.dp_size, step, pad_id, pad_multiple(plan))
    for micro, batch in enumerate(batches):
        with phase("batch"):
            tokens += batch_tokens(batch) if info.counts_tokens else 0
            batch = {k: to_device(v, info.device) for k, v in info.shard(batch, pad_id).items()}
        with phase("forward"):
            out = engine(**batch, num_items_in_batch=per_micro, use_cache=False)
        with phase("backward"):
            engine.backward(out.loss * float("nan") if step + 1 == FAULT_NONFINITE_STEP else out.loss)
        with phase("optimizer step"):
            if micro == plan.grad_accum - 1 and plan.zero_stage == 0:
                grad_norm = replicated_grad_norm(engine, plan.tp)
            engine.step()
            loss_sum += out.loss.detach().double()
    if plan.zero_stage > 0:
        grad_norm = engine.get_global_grad_norm()
    return loss_sum, tokens, grad_norm


def phase(name: str) -> Any:
    """A named range in a train.profile_steps trace ('launcher: forward'), so that a GPU gap can be put down to the
    loop's phase it falls in (bench/host_profile.py does); a few microseconds when nothing is profiled."""
    return torch.profiler.record_function(f"launcher: {name}")
