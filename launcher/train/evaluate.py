"""The validation loss: the token-weighted mean of the per-token loss over the whole validation set.

Every data-parallel rank scores rows dp_rank, dp_rank + dp, ... in micro batches of train.micro_batch_size; each
forward returns its summed token loss (num_items_in_batch=1), and one all-reduce adds the sums and the label token
counts of one rank per data-parallel replica. The quotient does not depend on how the rows were spread, so it is the
same number on 1, 2 or 4 ranks and under every plan (up to float rounding). Ranks whose share is shorter get rows of
one ignored token, so every rank runs the same forwards (ZeRO-3 and tp need each other's every forward).

Scoring leaves training as it was: no gradient is taken, the module goes back to training mode and the random
number generators are restored, so the training losses are the same with and without evaluation.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from launcher.data.formats import IGNORE_INDEX, Example
from launcher.plan.types import Plan
from launcher.train.batching import collate
from launcher.train.fp8 import pad_multiple
from launcher.train.loop import RankInfo, to_device


def eval_due(step: int, plan: Plan) -> bool:
    """Every train.eval_every global steps, and after the last; never without a validation set."""
    every = plan.train.eval_every
    return plan.has_validation and (step == plan.max_steps or (every > 0 and step % every == 0))


def rank_batches(examples: Sequence[Any], dp_rank: int, dp_size: int, micro: int, pad_id: int
                 ) -> list[list[Any]]:
    """This rank's rows in micro batches; the same number of batches on every rank, filled with ignored rows."""
    batches = math.ceil(math.ceil(len(examples) / dp_size) / micro)
    rows = list(examples[dp_rank::dp_size])
    rows += [Example(input_ids=[pad_id], labels=[IGNORE_INDEX])] * (batches * micro - len(rows))
    return [rows[k * micro:(k + 1) * micro] for k in range(batches)]


def evaluate(engine: Any, examples: Sequence[Any], plan: Plan, info: RankInfo, pad_id: int) -> tuple[float, int]:
    """(eval loss, label tokens it was taken over), identical on every rank."""
    batches = rank_batches(examples, info.dp_rank, info.dp_size, plan.micro_batch_size, pad_id)
    with preserved_rng(info.device):
        if plan.pp > 1:
            from launcher.train.pipeline import eval_loss_sum

            loss_sum = eval_loss_sum(engine, batches, pad_id)
        else:
            loss_sum = _loss_sum(engine, batches, pad_id, info, pad_multiple(plan))
    tokens = sum(row.num_targets for batch in batches for row in batch) if info.counts_tokens else 0
    loss = torch.as_tensor(loss_sum if info.reports else 0.0, dtype=torch.float64, device=info.device).reshape(1)
    count = torch.tensor([float(tokens if info.reports else 0)], dtype=torch.float64)
    totals = torch.cat([loss, to_device(count, info.device)])
    dist.all_reduce(totals)
    total_loss, total_tokens = totals.tolist()
    return total_loss / max(total_tokens, 1.0), int(total_tokens)


def _loss_sum(engine: Any, batches: list[list[Any]], pad_id: int, info: RankInfo, multiple: int = 1) -> torch.Tensor:
    """Summed token loss of this rank's batches (its slices of them under sequence parallel), on the device (read
    once, by the all-reduce)."""
    device = info.device
    was_training = engine.module.training
    engine.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    one = torch.tensor(1.0, device=device)  # num_items_in_batch=1: the forward returns the summed token loss
    try:
        with torch.no_grad():
            for rows in batches:
                batch = info.shard(collate(rows, pad_id, multiple), pad_id)
                out = engine(**{k: to_device(v, device) for k, v in batch.items()}, num_items_in_batch=one,
                             use_cache=False)
                total += out.loss.detach().double()
    finally:
        engine.train(was_training)
    return total


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Whatever the forwards draw (a dropout left on, a kernel's own draw), training's random streams stay put."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
