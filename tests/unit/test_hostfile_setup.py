"""scripts/setup_dual_pgx.sh: its defaults are the dual_pgx preset's, and --dry-run changes and contacts nothing.

The real run needs two GB10 boxes on a ConnectX-7 cable; here every tool that could change the system or reach the
network is replaced by a stub that records its call, and the dry run must call none of them.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPT = REPO / "scripts" / "setup_dual_pgx.sh"
STUBBED = ("ssh", "ssh-copy-id", "ssh-keyscan", "ssh-keygen", "ping", "netplan", "sudo", "tee", "apt-get", "exportfs",
           "mount")


def dry_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    calls = tmp_path / "calls"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in STUBBED:
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 1\n')
        (stubs / name).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(SCRIPT), "--peer", "spark-b", "--dry-run", *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    return result, calls


def test_dry_run_prints_the_preset_link_settings_and_touches_nothing(tmp_path):
    preset = yaml.safe_load((REPO / "conf" / "topo" / "dual_pgx.yaml").read_text())
    result, calls = dry_run(tmp_path, "--share", "/srv/work")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    ifname = preset["nccl"]["socket_ifname"].split(",")[0]
    assert f"    {ifname}:\n" in out and f"mtu: {preset['mtu']}" in out
    assert f"addresses: [{preset['hosts'][0]}/24]" in out and f"addresses: [{preset['hosts'][1]}/24]" in out
    assert preset["master_addr"] == preset["hosts"][0]
    assert f"NCCL_IB_HCA for the cabled port: {preset['nccl']['ib_hca']}" in out
    assert "launch: python -m launcher +topo=dual_pgx" in out and "/srv/work" in out
    assert not calls.exists(), f"the dry run ran: {calls.read_text()}"
    assert not (tmp_path / ".ssh").exists()


def test_missing_peer_and_unknown_options_are_refused(tmp_path):
    no_peer = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True)
    assert no_peer.returncode == 2 and "give --peer HOST" in no_peer.stderr
    result, _ = dry_run(tmp_path, "--bogus")
    assert result.returncode == 2 and "unknown option --bogus" in result.stderr
