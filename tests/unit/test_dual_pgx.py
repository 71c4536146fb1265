"""Two GB10 boxes as NVIDIA wires them: the rank environment of each addressing layout (golden files), gloo on the one
interface that carries master_addr, no GPUDirect RDMA on unified memory, and the memory budget from MemAvailable.

Set LAUNCHER_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then review the diff.
"""
from __future__ import annotations

import pytest

from launcher.backends.hostfile import check_hosts_memory, parse_probe
from launcher.config.compose import compose
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware, meminfo_gb
from launcher.plan.resolve import resolve
from launcher.render.env import rank_env
from launcher.render.hostfile import render_deepspeed_env
from tests.conftest import check_golden
from tests.fake_kernel import meminfo

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
ONE_INTERFACE = ("topo.nccl.ib_hca=rocep1s0f1",)  # what scripts/setup_dual_pgx.sh --layout one prints


def gb10(available_gb: float) -> Hardware:
    return Hardware("cuda", 1, "NVIDIA GB10", 119.7, "12.1", True, 20, 119.7, "aarch64", available_gb)


def plan_for(*overrides: str, hw: Hardware = CPU):
    cfg, _ = compose(list(overrides))
    return resolve(cfg, hw, run_dir="/runs/x", run_name="x")


@pytest.mark.parametrize("layout, overrides", [("both-halves", ()), ("one-interface", ONE_INTERFACE)])
def test_rank_environment_of_each_addressing_layout_matches_golden(layout, overrides):
    """The playbook's layout (the preset as it is) names both halves' HCAs; gloo and NCCL's bootstrap stay on the one
    interface that carries master_addr in both layouts."""
    plan = plan_for("+topo=dual_pgx", "+plan=zero3", *overrides)
    env = rank_env(plan, {"TORCH_CUDA_ARCH_LIST": "12.1a"})
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "enp1s0f1np1"
    assert "NCCL_NET_GDR_LEVEL" not in env
    check_golden(f"env/dual_pgx-{layout}.env", render_deepspeed_env(env))


@pytest.mark.parametrize("override", ['topo.socket_ifname="enp1s0f1np1,enP2p1s0f1np1"', 'topo.socket_ifname="^docker"'])
def test_gloo_interface_must_be_one_exact_name(override):
    with pytest.raises(LauncherError) as err:
        plan_for("+topo=dual_pgx", override)
    text = err.value.paragraph()
    assert err.value.field == "topo.socket_ifname" and "name the one interface that carries topo.master_addr" in text
    assert "NCCL's list in topo.nccl.socket_ifname" in text


@pytest.mark.parametrize("override, field", [
    ("topo.nccl.net_gdr_level=2", "topo.nccl.net_gdr_level"),
    ("+topo.nccl.extra.NCCL_NET_GDR_LEVEL=PHB", "topo.nccl.extra.NCCL_NET_GDR_LEVEL"),
    ("+topo.env.NCCL_NET_GDR_LEVEL=SYS", "topo.env.NCCL_NET_GDR_LEVEL"),
])
def test_gpudirect_rdma_on_unified_memory_is_refused_naming_the_field(override, field):
    with pytest.raises(LauncherError) as err:
        plan_for("+topo=dual_pgx", override)
    assert err.value.field == field
    assert "unified memory (topo.unified_memory=true, GB10), which has no GPUDirect RDMA" in err.value.paragraph()
    assert plan_for("+topo=dual_pgx", "topo.nccl.net_gdr_level=0").nccl_env["NCCL_NET_GDR_LEVEL"] == "0"  # off: fine
    assert plan_for("+topo=multi_gpu", "topo.gpus_per_host=2", "topo.nccl.net_gdr_level=2").nccl_env[
        "NCCL_NET_GDR_LEVEL"] == "2"


def test_memory_budget_on_gb10_is_memavailable_at_launch_not_the_presets_total(tmp_path):
    path = meminfo(tmp_path, 125_500_000, 80 * 1024**2, 60 * 1024**2, 15 * 1024**2) / "meminfo"
    assert meminfo_gb("MemAvailable", str(path)) == pytest.approx(80.0)
    job = ("model=llama3_2_3b", "method=lora", "+plan=zero2")
    for topo in ("+topo=single_pgx", "+topo=dual_pgx"):
        assert plan_for(topo, *job, hw=gb10(80.0)).memory.capacity_gb == pytest.approx(80.0)
        assert plan_for(topo, *job, hw=gb10(0.0)).memory.capacity_gb == 119.0  # not measured: the preset's
        assert plan_for(topo, *job, hw=gb10(130.0)).memory.capacity_gb == 119.0  # never above the preset
    assert plan_for("+topo=dual_pgx", *job).memory.capacity_gb == 119.0  # launched from a machine that is no GB10
    tight = plan_for("+topo=single_pgx", "model=llama3_1_8b", "method=full", "+plan=zero2", hw=gb10(40.0))
    assert not tight.memory.fits and tight.memory.capacity_gb == pytest.approx(40.0)


def test_each_gb10_host_is_judged_by_its_own_memavailable_before_the_launch():
    plan = plan_for("+topo=dual_pgx", "model=llama3_2_3b", "method=lora", "+plan=zero2")
    need = plan.memory.need_gb
    probe = "python=1\ncwd=1\nshared=1\ngpus=1\ngpumib=[N/A]\nmemavail={}\n"
    roomy = parse_probe("192.168.100.10", probe.format(int((need + 20) * 1024**2)))
    crowded = parse_probe("192.168.100.11", probe.format(int((need - 5) * 1024**2)))
    assert roomy.mem_available_gb == pytest.approx(need + 20, abs=0.01)
    check_hosts_memory(plan, [roomy], ("topo.hosts", list(plan.hosts)))
    with pytest.raises(LauncherError) as err:
        check_hosts_memory(plan, [roomy, crowded], ("topo.hosts", list(plan.hosts)))
    text = err.value.paragraph()
    assert f"host 192.168.100.11 has {need - 5:.0f} GiB of unified memory available (MemAvailable)" in text
    assert "drop_caches" in text and "run.check_memory=false launches anyway" in text
