"""Model-parallel plumbing in a rank: tensor-parallel groups before the engine, data-parallel coordinates after it.

Why: DeepSpeed lays ranks out differently per plan (AutoTP: tensor groups of consecutive ranks; the pipeline grid:
stage-major), so the data-parallel rank that picks a rank's samples must come from the engine's groups, never from
arithmetic on the global rank. Ranks of one tensor group get the same samples and report one loss between them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist

from launcher.plan.types import Plan


def initialize_kwargs(plan: Plan, model: Any) -> dict[str, Any]:
    """Extra deepspeed.initialize arguments for a plan. Under AutoTP the (data x tensor) groups are made first and
    passed as mpu: without one DeepSpeed checks train_batch_size against the whole world size, not the dp size.
    Under sequence parallel the mpu is the one Ulysses' registration with transformers returns."""
    if plan.sp > 1:
        from launcher.train.sequence_parallel import register

        return {"mpu": register(model, plan)}
    if plan.tp == 1:
        return {}
    from deepspeed.utils import groups

    groups._init_tp_mesh_device(tensor_model_parallel_size=plan.tp)
    return {"mpu": groups}


@dataclasses.dataclass(frozen=True)
class ParallelCoords:
    dp_rank: int
    dp_size: int
    reports: bool  # this rank's loss and tokens enter the step totals: one rank per data-parallel replica


def coords(engine: Any, plan: Plan) -> ParallelCoords:
    """Data-parallel rank and size as the engine's process groups define them, checked against the plan."""
    if plan.pp > 1:
        grid = engine.grid
        c = ParallelCoords(grid.get_data_parallel_rank(), grid.get_data_parallel_world_size(), engine.is_last_stage())
    elif plan.tp > 1:
        from deepspeed.utils import groups

        c = ParallelCoords(groups.get_data_parallel_rank(), groups.get_data_parallel_world_size(),
                           groups.get_tensor_model_parallel_rank() == 0)
    elif plan.sp > 1:  # DeepSpeed's sequence-parallel groups are consecutive ranks (parallel_state_sp.py)
        c = ParallelCoords(dist.get_rank() // plan.sp, dist.get_world_size() // plan.sp, True)
    else:
        c = ParallelCoords(dist.get_rank(), dist.get_world_size(), True)
    if c.dp_size != plan.dp:
        raise RuntimeError(f"the engine has {c.dp_size} data-parallel ranks, the plan {plan.dp}")
    return c


def with_engine_coords(info: Any, engine: Any, plan: Plan) -> Any:
    """RankInfo (launcher.train.loop) with the data-parallel coordinates of the engine's groups."""
    c = coords(engine, plan)
    return dataclasses.replace(info, dp_rank=c.dp_rank, dp_size=c.dp_size, reports=c.reports)


def replicated_grad_norm(engine: Any, tp: int) -> float:
    """The global gradient norm without ZeRO (DeepSpeed keeps none): under AutoTP, shards marked
    `tensor_model_parallel` count on every tensor rank and replicated weights on tensor rank 0 only, as DeepSpeed's
    own clip_grad_norm_ does."""
    from deepspeed.runtime.utils import is_model_parallel_parameter

    grads = [(p.grad, is_model_parallel_parameter(p)) for p in engine.module.parameters() if p.grad is not None]
    if tp == 1:
        return float(torch.nn.utils.get_total_norm([g for g, _ in grads])) if grads else 0.0
    from deepspeed.utils import groups

    first = groups.get_tensor_model_parallel_rank() == 0
    total = torch.zeros((), dtype=torch.float64, device=grads[0][0].device if grads else "cpu")
    for g, sharded in grads:
        if sharded or first:
            total += g.detach().double().pow(2).sum()
    dist.all_reduce(total, group=groups.get_tensor_model_parallel_group())
    return float(total.sqrt())


def full_logits(engine: Any, logits: torch.Tensor) -> torch.Tensor:
    """Logits over the whole vocabulary. AutoTP keeps a tied LM head vocab-parallel (each tensor rank computes its
    contiguous slice of the vocabulary), so gather the slices in tensor-rank order; every rank must call this."""
    vocab = engine.module.config.vocab_size
    if engine.autotp_size() <= 1 or logits.shape[-1] == vocab:
        return logits
    from deepspeed.utils import groups

    parts: list[Any] = [None] * groups.get_tensor_model_parallel_world_size()
    dist.all_gather_object(parts, logits.cpu(), group=groups.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)[..., :vocab].to(logits.device)
