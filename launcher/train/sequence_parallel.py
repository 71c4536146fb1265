"""Ulysses sequence parallelism (DeepSpeed's ALST) in a rank: each micro batch is shared by the sp consecutive ranks
of a sequence-parallel group, and each holds 1/sp of its tokens.

DeepSpeed swaps the sequence split for a head split around attention (UlyssesSPAttentionHF, registered with
transformers in place of the model's attention function) and returns the `mpu` that deepspeed.initialize needs. The
data side is the launcher's own: its sampler picks the micro batch by the data-parallel rank (rank // sp), and here
the whole row gets its shifted labels and position ids before the sequence is padded to a multiple of sp and sliced.
DeepSpeed's UlyssesSPDataLoaderAdapter is not used: it hands one rank's sample to the whole group and all-gathers
every tensor.

The loss: each rank's forward returns the summed token loss of its slice over the step's per-micro normaliser, so
the slices of a group add up to the whole row's loss. DeepSpeed 0.19.8 sums gradients over the sp group under ZeRO
0/1/2 (it divides by world / sp), but ZeRO-3's reduce-scatter divides by the whole world: there the loss is scaled
by sp (loss_factor), as transformers' own integration does for DeepSpeed below 0.20.2, and the reported loss is
divided by it again.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from launcher.data.formats import IGNORE_INDEX
from launcher.plan.types import Plan


def register(model: Any, plan: Plan) -> Any:
    """Put DeepSpeed's Ulysses attention in place of the model's attention function (process-wide) and make the
    sequence-parallel groups; returns the mpu for deepspeed.initialize."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    return UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model, core_attn_implementation=plan.model.attn_implementation,
        sequence_parallel_size=plan.sp, micro_batch_size=plan.micro_batch_size, seq_length=plan.train.seq_len,
        seq_length_is_variable=True,
    )


def loss_factor(plan: Plan) -> int:
    """What the loss is multiplied by so DeepSpeed's gradient reduction gives the gradient of the job without sp."""
    return plan.sp if plan.sp > 1 and plan.zero_stage == 3 else 1


def slice_batch(batch: dict[str, torch.Tensor], sp_rank: int, sp: int, pad_id: int) -> dict[str, torch.Tensor]:
    """This rank's slice of a collated micro batch: input ids, position ids and the labels already shifted on the
    whole row (`shift_labels`, which transformers' loss takes as they are), the width padded to a multiple of sp with
    ignored tokens. No attention mask: Ulysses drops it, and right padding under a causal mask never reaches a real
    token. Packed rows keep their restarting position ids (only flash attention keeps packed examples apart)."""
    ids, labels = batch["input_ids"], batch["labels"]
    rows, width = ids.shape
    padded = math.ceil(width / sp) * sp
    extra = padded - width
    ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, extra + 1), value=IGNORE_INDEX)
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(padded).expand(rows, padded)
    else:  # the padding continues the last document's positions, as collate does for the packed tail
        tail = positions[:, -1:] + torch.arange(1, extra + 1)
        positions = torch.cat([positions, tail], dim=1)
    chunk = padded // sp
    part = slice(sp_rank * chunk, (sp_rank + 1) * chunk)
    shift = shifted[:, part].contiguous()
    return {"input_ids": ids[:, part].contiguous(), "position_ids": positions[:, part].contiguous(),
            "labels": shift, "shift_labels": shift}


def probe_logits(engine: Any, ids: torch.Tensor, plan: Plan, device: torch.device) -> torch.Tensor:
    """Logits of one prompt (1 x n ids) through the sequence-parallel model, every rank calling: the prompt fills a
    micro batch (Ulysses is registered for that batch size), each rank computes its slice of positions, and the
    group's slices are gathered back into the whole sequence."""
    import torch.distributed as dist
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    rows = ids.expand(plan.micro_batch_size, -1)
    rank = parallel_state_sp.get_sequence_parallel_rank()
    batch = slice_batch({"input_ids": rows, "labels": rows}, rank, plan.sp, pad_id=0)
    was_training = engine.module.training
    engine.module.eval()
    with torch.no_grad():
        logits = engine.module(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                               use_cache=False).logits.float()
    engine.module.train(was_training)
    parts = [torch.empty_like(logits) for _ in range(plan.sp)]
    dist.all_gather(parts, logits.contiguous(), group=parallel_state_sp.get_sequence_parallel_group())
    return torch.cat(parts, dim=1)[:1, : ids.shape[1]].cpu()
