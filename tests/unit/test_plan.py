"""Plan resolution: degrees, batch arithmetic that keeps the global batch fixed, and the errors users get."""
from __future__ import annotations

import dataclasses

import pytest

from launcher.config.compose import compose
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware
from launcher.launch.job import check_host_fits
from launcher.plan.types import Plan
from launcher.plan.resolve import resolve
from launcher.data.selection import DataSet
from launcher.data.sources import DataSource

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
H200x2 = Hardware("cuda", 2, "NVIDIA H200", 139.8, "9.0", True, 32, 256.0, "x86_64")
GB10 = Hardware("cuda", 1, "NVIDIA GB10", 119.0, "12.1", True, 20, 119.0, "aarch64")


def plan_for(*overrides: str, hw: Hardware = CPU, num_samples: int = 0) -> Plan:
    cfg, _ = compose(["train.micro_batch_size=2", *overrides])  # the job these numbers were written for
    sets = (DataSet(DataSource("set", path="/data/set.json"), rows=num_samples, samples=num_samples),)
    return resolve(cfg, hw, run_dir="/runs/x", run_name="x", data_sets=(sets, ()))


def test_cpu_machine_gets_two_processes_and_zero2():
    p = plan_for()
    assert (p.accelerator, p.world_size, p.dp, p.zero_stage, p.precision) == ("cpu", 2, 2, 2, "fp32")
    assert (p.global_batch_size, p.micro_batch_size, p.grad_accum) == (8, 2, 2)


@pytest.mark.parametrize(
    "overrides, hw, world, accum",
    [
        ((), CPU, 2, 2),
        (("+topo=single_pgx",), CPU, 1, 4),
        (("+topo=dual_pgx",), CPU, 2, 2),
        (("+topo=multi_gpu", "topo.gpus_per_host=4"), CPU, 4, 1),
        ((), H200x2, 2, 2),
    ],
)
def test_global_batch_is_the_same_on_every_topology(overrides, hw, world, accum):
    p = plan_for(*overrides, hw=hw)
    assert p.world_size == world and p.grad_accum == accum
    assert p.micro_batch_size * p.dp * p.grad_accum == p.global_batch_size == 8


def test_local_topology_uses_every_gpu_of_the_host_in_bf16():
    p = plan_for(hw=H200x2)
    assert (p.accelerator, p.procs_per_host, p.precision) == ("cuda", 2, "bf16")


def test_dual_pgx_has_two_hosts_and_nccl_environment_of_the_playbooks_layout():
    """Both halves' RoCE devices for NCCL; gloo and NCCL's bootstrap on the one interface that carries master_addr."""
    p = plan_for("+topo=dual_pgx")
    assert p.hosts == ("192.168.100.10", "192.168.100.11") and p.backend == "hostfile"
    assert p.nccl_env == {"GLOO_SOCKET_IFNAME": "enp1s0f1np1", "NCCL_SOCKET_IFNAME": "enp1s0f1np1",
                          "NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1", "NCCL_IB_DISABLE": "0"}


def test_indivisible_global_batch_names_the_numbers_and_valid_choices():
    with pytest.raises(LauncherError) as err:
        plan_for("train.global_batch_size=10")
    text = err.value.paragraph()
    assert err.value.field == "train.global_batch_size" and "micro batch 2 x data-parallel size 2 = 4" in text
    assert "train.global_batch_size=8 or 12" in text and "train.micro_batch_size in [1, 5]" in text


def test_qlora_without_cuda_is_refused_with_lora_suggested():
    with pytest.raises(LauncherError, match="use method=lora") as err:
        plan_for("method=qlora")
    assert err.value.field == "method"


def test_qlora_on_gb10_resolves():
    p = plan_for("+topo=single_pgx", "model=llama3_3_70b", "method=qlora", hw=GB10)
    assert p.method.name == "qlora" and p.memory.fits


def test_fp16_on_cpu_is_refused():
    with pytest.raises(LauncherError, match="fp16 needs a GPU"):
        plan_for("train.precision=fp16")


def test_deepcompile_is_refused_with_what_was_measured_and_torch_compile_not_for_pipelines():
    for plan in ("+plan=zero1", "+plan=zero3"):
        with pytest.raises(LauncherError, match="use plan.compile=torch") as err:
            plan_for(plan, "plan.compile=deepcompile", hw=H200x2)
        assert err.value.field == "plan.compile" and "'weight' must be 2-D" in err.value.paragraph()
    with pytest.raises(LauncherError, match="pipeline engine") as err:
        plan_for("+plan=pp", "plan.compile=torch")
    assert err.value.field == "plan.compile"
    assert plan_for("+plan=zero3", "plan.compile=torch", hw=H200x2).compile == "torch"
    with pytest.raises(LauncherError, match="off, torch, deepcompile"):
        plan_for("plan.compile=yes")


def test_liger_fused_loss_counts_under_every_zero_stage_unless_turned_off():
    """The fused loss runs under ZeRO-3 too (lm_head's weight is gathered with the model's): no fp32 logits."""
    z3 = plan_for("+plan=zero3", "model=llama3_2_3b", hw=H200x2)
    z2 = plan_for("+plan=zero2", "model=llama3_2_3b", hw=H200x2)
    off = plan_for("+plan=zero3", "model=llama3_2_3b", "model.liger_fused_loss=false", hw=H200x2)
    assert z3.memory.activations_gb < off.memory.activations_gb
    assert z3.memory.activations_gb == pytest.approx(z2.memory.activations_gb)


def test_plan_needing_more_gpus_than_the_host_has_is_refused():
    p = plan_for("+topo=multi_gpu", "train.global_batch_size=16", hw=H200x2)
    with pytest.raises(LauncherError) as err:
        check_host_fits(p, H200x2)
    assert "needs 8 GPUs on this host, which has 2" in err.value.paragraph()
    assert "topo.gpus_per_host=2" in err.value.paragraph()


def test_epochs_turn_into_steps_from_the_row_count():
    assert plan_for("train.epochs=2", num_samples=100).max_steps == 25


def test_plan_json_round_trips():
    p = plan_for("+topo=dual_pgx", "method=lora")
    assert Plan.from_dict(p.to_dict()) == p


def test_memory_estimate_shrinks_with_each_zero_stage():
    totals = [plan_for("+topo=multi_gpu", f"+plan={n}", "model=llama3_1_8b", "train.global_batch_size=16",
                       hw=H200x2).memory.total_gb
              for n in ("ddp", "zero1", "zero2", "zero3")]
    assert totals == sorted(totals, reverse=True) and totals[0] > 2 * totals[3]


def test_lora_trains_a_small_fraction_of_the_weights():
    m = plan_for("model=llama3_1_8b", "method=lora", "+topo=single_pgx", hw=GB10).memory
    assert 7e9 < m.params < 8.5e9 and m.trainable_params < 0.01 * m.params


def test_offload_moves_optimizer_states_to_cpu():
    m = plan_for("+topo=single_pgx", "+plan=zero3_offload", "model=llama3_2_3b", hw=GB10).memory
    assert m.optimizer_gb == 0 and m.cpu_offload_gb > 30


def test_plan_is_frozen():
    p = plan_for()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.dp = 4  # type: ignore[misc]


def test_slurm_gpus_per_node_sets_the_processes_per_node():
    p = plan_for("+topo=slurm", "topo.nodes=4", "topo.gpus_per_node=4", "train.global_batch_size=32")
    assert (p.backend, p.num_hosts, p.procs_per_host, p.world_size, p.grad_accum) == ("slurm", 4, 4, 16, 1)


@pytest.mark.parametrize("override, field, text", [
    ("+plan.deepspeed.train_batch_size=64", "plan.deepspeed.train_batch_size", "set train.global_batch_size"),
    ("+plan.deepspeed.zero_optimization.stage=1", "plan.deepspeed.zero_optimization.stage", "set plan.zero_stage"),
    ("+plan.deepspeed.zero_optimization=3", "plan.deepspeed.zero_optimization", "give its keys one by one"),
    ("+plan.deepspeed.optimizer.type=Lamb", "plan.deepspeed.optimizer", "set train.lr"),
])
def test_plan_deepspeed_may_add_keys_but_not_replace_the_plans_own(override, field, text):
    with pytest.raises(LauncherError) as err:
        plan_for(override)
    assert err.value.field == field and text in err.value.paragraph()
    assert plan_for("+plan.deepspeed.zero_optimization.round_robin_gradients=true").deepspeed == {
        "zero_optimization": {"round_robin_gradients": True}}
