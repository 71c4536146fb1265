"""train.micro_batch_size=auto: the largest micro batch the estimate fits with headroom, dividing global batch / dp."""
from __future__ import annotations

import functools

import pytest

from launcher.config.compose import compose
from launcher.plan import micro_batch
from launcher.plan.micro_batch import speed
from launcher.plan.hardware import Hardware
from launcher.plan.resolve import resolve

GPUS = {  # name, memory GiB: a 24 GiB card, an H100, a GB10 (unified) and an H200
    "24": Hardware("cuda", 1, "NVIDIA L4", 24.0, "8.9", True, 16, 128.0, "x86_64"),
    "80": Hardware("cuda", 1, "NVIDIA H100 80GB HBM3", 79.2, "9.0", True, 16, 128.0, "x86_64"),
    "119": Hardware("cuda", 1, "NVIDIA GB10", 119.0, "12.1", True, 20, 119.0, "aarch64"),
    "141": Hardware("cuda", 1, "NVIDIA H200", 139.8, "9.0", True, 16, 256.0, "x86_64"),
}
CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
JOBS = {
    "3b-full": ("model=llama3_2_3b", "+plan=zero2"),
    "8b-lora": ("model=llama3_1_8b", "method=lora", "+plan=zero2"),
    "7b-lora": ("model=qwen2_5_7b", "method=lora", "+plan=zero3"),
    "70b-qlora": ("model=llama3_3_70b", "method=qlora", "+plan=zero2", "train.gradient_checkpointing=true"),
}


@functools.lru_cache(maxsize=None)
def composed(overrides: tuple[str, ...]):
    return compose(["train.global_batch_size=64", "train.seq_len=2048", *overrides])[0]


def plan(overrides: tuple[str, ...], hw: Hardware, cap: int = 0):
    return resolve(composed(overrides), hw, run_dir="/runs/x", run_name="x", micro_cap=cap)


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("job", JOBS)
def test_auto_takes_the_largest_micro_batch_that_fits_with_headroom_and_divides_the_global_batch(job, gpu):
    p = plan(JOBS[job], GPUS[gpu])
    per_rank = p.global_batch_size // p.dp
    assert per_rank % p.micro_batch_size == 0 and p.grad_accum * p.micro_batch_size * p.dp == p.global_batch_size
    assert p.micro_batch_note.startswith("auto: ")
    larger = [m for m in micro_batch.choices(p.global_batch_size, p.dp) if m > p.micro_batch_size]
    if micro_batch.fits_with_headroom(p.memory):
        for m in larger:  # every larger choice leaves less than the headroom (untiled: auto never tiles to grow)
            bigger = resolve(composed((*JOBS[job], f"train.micro_batch_size={m}", "train.tiled_mlp=off")), GPUS[gpu],
                             run_dir="/r", run_name="x")
            assert not micro_batch.fits_with_headroom(bigger.memory), (job, gpu, m)
    else:  # nothing fits with headroom: the smallest, and the plan says it does not fit
        assert p.micro_batch_size == 1 and "even it does not fit" in p.micro_batch_note


def test_more_memory_never_means_a_smaller_micro_batch():
    for job in JOBS.values():
        micros = [plan(job, GPUS[g]).micro_batch_size for g in ("24", "80", "119", "141")]
        assert micros == sorted(micros), (job, micros)
    assert plan(JOBS["8b-lora"], GPUS["80"]).micro_batch_size > 2  # a GPU job is no longer left at the old default


def test_on_a_cpu_auto_keeps_two_and_a_recorded_ceiling_lowers_it():
    p = plan(JOBS["3b-full"], CPU)
    assert p.micro_batch_size == 2 and p.micro_batch_note == "auto: 2 on the CPU"
    assert plan(JOBS["3b-full"], CPU, cap=1).micro_batch_size == 1
    capped = plan(JOBS["8b-lora"], GPUS["141"], cap=4)
    assert capped.micro_batch_size <= 4 and "at most 4 after an out-of-memory" in capped.micro_batch_note


def test_a_number_is_taken_as_it_is():
    p = plan((*JOBS["3b-full"], "train.micro_batch_size=4"), GPUS["141"])
    assert (p.micro_batch_size, p.micro_batch_note) == (4, "")


def test_the_retry_after_an_out_of_memory_is_the_next_smaller_divisor():
    assert [micro_batch.next_smaller(64, 1, m) for m in (16, 8, 4, 2, 1)] == [8, 4, 2, 1, 0]
    assert micro_batch.next_smaller(24, 2, 12) == 6 and micro_batch.next_smaller(24, 2, 4) == 3


def test_plan_auto_weighs_the_micro_batch_a_plan_allows_against_its_sharding():
    """A 3B full fine-tune on eight 80 GiB GPUs: DDP keeps every model state and leaves room for micro 2, ZeRO-2
    shards the optimizer states and gradients and fits micro 8, which is worth more than DDP's step (STAGE_SPEED and
    MICRO_STEP_TOKENS in plan/micro_batch.py); the reason names both choices."""
    h100x8 = Hardware("cuda", 8, "NVIDIA H100 80GB HBM3", 79.2, "9.0", True, 128, 1024.0, "x86_64")
    job = ("model=llama3_2_3b", "+topo=multi_gpu", "topo.gpus_per_host=8", "train.global_batch_size=256")
    ddp, chosen = plan((*job, "+plan=ddp"), h100x8), plan((*job, "+plan=auto"), h100x8)
    assert ddp.micro_batch_size == 2 and (chosen.plan_name, chosen.micro_batch_size) == ("zero2", 8)
    assert speed(chosen) > speed(ddp)
    assert chosen.auto_reason.startswith("plan=auto chose +plan=zero2 train.micro_batch_size=8: the fastest that fits")
    assert "Runner-up: +plan=zero1 train.micro_batch_size=8" in chosen.auto_reason
