"""scripts/setup_dual_pgx.sh: its defaults are the dual_pgx preset's, and --dry-run changes and contacts nothing
(its `ip` path on network-namespace boxes: tests/integration/test_setup_dual_pgx.py).

The real run needs two GB10 boxes on a ConnectX-7 cable; here every tool that could change the system or reach the
network is replaced by a stub that records its call, and the dry run must call none of them.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPT = REPO / "scripts" / "setup_dual_pgx.sh"
STUBBED = ("ssh", "ssh-copy-id", "ssh-keyscan", "ssh-keygen", "ping", "ip", "netplan", "sudo", "tee", "apt-get",
           "exportfs", "mount")


def dry_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    calls = tmp_path / "calls"
    stubs = tmp_path / "bin"
    stubs.mkdir(parents=True)
    for name in STUBBED:
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 1\n')
        (stubs / name).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(SCRIPT), "--peer", "spark-b", "--dry-run", *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    return result, calls


def test_dry_run_prints_the_playbooks_netplan_for_both_halves_with_the_preset_settings_and_touches_nothing(tmp_path):
    """Both halves, each on its own subnet (NVIDIA's connect-two-sparks playbook); the preset's addresses, MTU,
    interface and HCAs; no override needed to launch."""
    preset = yaml.safe_load((REPO / "conf" / "topo" / "dual_pgx.yaml").read_text())
    result, calls = dry_run(tmp_path, "--share", "/srv/work")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert preset["socket_ifname"] == preset["nccl"]["socket_ifname"] == "enp1s0f1np1"
    for box, (first, second) in enumerate(((preset["hosts"][0], "192.168.101.10"), (preset["hosts"][1],
                                                                                  "192.168.101.11"))):
        netplan = out.split("the same with its addresses:")[box]
        assert (f"        enp1s0f1np1:\n          addresses:\n            - {first}/24\n          dhcp4: no\n"
                f"          mtu: {preset['mtu']}\n") in netplan
        assert f"        enP2p1s0f1np1:\n          addresses:\n            - {second}/24\n" in netplan
    assert "write /etc/netplan/40-cx7.yaml" in out and preset["master_addr"] == preset["hosts"][0]
    assert f"NCCL_IB_HCA for the cabled port (both layout): {preset['nccl']['ib_hca']}" in out
    assert "launch: python -m launcher +topo=dual_pgx +plan=zero2" in out and "/srv/work" in out
    assert not calls.exists(), f"the dry run ran: {calls.read_text()}"
    assert not (tmp_path / ".ssh").exists()


def test_one_interface_layout_leaves_the_second_half_unaddressed_and_names_one_hca(tmp_path):
    result, calls = dry_run(tmp_path, "--layout", "one", "--steps", "link")
    assert result.returncode == 0, result.stderr
    assert "        enP2p1s0f1np1:\n          dhcp4: no\n          mtu: 9000\n" in result.stdout
    assert "192.168.101." not in result.stdout and not calls.exists()
    assert "launch: python -m launcher +topo=dual_pgx topo.nccl.ib_hca=rocep1s0f1 +plan=zero2" in result.stdout


def test_missing_peer_unknown_options_and_bad_values_are_refused(tmp_path):
    no_peer = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True)
    assert no_peer.returncode == 2 and "give --peer HOST" in no_peer.stderr
    for args, message in ((("--bogus",), "unknown option --bogus"), (("--layout", "three"), "--layout three: use both"),
                          (("--apply", "nmcli"), "--apply nmcli: use netplan"), (("--mtu", "big"), "--mtu big")):
        result, _ = dry_run(tmp_path / args[0].strip("-"), *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
