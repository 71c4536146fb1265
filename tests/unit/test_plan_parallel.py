"""Tensor- and pipeline-parallel plans: degrees, batch arithmetic equal to DDP's, rendered DeepSpeed sections, and the
errors a user gets for degrees or combinations that cannot run."""
from __future__ import annotations

import pytest

from launcher.config.compose import compose
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware
from launcher.plan.types import Plan
from launcher.plan.resolve import resolve
from launcher.render.deepspeed import render_ds_config

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
H200x8 = Hardware("cuda", 8, "NVIDIA H200", 139.8, "9.0", True, 128, 560.0, "x86_64")


def plan_for(*overrides: str, hw: Hardware = CPU) -> Plan:
    cfg, _ = compose(["train.micro_batch_size=2", *overrides])  # the job these numbers were written for
    return resolve(cfg, hw, run_dir="/runs/x", run_name="x")


def refusal(*overrides: str, hw: Hardware = CPU) -> LauncherError:
    with pytest.raises(LauncherError) as err:
        plan_for(*overrides, hw=hw)
    return err.value


@pytest.mark.parametrize(
    "overrides, dp, tp, pp, accum",
    [
        (("+plan=tp",), 1, 2, 1, 4),
        (("+plan=pp",), 1, 1, 2, 4),
        (("+plan=tp", "topo.cpu_procs_per_host=4"), 2, 2, 1, 2),
        (("+plan=pp", "topo.cpu_procs_per_host=4"), 2, 1, 2, 2),
        (("+plan=zero2", "plan.tp=2", "topo.cpu_procs_per_host=4"), 2, 2, 1, 2),
        (("+plan=zero1", "plan.pp=2", "topo.cpu_procs_per_host=4"), 2, 1, 2, 2),
    ],
)
def test_model_parallel_degrees_leave_the_global_batch_of_ddp(overrides, dp, tp, pp, accum):
    p = plan_for(*overrides)
    ddp = plan_for("+plan=ddp", *[o for o in overrides if o.startswith("topo.")])
    assert (p.dp, p.tp, p.pp, p.grad_accum) == (dp, tp, pp, accum)
    assert p.dp * p.tp * p.pp == p.world_size
    assert p.global_batch_size == ddp.global_batch_size == p.micro_batch_size * p.dp * p.grad_accum


def test_eight_gpus_split_into_tensor_and_data_parallel_ranks():
    p = plan_for("+topo=multi_gpu", "+plan=tp", "plan.tp=4", "model=llama3_1_8b", "train.global_batch_size=16",
                 hw=H200x8)
    assert (p.world_size, p.dp, p.tp, p.grad_accum) == (8, 2, 4, 4)


def test_tp_renders_autotp_size_and_pp_renders_a_pipeline_section():
    tp = render_ds_config(plan_for("+plan=tp"))
    pp = render_ds_config(plan_for("+plan=pp"))
    assert tp["tensor_parallel"] == {"autotp_size": 2} and "pipeline" not in tp
    assert pp["pipeline"]["stages"] == 2 and pp["pipeline"]["partition"] == "parameters"
    assert pp["zero_optimization"]["stage"] == 1 and pp["zero_optimization"]["overlap_comm"] is False
    assert (tp["train_batch_size"], tp["train_micro_batch_size_per_gpu"], tp["gradient_accumulation_steps"]) == (8, 2, 4)
    assert "tensor_parallel" not in render_ds_config(plan_for("+plan=zero2"))


def test_tensor_and_pipeline_parallel_shrink_the_memory_estimate():
    def memory(*o: str):
        return plan_for("+topo=multi_gpu", "model=llama3_1_8b", "train.global_batch_size=16", *o, hw=H200x8).memory

    ddp, tp2 = memory("+plan=ddp"), memory("+plan=ddp", "plan.tp=2")
    zero1, pp2 = memory("+plan=zero1"), memory("+plan=zero1", "plan.pp=2")
    assert pp2.params_gb == pytest.approx(zero1.params_gb / 2, rel=0.01) and pp2.total_gb < 0.7 * zero1.total_gb
    assert 0.5 < tp2.params_gb / ddp.params_gb < 0.55  # the embedding stays whole on every tensor rank
    assert tp2.total_gb < 0.6 * ddp.total_gb


def test_plan_json_round_trips_with_degrees():
    p = plan_for("+plan=pp", "topo.cpu_procs_per_host=4", "method=lora")
    assert Plan.from_dict(p.to_dict()) == p


def test_lora_on_a_pipeline_is_accepted():
    assert plan_for("+plan=pp", "method=lora").method.name == "lora"


def test_tp_must_divide_the_kv_heads():
    err = refusal("+plan=tp", "plan.tp=4", "topo.cpu_procs_per_host=4")
    assert err.field == "plan.tp" and err.value == 4
    assert "attention heads (4) and the KV heads (2)" in err.paragraph() and "use plan.tp in [1, 2]" in err.paragraph()


def test_tp_must_divide_the_attention_heads_of_a_hub_model():
    err = refusal("+topo=multi_gpu", "+plan=tp", "plan.tp=8", "model=qwen2_5_7b", "train.global_batch_size=16",
                  hw=H200x8)
    assert err.field == "plan.tp" and "KV heads (4)" in err.paragraph() and "use plan.tp in [1, 2, 4]" in err.paragraph()


def test_pp_cannot_exceed_the_layers():
    err = refusal("+plan=pp", "plan.pp=4", "topo.cpu_procs_per_host=4")
    assert err.field == "plan.pp" and "the model has 2" in err.paragraph() and "use plan.pp <= 2" in err.paragraph()


def test_degrees_must_divide_the_world_size():
    err = refusal("+plan=tp", "plan.tp=3")
    assert err.field == "plan.tp"
    assert "world size 2 is not divisible by tp x pp = 3" in err.paragraph() and "one of [1, 2]" in err.paragraph()


def test_tp_with_pp_is_refused_with_what_to_use_instead():
    err = refusal("plan.tp=2", "plan.pp=2", "topo.cpu_procs_per_host=4")
    text = err.paragraph()
    assert err.field == "plan.pp" and "tp=2 with pp=2 cannot run on DeepSpeed" in text
    assert "+plan=tp" in text and "+plan=pp" in text and "+plan=zero3" in text


@pytest.mark.parametrize("stage", [2, 3])
def test_pipeline_with_zero_2_or_3_is_refused_pointing_at_zero1(stage):
    err = refusal("+plan=pp", f"plan.zero_stage={stage}")
    assert (err.field, err.value) == ("plan.zero_stage", stage)
    assert f"refuses ZeRO-{stage}" in err.paragraph() and "+plan=pp (ZeRO-1)" in err.paragraph()


def test_pipeline_default_zero2_plan_is_refused_when_pp_is_set_on_it():
    assert "plan.zero_stage=1" in refusal("plan.pp=2").paragraph()


def test_pipeline_with_zero0_needs_clipping_off():
    err = refusal("+plan=pp", "plan.zero_stage=0")
    assert err.field == "plan.zero_stage" and "train.grad_clip=0" in err.paragraph()
    assert plan_for("+plan=pp", "plan.zero_stage=0", "train.grad_clip=0").zero_stage == 0


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_under_tensor_parallel_is_refused_with_the_reason(method):
    err = refusal("+plan=tp", f"method={method}")
    assert (err.field, err.value) == ("method", method)
    assert "adapters are dropped silently" in err.paragraph() and "+plan=pp" in err.paragraph()


def test_qlora_on_a_pipeline_is_refused():
    gpu2 = Hardware("cuda", 2, "NVIDIA H200", 139.8, "9.0", True, 32, 256.0, "x86_64")
    err = refusal("+plan=pp", "method=qlora", hw=gpu2)
    assert err.field == "method" and "use method=lora with plan.pp" in err.paragraph()


def test_tensor_parallel_with_zero3_is_refused():
    err = refusal("+plan=zero3", "plan.tp=2")
    assert err.field == "plan.zero_stage" and "use plan.zero_stage=1 or 2 with plan.tp" in err.paragraph()
