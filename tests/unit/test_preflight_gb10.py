"""Preflight on GB10 boxes, on fake sysfs/procfs trees written as the kernel writes them (tests/fake_kernel.py):
roce_gid (the GID NCCL selects on each HCA port of NCCL_IB_HCA), memlock, mem_available, nccl_version, and the
bus-bandwidth judgement for `cx7_200g` with its thresholds."""
from __future__ import annotations

import json

import pytest

from launcher.preflight import rank_host_rows
from launcher.preflight.bandwidth import judge_busbw
from launcher.preflight.checks import FAIL, PASS, WARN, HostFacts
from launcher.preflight.probe import gather, meminfo_kb, memlock_limit, roce_facts
from launcher.preflight.report import write_json
from launcher.preflight.resources import check_mem_available, check_memlock, check_nccl_version, compare_nccl
from launcher.preflight.roce import check_roce_gid, compare_gid_subnets
from tests.fake_kernel import V1, V2, ipv4_gid, limits, link_local_gid, meminfo, roce_port, spark_rdma

BOTH = "rocep1s0f1,roceP2p1s0f1"
IFACES = {"enp1s0f1np1": {"up": True, "mtu": 9000, "addr": "192.168.100.10", "prefix": 24},
          "enP2p1s0f1np1": {"up": True, "mtu": 9000, "addr": "192.168.101.10", "prefix": 24}}


def box(tmp_path, name: str = "pgx-a", first: str = "192.168.100.10", second: str = "192.168.101.10",
        ifaces: dict | None = None) -> HostFacts:
    return HostFacts(name, {"roce": roce_facts(str(spark_rdma(tmp_path / name, first, second))),
                            "ifaces": ifaces or IFACES})


def test_gid_tables_are_read_as_the_kernel_lists_them_and_unused_slots_are_skipped(tmp_path):
    roce = roce_facts(str(spark_rdma(tmp_path, "192.168.100.10", "")))
    port = roce["rocep1s0f1"]["1"]
    assert port["link_layer"] == "Ethernet" and port["state"] == "4: ACTIVE"
    assert port["gids"] == [[0, link_local_gid(), V1, "enp1s0f1np1"], [1, link_local_gid(), V2, "enp1s0f1np1"],
                            [2, ipv4_gid("192.168.100.10"), V1, "enp1s0f1np1"],
                            [3, "0000:0000:0000:0000:0000:ffff:c0a8:640a", V2, "enp1s0f1np1"]]
    assert [g[0] for g in roce["roceP2p1s0f1"]["1"]["gids"]] == [0, 1] and roce["rocep1s0f0"]["1"]["state"] == "1: DOWN"


def test_both_halves_addressed_pass_with_the_gid_nccl_selects_on_each(tmp_path):
    row = check_roce_gid(box(tmp_path), BOTH, {}, mtu=9000)
    assert row is not None and row.status == PASS and row.check == "roce_gid"
    assert row.detail == ("rocep1s0f1:1 GID 3 RoCE v2 192.168.100.10 (enp1s0f1np1); "
                          "roceP2p1s0f1:1 GID 3 RoCE v2 192.168.101.10 (enP2p1s0f1np1)")


def test_an_unaddressed_half_fails_naming_the_link_local_gid_nccl_would_use_and_what_works(tmp_path):
    row = check_roce_gid(box(tmp_path, second=""), BOTH, {})
    assert row is not None and row.status == FAIL
    assert row.detail == (f"roceP2p1s0f1:1 has no RoCE v2 IPv4 GID that NCCL selects: it would use GID 0 "
                          f"{link_local_gid()} (IB/RoCE v1); enP2p1s0f1np1 has no IPv4 address")
    assert "give enP2p1s0f1np1 an IPv4 address on a subnet of its own" in row.hint
    assert "topo.nccl.ib_hca=rocep1s0f1" in row.hint
    one = check_roce_gid(box(tmp_path / "one", second=""), "rocep1s0f1", {})  # the one-interface layout
    assert one is not None and one.status == PASS and "roceP2p1s0f1" not in one.detail


def test_nccl_gid_selection_follows_its_environment_and_rejects_a_roce_v1_only_address(tmp_path):
    f = box(tmp_path)
    assert "GID 2" in check_roce_gid(f, "rocep1s0f1", {"NCCL_IB_ROCE_VERSION_NUM": "1"}).detail  # type: ignore[union-attr]
    forced = check_roce_gid(f, "rocep1s0f1", {"NCCL_IB_GID_INDEX": "1"})
    assert forced is not None and forced.status == FAIL and f"GID 1 {link_local_gid()} (RoCE v2)" in forced.detail
    base = roce_port(tmp_path / "v1", "rocep1s0f1", "enp1s0f1np1", "192.168.100.10")
    (base / "gid_attrs" / "types" / "3").write_text("IB/RoCE v1\n")
    v1_only = HostFacts("a", {"roce": roce_facts(str(tmp_path / "v1")), "ifaces": IFACES})
    row = check_roce_gid(v1_only, "rocep1s0f1", {})
    assert row is not None and row.status == FAIL and f"GID 2 {ipv4_gid('192.168.100.10')} (IB/RoCE v1)" in row.detail


def test_ports_are_picked_as_nccl_ib_hca_names_them_and_down_ports_are_left_out(tmp_path):
    f = box(tmp_path)
    assert check_roce_gid(f, "", {}).detail.count("RoCE v2") == 2  # type: ignore[union-attr]  # all ACTIVE ports
    assert "roceP2p1s0f1" not in check_roce_gid(f, "^roceP2p1s0f1", {}).detail  # type: ignore[union-attr]
    assert check_roce_gid(f, "=rocep1s0f", {}) is None  # exact names: no such device (the rdma row says so)
    assert check_roce_gid(f, "rocep1s0f1:2", {}) is None
    assert check_roce_gid(HostFacts("x", {}, error="ssh failed"), BOTH, {}) is None


def test_both_halves_in_one_subnet_or_below_the_mtu_warn(tmp_path):
    same = box(tmp_path, second="192.168.100.20", ifaces={**IFACES, "enP2p1s0f1np1": {"mtu": 9000, "prefix": 24}})
    row = check_roce_gid(same, BOTH, {}, mtu=9000)
    assert row is not None and row.status == WARN and "two ports in one subnet" in row.detail
    low = box(tmp_path / "mtu", ifaces={**IFACES, "enP2p1s0f1np1": {"mtu": 1500, "prefix": 24}})
    row = check_roce_gid(low, BOTH, {}, mtu=9000)
    assert row is not None and row.status == WARN and "enP2p1s0f1np1 has MTU 1500, topo.mtu is 9000" in row.detail


def test_a_half_addressed_in_the_other_halfs_subnet_on_one_box_fails_across_hosts(tmp_path):
    a, b = box(tmp_path), box(tmp_path, "pgx-b", "192.168.100.11", "192.168.101.11")
    ok = compare_gid_subnets([a, b], BOTH, {})
    assert ok is not None and ok.status == PASS
    assert ok.detail == "rocep1s0f1:1 on 192.168.100.0/24, roceP2p1s0f1:1 on 192.168.101.0/24 on every host"
    swapped = box(tmp_path, "pgx-c", "192.168.101.11", "192.168.100.11")
    row = compare_gid_subnets([a, swapped], BOTH, {})
    assert row is not None and row.status == FAIL
    assert "rocep1s0f1:1 is on 192.168.100.0/24 on pgx-a, 192.168.101.0/24 on pgx-c" in row.detail


@pytest.mark.parametrize("memlock, status", [("unlimited", PASS), (str(8 << 20), WARN), (str(4 << 30), PASS)])
def test_memlock_is_read_from_proc_limits_and_a_small_limit_warns_with_the_fix(tmp_path, memlock, status):
    value = memlock_limit(str(limits(tmp_path, memlock)))
    assert value == memlock
    row = check_memlock(HostFacts("pgx-b", {"memlock": value}), expects_rdma=True)
    assert row is not None and row.status == status and "in an ssh session, as the ranks get it" in row.detail
    if status == WARN:
        assert "ulimit -l is 8192 KiB" in row.detail and "memlock unlimited" in row.hint
    assert check_memlock(HostFacts("pgx-b", {"memlock": value}), expects_rdma=False) is None


@pytest.mark.parametrize("need_gb, status", [(40.0, PASS), (56.0, WARN), (80.0, FAIL)])
def test_mem_available_judges_the_estimate_against_memavailable_not_memtotal(tmp_path, need_gb, status):
    info = meminfo_kb(str(meminfo(tmp_path, 128_000_000, 60 * 1024**2, 8 * 1024**2, 50 * 1024**2)))
    assert info == {"MemTotal": 128_000_000, "MemFree": 8 * 1024**2, "MemAvailable": 60 * 1024**2,
                    "Cached": 50 * 1024**2}
    row = check_mem_available(HostFacts("pgx-a", {"meminfo": info}), need_gb, unified=True)
    assert row is not None and row.status == status
    assert row.detail.startswith("60.0 GiB available of 122.1 GiB unified memory (free 8.0, page cache 50.0)")
    if status != PASS:
        assert "drop_caches" in row.hint and "desktop session" in row.hint
    assert check_mem_available(HostFacts("h", {"meminfo": info}), need_gb, unified=False) is None


def test_nccl_version_must_be_new_enough_for_sm121_and_the_same_on_every_host():
    def facts(nccl: str) -> dict:
        return {"versions": {"nccl": nccl}, "gpu": {"name": "NVIDIA GB10", "arch": "12.1"}}

    assert check_nccl_version(HostFacts("a", facts("2.28.9"))).status == PASS  # type: ignore[union-attr]
    old = check_nccl_version(HostFacts("a", facts("2.27.7")))
    assert old is not None and old.status == WARN and "NVIDIA builds 2.28.x" in old.detail
    assert check_nccl_version(HostFacts("a", facts("none"))).status == FAIL  # type: ignore[union-attr]
    assert check_nccl_version(HostFacts("a", {"versions": {}})) is None  # quick mode: torch not imported
    row = compare_nccl([HostFacts("a", facts("2.28.9")), HostFacts("b", facts("2.27.7"))])
    assert row is not None and row.status == FAIL and row.detail == "NCCL differs: 2.27.7 on b; 2.28.9 on a"


@pytest.mark.parametrize("busbw, ib_hca, status, words", [
    (23.0, BOTH, PASS, "both halves carry traffic: the two-subnet layout (NVIDIA's playbook) works"),
    (17.0, BOTH, PASS, "NVIDIA's cluster check expects >= 21.9 GB/s"),
    (16.9, BOTH, WARN, "is at most one half of the link (~12.5 GB/s each, ~22 with both): one half is not carrying"),
    (18.0, "rocep1s0f1", PASS, "one device reached what only both halves give: the one-interface layout is enough"),
    (11.8, "rocep1s0f1", WARN, "what one device in topo.nccl.ib_hca (the one-interface layout) gives"),
    (2.9, BOTH, WARN, "NCCL most likely ran over TCP sockets"),
])
def test_cx7_bus_bandwidth_thresholds_say_which_addressing_layout_the_figure_supports(busbw, ib_hca, status, words):
    row = judge_busbw("cx7_200g", busbw, True, ib_hca)
    assert row is not None and row.check == "bus bandwidth" and row.status == status and words in row.detail
    if status == WARN and busbw > 4 and ib_hca == BOTH:
        assert "without a RoCE v2 IPv4 GID" in row.hint and "MTU" in row.hint and "topo.nccl.ib_hca" in row.hint


def test_probe_on_fake_trees_gives_the_rows_preflight_json_names(tmp_path):
    """gather() on a fake /sys and /proc, through the rows of a dual_pgx plan, into preflight.json."""
    from launcher.config.compose import compose
    from launcher.plan.hardware import Hardware
    from launcher.plan.resolve import resolve

    spark_rdma(tmp_path / "sys", "192.168.100.10", "")
    meminfo(tmp_path / "proc", 128_000_000, 100 * 1024**2, 90 * 1024**2, 5 * 1024**2)
    limits(tmp_path / "proc", str(64 << 10))
    facts = gather({"run_dir": str(tmp_path / "run"), "sys_root": str(tmp_path / "sys"),
                    "proc_root": str(tmp_path / "proc")})
    cfg, _ = compose(["+topo=dual_pgx", "+plan=zero3"])
    plan = resolve(cfg, Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64"), run_dir="/r", run_name="x")
    rows = rank_host_rows(plan, [HostFacts("pgx-a", facts)])
    write_json(tmp_path / "run", rows, {})
    doc = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert {(c["check"], c["status"]) for c in doc["checks"]} == {("roce_gid", FAIL), ("memlock", WARN),
                                                                 ("mem_available", PASS)}
