"""Config composition: presets, the +group= forms users type, and the errors for bad overrides."""
from __future__ import annotations

import pytest

from launcher.config.compose import compose, normalize_overrides, presets
from launcher.errors import LauncherError


def test_bare_invocation_gets_local_topology_and_zero2_plan():
    cfg, _ = compose([])
    assert (cfg.topo.name, cfg.plan.name, cfg.model.name, cfg.data.name, cfg.method.name) == (
        "local", "zero2", "tiny", "default", "full")


@pytest.mark.parametrize("form", ["+topo=single_pgx", "topo=single_pgx"])
def test_topology_selected_with_or_without_plus(form):
    cfg, _ = compose([form, "+plan=zero3"])
    assert cfg.topo.name == "single_pgx" and cfg.topo.gpus_per_host == 1 and cfg.topo.unified_memory
    assert cfg.plan.zero_stage == 3


def test_issue_examples_compose_with_the_values_they_name():
    cfg, _ = compose(["+topo=single_pgx", "+plan=zero2", "model=llama3_2_3b", "data=alpaca", "method=lora"])
    assert cfg.model.path == "meta-llama/Llama-3.2-3B-Instruct" and cfg.method.name == "lora"
    cfg, _ = compose(["+topo=multi_gpu", "+plan=zero3", "train.global_batch_size=64", "run.name=exp1"])
    assert (cfg.topo.gpus_per_host, cfg.train.global_batch_size, cfg.run.name) == (8, 64, "exp1")


def test_every_preset_of_every_group_composes():
    for group in ("topo", "plan", "model", "data", "method"):
        for name in presets(group):
            cfg, _ = compose([f"{group}={name}"])
            assert getattr(cfg, group).name == name


def test_normalize_adds_defaults_only_when_absent():
    assert normalize_overrides(["plan=ddp"]) == ["+plan=ddp", "+topo=local"]
    assert normalize_overrides(["+topo=dual_pgx", "+plan=zero3"]) == ["+topo=dual_pgx", "+plan=zero3"]


def test_dual_pgx_fields_are_overridable():
    cfg, _ = compose(["+topo=dual_pgx", "topo.hosts=[a,b]", "topo.nccl.ib_hca=mlx5_0"])
    assert cfg.topo.hosts == ["a", "b"] and cfg.topo.nccl.ib_hca == "mlx5_0"


@pytest.mark.parametrize(
    "override, field, text",
    [
        ("topo=nope", "topo", "use one of dual_pgx, local, multi_gpu, single_pgx"),
        ("+plan=zero9", "plan", "use one of auto, ddp, pp, sp, tp, zero1, zero2, zero3, zero3_offload"),
        ("method=dora", "method", "use one of full, lora, qlora"),
        ("train.foo=1", "train.foo", "train has: global_batch_size"),
        ("train.micro_batch_size=abc", "train.micro_batch_size", "give a positive number of sequences per GPU and step, or auto"),
        ("train.seq_len=0", "train.seq_len", "positive"),
        ("data.format=csv", "data.format", "alpaca, sharegpt"),
        ("topo.hosts=[a,a]", "topo.hosts", "listed twice"),
        ("plan.stage3_fetch=block", "plan.stage3_fetch", "layer, module"),
        ("plan.reduce_bucket_mb=-1", "plan.reduce_bucket_mb", "use 0 to have it chosen from the model"),
        ("train.profile_steps=10-8", "train.profile_steps", "a range of them (8-10)"),
        ("train.profile_steps=0", "train.profile_steps", "counted from 1"),
        ("train.gc_interval=-5", "train.gc_interval", "it must be >= 0"),
        ("train.nonfinite=ignore", "train.nonfinite", "stop, skip"),
    ],
)
def test_bad_override_names_field_and_fix(override, field, text):
    with pytest.raises(LauncherError) as err:
        compose([override])
    assert err.value.field == field
    assert text in err.value.paragraph()
