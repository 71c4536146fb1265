"""scripts/setup_dual_pgx.sh's `ip` path on two network-namespace "boxes" whose link interfaces carry the GB10 names.

Box A runs the script; B is reached over ssh on a management veth, as a Spark is before its link is up. Each box gets
a veth pair per ConnectX-7 half (enp1s0f1np1 and enP2p1s0f1np1), the script addresses and sizes them and checks them;
the RDMA part of its check reads fake sysfs trees (tests/fake_kernel.py), one per box. Nothing leaves the namespaces.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fake_kernel import spark_rdma
from tests.integration.netns import NetnsHosts, missing_binaries, sh

pytestmark = [pytest.mark.integration, pytest.mark.netns]
SCRIPT = REPO / "scripts" / "setup_dual_pgx.sh"
HALVES = ("enp1s0f1np1", "enP2p1s0f1np1")


@pytest.fixture
def boxes(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("network namespaces and sshd need root")
    missing = missing_binaries() + ([] if shutil.which("ping") else ["ping"])
    if missing:
        pytest.skip(f"missing {missing}: apt-get install -y iproute2 iputils-ping openssh-server openssh-client pdsh")
    net = NetnsHosts(tmp_path / "netns")
    (tmp_path / "netns").mkdir()
    try:
        net.start()
        yield net
    finally:
        net.close()


def setup_script(net: NetnsHosts, tmp_path: Path, *args: str, rdma_b: tuple[str, str] = ("192.168.100.11",
                 "192.168.101.11")) -> subprocess.CompletedProcess[str]:
    """The script in box A with B's management address as --peer; ssh finds this instance's keys through a wrapper."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {net.ssh_config} "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    sys_a = spark_rdma(tmp_path / "sys-a", "192.168.100.10", "192.168.101.10")
    sys_b = spark_rdma(tmp_path / "sys-b", *rdma_b)
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}
    argv = [*net.exec_argv(net.hosts[0]), "bash", str(SCRIPT), "--peer", net.hosts[1].addr, "--apply", "ip",
            "--sysfs", str(sys_a), "--sysfs-b", str(sys_b), *args]
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def link_of(net: NetnsHosts, box: int, dev: str) -> str:
    return sh("ip", "-n", net.hosts[box].netns, "-o", "addr", "show", "dev", dev).stdout + \
        sh("ip", "-n", net.hosts[box].netns, "-o", "link", "show", "dev", dev).stdout


def test_both_halves_get_their_subnet_and_mtu_and_the_final_check_passes_on_both_boxes(boxes, tmp_path):
    for dev in HALVES:
        boxes.cable(dev)
    result = setup_script(boxes, tmp_path, "--steps", "cable,link,check")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for box, (first, second) in enumerate((("192.168.100.10", "192.168.101.10"), ("192.168.100.11", "192.168.101.11"))):
        assert f"inet {first}/24" in link_of(boxes, box, HALVES[0]) and "mtu 9000" in link_of(boxes, box, HALVES[0])
        assert f"inet {second}/24" in link_of(boxes, box, HALVES[1]) and "mtu 9000" in link_of(boxes, box, HALVES[1])
    assert "A: enP2p1s0f1np1 enp1s0f1np1 | B: enP2p1s0f1np1 enp1s0f1np1" in out
    for line in ("A: ok rocep1s0f1 port 1 GID 3 is RoCE v2 192.168.100.10",
                 "B: ok roceP2p1s0f1 port 1 GID 3 is RoCE v2 192.168.101.11", "A: ok 9000-byte ping over enp1s0f1np1 to 192.168.100.11",
                 "A: ok 9000-byte ping over enP2p1s0f1np1 to 192.168.101.11", "B: ok enP2p1s0f1np1 MTU 9000"):
        assert line in out, out
    assert "NCCL_IB_HCA for the cabled port (both layout): rocep1s0f1,roceP2p1s0f1" in out
    assert "launch: python -m launcher +topo=dual_pgx +plan=zero2" in out  # the preset as it is
    again = setup_script(boxes, tmp_path, "--steps", "link,check")  # a rerun changes nothing and passes
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_half_without_its_roce_gid_or_mtu_fails_the_final_check_naming_box_and_half(boxes, tmp_path):
    for dev in HALVES:
        boxes.cable(dev)
    assert setup_script(boxes, tmp_path, "--steps", "link").returncode == 0
    sh("ip", "-n", boxes.hosts[1].netns, "link", "set", "dev", HALVES[1], "mtu", "1500")
    result = setup_script(boxes, tmp_path, "--steps", "check", rdma_b=("192.168.100.11", ""))
    out = result.stdout
    assert result.returncode == 1 and "check(s) failed above" in result.stderr, out + result.stderr
    assert "B: FAIL no RoCE v2 GID for 192.168.101.11 on enP2p1s0f1np1's RDMA device" in out
    assert "B: FAIL enP2p1s0f1np1 MTU 1500, want 9000" in out
    assert "A: FAIL no 9000-byte ping over enP2p1s0f1np1 to 192.168.101.11" in out
    assert "A: ok 9000-byte ping over enp1s0f1np1 to 192.168.100.11" in out


def test_one_interface_layout_addresses_the_first_half_only_and_prints_its_override(boxes, tmp_path):
    for dev in HALVES:
        boxes.cable(dev)
    result = setup_script(boxes, tmp_path, "--layout", "one", "--steps", "cable,link,check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "inet " not in link_of(boxes, 0, HALVES[1]) and "mtu 9000" in link_of(boxes, 1, HALVES[1])
    assert "inet 192.168.100.11/24" in link_of(boxes, 1, HALVES[0])
    assert "launch: python -m launcher +topo=dual_pgx topo.nccl.ib_hca=rocep1s0f1 +plan=zero2" in result.stdout


def test_another_port_cabled_on_box_b_is_refused_before_anything_changes(boxes, tmp_path):
    boxes.cable("enp1s0f1np1", "enp1s0f0np0")
    result = setup_script(boxes, tmp_path, "--steps", "cable,link,check")
    assert result.returncode == 1
    assert "A and B have different ports Up (A: enp1s0f1np1; B: enp1s0f0np0): cable the same port" in result.stderr
    assert "inet " not in link_of(boxes, 0, "enp1s0f1np1")
