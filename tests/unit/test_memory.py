"""Memory estimate, +plan=auto and the not-fitting error: pure planning, no processes.

The GB10 cases are NVIDIA's published DGX Spark fine-tuning references (one box, ~119 GiB of unified memory): Llama
3.2 3B full, Llama 3.1 8B LoRA and Llama 3.3 70B QLoRA fit; a 70B full fine-tune fits neither one nor two boxes.
"""
from __future__ import annotations

import dataclasses
import functools

import pytest

from launcher.plan.activations import exchange_bytes
from launcher.plan.auto import memory_error, sp_degrees
from launcher.config.compose import compose
from launcher.config.schema import LauncherConfig
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware
from launcher.plan.memory import GIB
from launcher.launch.job import check_memory_fits
from launcher.plan.types import Plan
from launcher.plan.resolve import resolve
from launcher.launch.summary import plan_table
from tests.conftest import check_golden

GB10 = Hardware("cuda", 1, "NVIDIA GB10", 119.0, "12.1", True, 20, 119.0, "aarch64")
PINNED_MICRO = "train.micro_batch_size=2"
H200x8 = Hardware("cuda", 8, "NVIDIA H200", 139.8, "9.0", True, 128, 2000.0, "x86_64")
JOB = ("train.seq_len=2048", "train.global_batch_size=16")
KERNELS = [False, True]  # model.liger_kernel: transformers' kernels (liger-kernel not installed), liger's


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> LauncherConfig:
    """The micro batch is 2 unless a test says otherwise: these estimates were written for that job, not for
    train.micro_batch_size=auto, whose choice tests/unit/test_micro_batch.py covers."""
    return compose([PINNED_MICRO, *overrides])[0]


def plan_for(*overrides: str, hw: Hardware = GB10, micro: int = 0, liger: bool | None = None) -> Plan:
    """Compose once per distinct job (Hydra takes most of a test's time), then vary the micro batch and kernels."""
    cfg = _composed(overrides)
    if micro:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_size=micro))
    if liger is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, liger_kernel=liger))
    return resolve(cfg, hw, run_dir="/runs/x", run_name="x")


@pytest.mark.parametrize("job", [("model=llama3_2_3b", "method=full"), ("model=llama3_1_8b", "method=lora"),
                                 ("model=llama3_3_70b", "method=qlora", "train.gradient_checkpointing=true")],
                         ids=["3b-full", "8b-lora", "70b-qlora"])
def test_nvidia_gb10_references_fit_one_box(job):
    for micro in (1, 2, 4):
        for liger in KERNELS:
            p = plan_for("+topo=single_pgx", *job, *JOB, micro=micro, liger=liger)
            assert p.memory.fits and p.memory.unified_memory, "\n".join(plan_table(p))
            check_memory_fits(p, check=True)


def test_70b_qlora_on_one_gb10_gets_checkpointing_from_plan_auto_only_when_needed():
    short = plan_for("+topo=single_pgx", "+plan=auto", "model=llama3_3_70b", "method=qlora", "train.seq_len=256")
    long = plan_for("+topo=single_pgx", "+plan=auto", "model=llama3_3_70b", "method=qlora", *JOB,
                    "train.micro_batch_size=4")
    assert short.memory.fits and not short.train.gradient_checkpointing
    assert long.memory.fits and long.train.gradient_checkpointing and long.plan_name == "ddp"
    assert "train.gradient_checkpointing=true" in long.auto_reason and "faster ones do not" in long.auto_reason


@pytest.mark.parametrize("topo", ["single_pgx", "dual_pgx"])
def test_70b_full_fine_tune_fits_no_gb10_setup_and_the_error_says_what_would(topo):
    p = plan_for(f"+topo={topo}", "+plan=zero3", "model=llama3_3_70b", *JOB, "train.micro_batch_size=1")
    assert not p.memory.fits and p.memory.over_gb > 300
    with pytest.raises(LauncherError) as err:
        check_memory_fits(p, check=True)
    text = err.value.paragraph()
    assert err.value.field == "plan" and f"{p.memory.over_gb:.1f} GiB too much" in text
    assert "unified memory" in text and "method=qlora" in text and "GPUs like these with +plan=zero3" in text
    if topo == "dual_pgx":
        assert "method=lora with +plan=zero3" in text  # 70B in 16 bits, sharded over both boxes
    assert "run.check_memory=false" in text
    check_memory_fits(p, check=False)  # the escape hatch


def test_70b_full_on_gb10_with_plan_auto_is_refused_even_with_offload():
    p = plan_for("+topo=dual_pgx", "+plan=auto", "model=llama3_3_70b", *JOB, "train.micro_batch_size=1")
    assert not p.memory.fits and "no plan fits" in p.auto_reason
    assert memory_error(p).value == "auto" and "method=qlora" in memory_error(p).paragraph()


def test_a_micro_batch_too_large_is_told_the_largest_that_fits():
    job = ("+topo=single_pgx", "model=llama3_1_8b", "method=lora", "train.seq_len=4096", "train.global_batch_size=32")
    p = plan_for(*job, micro=16, liger=False)
    assert not p.memory.fits
    text = memory_error(p).paragraph()
    fitting = [m for m in (8, 4, 2, 1) if plan_for(*job, micro=m, liger=False).memory.fits]
    assert f"train.micro_batch_size={fitting[0]} " in text and "gradient accumulation keeps the global batch" in text


def test_plan_auto_prefers_data_parallel_and_names_the_runner_up():
    p = plan_for("+topo=multi_gpu", "+plan=auto", "model=llama3_1_8b", *JOB, "train.micro_batch_size=1", hw=H200x8)
    assert (p.plan_name, p.zero_stage, p.dp) == ("zero1", 1, 8) and not p.train.gradient_checkpointing
    assert "+plan=ddp ~" in p.auto_reason and "Runner-up: +plan=zero2" in p.auto_reason
    small = plan_for("+topo=multi_gpu", "+plan=auto", "model=llama3_2_3b", "method=lora", *JOB, hw=H200x8)
    assert small.plan_name == "ddp" and "Runner-up: +plan=zero1" in small.auto_reason


def test_plan_auto_choice_is_recorded_in_plan_json():
    p = plan_for("+topo=multi_gpu", "+plan=auto", "model=llama3_1_8b", *JOB, hw=H200x8)
    d = p.to_dict()
    assert d["plan_name"] == "zero1" and d["auto_reason"].startswith("plan=auto chose +plan=zero1")
    assert Plan.from_dict(d) == p


def test_offload_comes_last_and_counts_against_unified_memory():
    gb10 = plan_for("+topo=single_pgx", "+plan=zero3_offload", "model=llama3_2_3b", *JOB).memory
    assert gb10.optimizer_gb == 0 and gb10.cpu_offload_gb > 30
    assert gb10.need_gb > gb10.total_gb + gb10.cpu_offload_gb  # offloaded state comes out of the same pool
    h200 = plan_for("+topo=multi_gpu", "+plan=zero3_offload", "model=llama3_2_3b", *JOB, hw=H200x8).memory
    assert h200.need_gb == h200.total_gb and h200.host_ram_gb > h200.cpu_offload_gb * 8


def test_offloaded_optimizer_takes_the_gradient_partitions_off_the_gpu():
    """DeepSpeed keeps ZeRO-3's gradient partitions on the optimizer's device, and stage 2 copies each reduced
    gradient into the CPU fp32 gradient: neither holds a 16-bit gradient partition on the GPU."""
    z3 = plan_for("+topo=multi_gpu", "+plan=zero3", "model=llama3_2_3b", *JOB, hw=H200x8).memory
    off = plan_for("+topo=multi_gpu", "+plan=zero3_offload", "model=llama3_2_3b", *JOB, hw=H200x8).memory
    assert off.grads_gb == 0 and z3.grads_gb > 0.5
    assert off.cpu_offload_gb == pytest.approx(z3.params_gb + z3.grads_gb + z3.optimizer_gb + z3.step_gb, abs=0.01)
    z2 = plan_for("+topo=multi_gpu", "+plan=zero2", "plan.offload_optimizer=true", "model=llama3_2_3b", *JOB,
                  hw=H200x8).memory
    assert z2.grads_gb == 0 and z2.params_gb > 5


def test_zero_stages_shard_what_they_promise():
    def m(preset: str):
        return plan_for("+topo=multi_gpu", f"+plan={preset}", "model=llama3_1_8b", *JOB, hw=H200x8).memory

    ddp, z1, z2, z3 = m("ddp"), m("zero1"), m("zero2"), m("zero3")
    assert z1.optimizer_gb == pytest.approx(ddp.optimizer_gb / 8, rel=1e-3) and z1.grads_gb == ddp.grads_gb
    assert z2.grads_gb == pytest.approx(z1.grads_gb / 8, rel=1e-3) and z2.params_gb == z1.params_gb
    assert z3.params_gb == pytest.approx(z2.params_gb / 8, rel=1e-3)
    assert ddp.optimizer_gb == pytest.approx(8.03e9 * 12 / 1024**3, rel=0.01)  # fp32 master + 2 Adam moments


def test_gradient_checkpointing_keeps_one_input_per_layer():
    full = plan_for("+topo=single_pgx", "model=llama3_1_8b", "method=lora", *JOB, liger=False).memory
    ckpt = plan_for("+topo=single_pgx", "model=llama3_1_8b", "method=lora", *JOB, "train.gradient_checkpointing=true",
                    liger=False).memory
    assert ckpt.activations_gb == full.activations_checkpointed_gb < full.activations_gb / 3
    assert ckpt.activations_full_gb == full.activations_gb


def test_dry_run_table_matches_golden():
    p = plan_for("+topo=single_pgx", "model=llama3_3_70b", "method=qlora", *JOB, "train.micro_batch_size=2")
    check_golden("plan/llama3_3_70b-qlora-single_pgx.txt", "\n".join(plan_table(p)) + "\n")
    auto = plan_for("+topo=multi_gpu", "+plan=auto", "model=llama3_1_8b", *JOB, hw=H200x8)
    check_golden("plan/llama3_1_8b-full-auto-multi_gpu.txt", "\n".join(plan_table(auto)) + "\n")


# Ulysses sequence parallel (plan.sp): Llama 3.1 8B LoRA on two GB10 boxes at long sequences.
LONG = ("+topo=dual_pgx", "model=llama3_1_8b", "method=lora", "train.micro_batch_size=1", "train.global_batch_size=8",
        "train.tiled_mlp=off")
CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")


def test_sequence_parallel_halves_the_activations_but_adds_the_all_to_all_buffers():
    """sp=2 holds half of each row's tokens: without checkpointing exactly the activations of a row half as long
    (the fused loss's chunk outweighs the all-to-all buffers); with checkpointing also the send and receive buffers
    of one layer's exchange, 2 bytes x (h + 2 kv + 2 h) per local token."""
    one = plan_for(*LONG, "+plan=zero3", "train.seq_len=65536").memory
    half = plan_for(*LONG, "+plan=zero3", "train.seq_len=32768").memory
    sp2 = plan_for(*LONG, "+plan=sp", "train.seq_len=65536").memory
    assert sp2.activations_full_gb == half.activations_full_gb == pytest.approx(one.activations_full_gb / 2, abs=2e-3)
    exchange = 32768 * exchange_bytes(_composed(LONG).model.arch, 2, 2) / GIB
    assert exchange == pytest.approx(32768 * 2 * (4096 + 2 * 1024 + 2 * 4096) / GIB)
    assert sp2.activations_checkpointed_gb == pytest.approx(one.activations_checkpointed_gb / 2 + exchange, abs=2e-3)


@pytest.mark.parametrize("hw, job", [(H200x8, ("+topo=multi_gpu", "model=llama3_1_8b", *JOB)), (CPU, ())],
                         ids=["8xH200-8b", "cpu-tiny"])
def test_sequence_parallel_shards_model_states_over_every_rank(hw, job):
    """DeepSpeed's ZeRO uses the sequence-data-parallel group: dp x sp ranks, the whole world (on CPU too, where
    tests/integration/test_memory_engine.py measures the engine)."""
    sp_cfg, flat_cfg = _composed((*job, "+plan=sp")), _composed((*job, "+plan=zero3"))
    for stage in (1, 2, 3):
        sp, flat = (resolve(dataclasses.replace(c, plan=dataclasses.replace(c.plan, zero_stage=stage)), hw,
                            run_dir="/runs/x", run_name="x") for c in (sp_cfg, flat_cfg))
        assert sp.sp == 2 and sp.dp == flat.dp // 2
        for part in ("params_gb", "grads_gb", "optimizer_gb", "step_gb", "buffers_gb"):
            assert getattr(sp.memory, part) == getattr(flat.memory, part), (stage, part)


def test_plan_auto_takes_sequence_parallel_only_when_nothing_else_fits():
    """At 64k the default liger fused loss leaves room for ddp with checkpointing; without it only sp=2 fits (the
    table in bench/results/sp_memory.md)."""
    fused = plan_for(*LONG, "+plan=auto", "train.seq_len=65536")
    assert (fused.plan_name, fused.sp, fused.train.gradient_checkpointing) == ("ddp", 1, True)
    assert "sequence parallel" not in fused.auto_reason
    logits = plan_for(*LONG, "+plan=auto", "train.seq_len=65536", "model.liger_fused_loss=false")
    assert (logits.plan_name, logits.sp, logits.dp, logits.zero_stage) == ("sp", 2, 1, 0)
    assert logits.memory.fits and logits.train.gradient_checkpointing
    assert logits.auto_reason.startswith("plan=auto chose +plan=sp plan.zero_stage=0 train.gradient_checkpointing=true")
    assert "no plan without sequence parallel fits" in logits.auto_reason and "all-to-alls" in logits.auto_reason
    short = plan_for(*LONG, "+plan=auto", "train.seq_len=32768", "model.liger_fused_loss=false")
    assert short.sp == 1 and short.plan_name == "ddp"


def test_sequence_parallel_degrees_divide_the_world_and_the_heads():
    cfg = _composed(("model=llama3_1_8b",))  # 32 heads, 8 kv heads: sp 16 repeats each kv head twice
    assert sp_degrees(cfg, 16) == [2, 4, 8, 16] and sp_degrees(cfg, 6) == [2] and sp_degrees(cfg, 1) == []
    tiny = _composed(())  # 4 heads, 2 kv heads
    assert sp_degrees(tiny, 8) == [2, 4]


def test_sequence_parallel_dry_run_table_matches_golden():
    p = plan_for(*LONG, "+plan=sp", "train.seq_len=65536", "train.gradient_checkpointing=true")
    table = "\n".join(plan_table(p)) + "\n"
    assert "world 2 = dp 1 x tp 1 x pp 1 x sp 2" in table and "per seq_len/sp = 32,768 tokens" in table
    check_golden("plan/llama3_1_8b-lora-sp-dual_pgx.txt", table)


TILED_JOB = ("+topo=single_pgx", "model=llama3_1_8b", "method=lora", "train.micro_batch_size=1",
             "train.global_batch_size=8", "model.liger_kernel=false")


def test_tiled_mlp_auto_turns_on_only_where_it_makes_the_plan_fit():
    """It costs speed (bench/results/long_context.md), so auto takes it only where the MLP's activations decide."""
    short = plan_for(*TILED_JOB, "train.seq_len=4096")
    assert short.memory.fits and not short.tiled_mlp
    long = plan_for(*TILED_JOB, "train.seq_len=16384")
    forced_off = plan_for(*TILED_JOB, "train.seq_len=16384", "train.tiled_mlp=off")
    assert not forced_off.memory.fits and long.memory.fits and long.tiled_mlp
    mlp = 16384 * 4 * 2 * 14336 * 32 / GIB  # gate, silu(gate), up and product, bf16, per layer, not kept any more
    assert forced_off.memory.activations_full_gb - long.memory.activations_full_gb == pytest.approx(mlp, rel=0.02)
    assert "tiled MLP (train.tiled_mlp)" in "\n".join(plan_table(long))
    hopeless = plan_for(*TILED_JOB, "train.seq_len=131072")
    assert not hopeless.memory.fits and not hopeless.tiled_mlp  # no use where it does not make the plan fit
    cpu = resolve(_composed((*TILED_JOB, "train.seq_len=16384", "topo.accelerator=cpu")), GB10, run_dir="/runs/x",
                  run_name="x")
    assert not cpu.tiled_mlp


def test_tiled_mlp_on_with_per_module_zero3_fetches_is_refused():
    with pytest.raises(LauncherError) as err:
        plan_for("+plan=zero3", "plan.stage3_fetch=module", "train.tiled_mlp=on")
    assert "plan.stage3_fetch=layer" in err.value.paragraph()
    assert not plan_for("+plan=zero3", "plan.stage3_fetch=module", "train.tiled_mlp=auto").tiled_mlp
