"""Sequence parallel (+plan=sp): the slice of a micro batch each rank trains on, and the plans refused."""
from __future__ import annotations

import pytest
import torch

from launcher.data.formats import IGNORE_INDEX
from launcher.train.sequence_parallel import slice_batch
from tests.unit.test_plan_parallel import CPU, plan_for, refusal
from launcher.plan.hardware import Hardware

H100x8 = Hardware("cuda", 8, "NVIDIA H100", 79.0, "9.0", True, 64, 512.0, "x86_64")


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 0, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 13, 14, 15], [IGNORE_INDEX, 22, 23, IGNORE_INDEX, IGNORE_INDEX]])
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("sp", [2, 3, 4])
def test_the_slices_of_a_group_are_the_whole_row_shifted_once_and_padded_to_a_multiple_of_sp(sp):
    parts = [slice_batch(batch(), rank, sp, pad_id=0) for rank in range(sp)]
    whole = {key: torch.cat([p[key] for p in parts], dim=1) for key in parts[0]}
    width = whole["input_ids"].shape[1]
    assert width % sp == 0 and width >= 5 and {p["input_ids"].shape[1] for p in parts} == {width // sp}
    assert whole["input_ids"][:, :5].tolist() == batch()["input_ids"].tolist()
    assert whole["input_ids"][:, 5:].eq(0).all()
    # token t is trained to predict token t+1 of the whole row, whichever rank holds t
    expected = [[IGNORE_INDEX, 13, 14, 15] + [IGNORE_INDEX] * (width - 4),
                [22, 23, IGNORE_INDEX, IGNORE_INDEX] + [IGNORE_INDEX] * (width - 4)]
    assert whole["shift_labels"].tolist() == expected and whole["labels"].tolist() == expected
    assert whole["position_ids"].tolist() == [list(range(width))] * 2
    assert "attention_mask" not in whole


def test_packed_rows_keep_their_restarting_positions_and_the_padding_continues_the_last():
    packed = {**batch(), "position_ids": torch.tensor([[0, 1, 0, 1, 2], [0, 1, 2, 0, 1]])}
    parts = [slice_batch(packed, rank, 2, pad_id=0) for rank in range(2)]
    positions = torch.cat([p["position_ids"] for p in parts], dim=1)
    assert positions.tolist() == [[0, 1, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2]]


def test_sp_divides_the_world_the_data_parallel_size_and_keeps_the_global_batch():
    plan = plan_for("+plan=sp", hw=H100x8)
    assert (plan.world_size, plan.sp, plan.dp, plan.zero_stage) == (8, 2, 4, 3)
    assert plan.micro_batch_size * plan.dp * plan.grad_accum == plan.global_batch_size
    assert plan_for("+plan=sp", "plan.sp=4", hw=H100x8).dp == 2  # the tiny model has 4 heads


@pytest.mark.parametrize("overrides, says", [
    (("+plan=sp", "plan.tp=2"), ["plan.tp=2", "sequence parallel is not combined with tensor or pipeline parallel"]),
    (("+plan=sp", "plan.sp=3"), ["plan.sp=3", "world size 2 is not divisible by sp=3", "one of [2]"]),
    (("+plan=sp", "model.arch.num_heads=3", "model.arch.num_kv_heads=3"),
     ["plan.sp=2", "the model has 3 attention heads"]),
    (("+plan=sp", "data.packing=true"), ["data.packing=True", "only flash attention separates them"]),
    (("+plan=sp", "model.attn_implementation=eager"), ["model.attn_implementation='eager'", "no 4D mask"]),
    (("+plan=sp", "+plan.deepspeed.zero_optimization.reduce_scatter=false"),
     ["reduce_scatter=False", "average the sp group's gradients"]),
    (("+plan=sp", "plan.compile=torch"), ["plan.compile='torch'", "has not been measured"]),
])
def test_plans_sp_cannot_run_are_refused_with_the_reason(overrides, says):
    paragraph = refusal(*overrides, hw=CPU).paragraph()
    for text in says:
        assert text in paragraph, paragraph


def test_ds_config_names_the_sequence_parallel_size_and_refuses_it_in_plan_deepspeed():
    from launcher.render.deepspeed import render_ds_config

    assert render_ds_config(plan_for("+plan=sp"))["sequence_parallel_size"] == 2
    assert "sequence_parallel_size" not in render_ds_config(plan_for("+plan=zero3"))
    assert "plan.sp" in refusal("+plan=sp", "+plan.deepspeed.sequence_parallel_size=4").paragraph()
