"""`python -m launcher.preflight` on this CPU host, with real failures injected: a bound port, a missing interface,
a rank that never joins the collective."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

from tests.conftest import REPO, launcher_env, run_launcher


def preflight(*overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.preflight", *overrides], cwd=REPO, env=env or launcher_env(),
                          capture_output=True, text=True, timeout=120)


def test_preflight_passes_on_this_host_and_writes_preflight_json(run_dir):
    r = preflight(f"run.dir={run_dir}")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((run_dir / "preflight.json").read_text())
    assert doc["ok"] and doc["mode"] == "full"
    checks = {c["check"]: c for c in doc["checks"]}
    assert checks["all-reduce"]["status"] == "pass" and "bus bandwidth 1 MiB" in checks["all-reduce"]["detail"]
    assert set(doc["collective"]["busbw_gbps"]) == {"1", "4", "16", "64"}
    assert "all-reduce" in r.stdout and "preflight (full)" in r.stdout


def test_taken_master_port_fails_naming_the_port(run_dir):
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        r = preflight(f"run.dir={run_dir}", "preflight=quick", f"topo.master_port={port}")
    assert r.returncode == 1, r.stdout + r.stderr
    row = [c for c in json.loads((run_dir / "preflight.json").read_text())["checks"] if c["check"] == "master port"][0]
    assert row["status"] == "fail" and f"port {port} is taken" in row["detail"]


def test_nonexistent_interface_fails_and_lists_the_up_interfaces(run_dir):
    r = preflight(f"run.dir={run_dir}", "preflight=quick", "topo.socket_ifname=nosuch0")
    assert r.returncode == 1, r.stdout + r.stderr
    row = [c for c in json.loads((run_dir / "preflight.json").read_text())["checks"] if c["check"] == "interface"][0]
    assert row["status"] == "fail" and "no interface nosuch0; up here:" in row["detail"] and "lo" in row["detail"]
    assert row["hint"].startswith("use topo.socket_ifname=")


def test_rank_that_never_joins_times_out_naming_the_rank(run_dir):
    env = {**launcher_env(), "LAUNCHER_PREFLIGHT_NEVER_JOIN": "1", "LAUNCHER_PREFLIGHT_TIMEOUT_S": "15"}
    r = preflight(f"run.dir={run_dir}", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    row = [c for c in json.loads((run_dir / "preflight.json").read_text())["checks"] if c["check"] == "all-reduce"][0]
    assert row["status"] == "fail" and row["detail"].startswith("rank(s) 1 never joined")


def test_bad_mode_is_a_user_error_in_one_paragraph(run_dir):
    r = preflight(f"run.dir={run_dir}", "preflight=sometimes")
    assert r.returncode == 2 and "error: preflight='sometimes' cannot be used" in r.stderr and "Traceback" not in r.stderr


def test_launch_stops_before_spawning_when_the_master_port_is_taken(run_dir):
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_launcher(f"run.dir={run_dir}", f"topo.master_port={port}", timeout=120)
    assert r.returncode == 2 and f"error: topo.master_port={port} cannot be used" in r.stderr
    assert "preflight=skip" in r.stderr and not (run_dir / "logs" / "torchrun").exists()
    assert json.loads((run_dir / "preflight.json").read_text())["mode"] == "quick"
