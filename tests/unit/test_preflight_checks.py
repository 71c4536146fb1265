"""Preflight's judging functions: pure, on facts as probe.py reports them."""
from __future__ import annotations

import socket

import pytest

from launcher.preflight import mode_for
from launcher.preflight.checks import FAIL, PASS, HostFacts, check_arch_list, check_gpus, check_iface, check_port, compare_versions
from launcher.preflight.collective import CollectiveResult, judge, parse_transports
from launcher.preflight.probe import gather, port_free

IFACES = {"lo": {"up": True, "mtu": 65536, "addr": "127.0.0.1"},
          "enp1s0f1np1": {"up": True, "mtu": 9000, "addr": "10.0.0.1"},
          "wlan0": {"up": True, "mtu": 1500, "addr": "192.168.1.5"},
          "eth9": {"up": False, "mtu": 1500, "addr": ""}}


def host(name: str, torch: str = "2.5.1", launcher_hash: str = "abc", gpus: int = 1, **facts: object) -> HostFacts:
    base = {"versions": {"python": "3.12.3", "torch": torch, "deepspeed": "0.16.0", "transformers": "4.46.0"},
            "launcher_hash": launcher_hash, "conf_hash": "c1", "plan_hash": "p1", "interpreter": "/venv/bin/python",
            "gpu": {"count": gpus, "name": "NVIDIA GB10", "memory_gb": 119.7}, "ifaces": IFACES, "route": {}}
    return HostFacts(name, {**base, **facts})


def test_version_mismatch_names_each_host_and_its_version():
    rows = compare_versions([host("pgx1"), host("pgx2", torch="2.4.0")])
    bad = [r for r in rows if r.status == FAIL]
    assert [r.check for r in bad] == ["same torch"]
    assert "2.4.0 on pgx2" in bad[0].detail and "2.5.1 on pgx1" in bad[0].detail


def test_different_launcher_code_on_one_host_fails():
    rows = compare_versions([host("a"), host("b"), host("c", launcher_hash="zzz")])
    bad = [r for r in rows if r.status == FAIL]
    assert [r.check for r in bad] == ["same launcher code"] and "zzz on c" in bad[0].detail and "abc on a, b" in bad[0].detail


def test_identical_hosts_pass_every_comparison():
    assert all(r.status == PASS for r in compare_versions([host("a"), host("b")]))


def test_missing_interface_lists_the_up_ones_and_suggests_the_route_to_the_peer():
    f = host("pgx1", route={"pgx2": "10.0.0.1"})
    row = check_iface(f, "nosuch0", 0, ["pgx2"])
    assert row is not None and row.status == FAIL
    assert "up here: enp1s0f1np1, lo, wlan0" in row.detail and "eth9" not in row.detail
    assert row.hint == "use topo.socket_ifname=enp1s0f1np1"


def test_missing_interface_without_peers_suggests_an_up_non_loopback_one():
    row = check_iface(host("h"), "nosuch0", 0, [])
    assert row is not None and row.hint == "use topo.socket_ifname=enp1s0f1np1"


def test_interface_prefix_down_and_wrong_mtu_fail_naming_it():
    assert check_iface(host("h"), "eth9", 0, []).detail == "eth9 is down"  # type: ignore[union-attr]
    row = check_iface(host("h"), "enp1s0f1np1", 1500, [])
    assert row is not None and row.status == FAIL and "MTU 9000" in row.detail
    assert check_iface(host("h"), "enp1", 9000, []).status == PASS  # type: ignore[union-attr]


def test_port_check_fails_on_a_port_bound_here_and_passes_once_released():
    s = socket.socket()
    s.bind(("", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        assert port_free(port)
        row = check_port(HostFacts("localhost", {"port": {"port": port, "error": port_free(port)}}))
        assert row is not None and row.status == FAIL and f"port {port} is taken" in row.detail
    finally:
        s.close()
    assert port_free(port) == ""


def test_gpu_count_below_procs_per_host_fails_with_the_numbers():
    row = check_gpus(host("pgx2", gpus=1), "cuda", 2)
    assert row is not None and row.status == FAIL
    assert "1 GPU(s)" in row.detail and "starts 2 rank(s)" in row.detail and row.hint == "use topo.gpus_per_host=1"
    assert check_gpus(host("pgx2", gpus=2), "cuda", 2).status == PASS  # type: ignore[union-attr]
    assert check_gpus(host("cpu", gpus=0), "cpu", 2) is None


def test_arch_list_suffixes_warn_and_garbage_fails():
    assert check_arch_list("9.0;12.1").status == PASS  # type: ignore[union-attr]
    assert check_arch_list("12.1a").status == "warn"  # type: ignore[union-attr]
    assert check_arch_list("hopper").status == FAIL  # type: ignore[union-attr]


def test_nccl_transport_is_parsed_and_socket_fallback_fails_when_rdma_expected():
    log = ("pgx1:1:1 [0] NCCL INFO NET/IB : Using [0]rocep1s0f1:1/RoCE [RO]; OOB enp1s0f1np1:10.0.0.1<0>\n"
           "pgx1:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via NET/IB/0\n")
    assert parse_transports(log)[0] == "NET/IB [0]rocep1s0f1:1/RoCE"
    sock = parse_transports("NCCL INFO NET/IB : Using [RO]; OOB eth0:10.0.0.1<0>\n"  # measured on an H200 box
                            "NCCL INFO NET/Socket : Using [0]enp1s0f1np1:10.0.0.1<0>\n")
    assert sock == ("NET/Socket",)
    rows = judge(CollectiveResult(True, {"1024": 3.1}, sock), expects_rdma=True, link="cx7_200g")
    assert {r.check: r.status for r in rows} == {"all-reduce": PASS, "bus bandwidth": "warn", "transport": FAIL}


def test_bus_bandwidth_is_judged_against_the_topology_link():
    healthy = judge(CollectiveResult(True, {"1": 40.0, "1024": 320.0}, ("P2P/CUMEM",)), False, "nvlink")
    assert [(r.check, r.status) for r in healthy][1] == ("bus bandwidth", PASS)
    assert "expected ~100 for nvlink" in healthy[1].detail
    slow = judge(CollectiveResult(True, {"1024": 7.0}, ("SHM",)), False, "nvlink")[1]
    assert slow.status == "warn" and "a healthy nvlink link gives ~100 GB/s" in slow.detail
    assert "nvidia-smi topo -m" in slow.hint
    assert [r.check for r in judge(CollectiveResult(True, {"64": 1.0}), False, "")] == ["all-reduce"]


def test_unknown_link_names_the_known_ones():
    from launcher.config.topology import TopoConfig
    from launcher.errors import LauncherError

    with pytest.raises(LauncherError) as err:
        TopoConfig(link="nvlink5")
    assert "topo.link='nvlink5'" in str(err.value) and "cx7_200g" in str(err.value)


def test_collective_timeout_names_the_rank_that_never_joined():
    res = CollectiveResult(False, missing_ranks=("1 (10.0.0.2)",), stuck_ranks=("0 (10.0.0.1)",),
                           error="no result within 10 s")
    rows = judge(res, False, "")
    assert rows[0].status == FAIL and rows[0].detail.startswith("rank(s) 1 (10.0.0.2) never joined")


def test_auto_is_quick_for_one_host_and_full_for_several():
    assert (mode_for("auto", 1), mode_for("auto", 2), mode_for("skip", 2)) == ("quick", "full", "skip")


def test_probe_reports_interfaces_and_versions_without_torch(tmp_path):
    facts = gather({"run_dir": str(tmp_path / "run"), "deep": False})
    assert "lo" in facts["ifaces"] and facts["ifaces"]["lo"]["addr"] == "127.0.0.1"
    assert facts["run_dir"]["writable"] and facts["run_dir"]["dir"] == str(tmp_path)
    assert "cuda" not in facts["versions"]


def test_allocation_rows_replace_the_submit_hosts_placeholder_for_the_all_reduce(tmp_path):
    """On Slurm the submit host writes preflight.json with the all-reduce pending; the job's first step fills it in."""
    from launcher.preflight.allocation import _merge
    from launcher.preflight.checks import WARN, Check
    from launcher.preflight.report import write_json
    import json

    write_json(tmp_path, [Check("master port", "login1", PASS, "port 29500 is free"),
                          Check("all-reduce", "all", WARN, "not run here")], {"mode": "full"})
    rows = judge(CollectiveResult(True, {"1": 1.0, "64": 2.0}, ("NET/Socket",)), False, "")
    _merge(tmp_path, rows, {"job": "17", "nodes": ["n1", "n2"], "collective": {"busbw_gbps": {"64": 2.0}}})
    doc = json.loads((tmp_path / "preflight.json").read_text())
    assert [(c["check"], c["status"]) for c in doc["checks"]] == [("master port", PASS), ("all-reduce", PASS),
                                                                 ("transport", PASS)]
    assert doc["mode"] == "full" and doc["allocation"]["job"] == "17" and doc["ok"]


def test_each_host_is_asked_whether_its_cache_holds_the_hub_model(tmp_path):
    """probe.hub_facts on a real (empty, then filled) huggingface_hub cache; the check's verdict per host."""
    from launcher.preflight.checks import FAIL, PASS, WARN, check_model_cache
    from launcher.preflight.probe import hub_facts

    assert hub_facts({"ids": ["example-org/m"], "env": {"HF_HUB_CACHE": str(tmp_path)}}) == {"example-org/m": False}
    snap = tmp_path / "models--example-org--m" / "snapshots" / "r1"
    snap.mkdir(parents=True)
    (tmp_path / "models--example-org--m" / "refs").mkdir()
    (tmp_path / "models--example-org--m" / "refs" / "main").write_text("r1")
    (snap / "config.json").write_text("{}")
    assert hub_facts({"ids": ["example-org/m"], "env": {"HF_HUB_CACHE": str(tmp_path)}}) == {"example-org/m": True}
    assert hub_facts({}) == {}
    has = HostFacts("h1", {"hub": {"example-org/m": True}})
    lacks = HostFacts("h2", {"hub": {"example-org/m": False}})
    assert check_model_cache(has, offline=True).status == PASS
    assert check_model_cache(lacks, offline=False).status == WARN
    row = check_model_cache(lacks, offline=True)
    assert row.status == FAIL and "HF_HUB_OFFLINE" in row.detail and "hf download example-org/m" in row.hint
    assert check_model_cache(HostFacts("h3", {}), offline=True) is None
