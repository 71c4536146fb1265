"""Hostfile launches on real "hosts": two network namespaces, an sshd in each, DeepSpeed's runner over pdsh.

The launcher runs inside the first namespace as a user would run it on the first box; every rank is started over
ssh, CPU ZeRO-3 over gloo on the veth link. Traffic goes only to the namespace addresses these tests create.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, launcher_env, read_metrics, run_launcher
from tests.integration.netns import IFNAME, NetnsHosts, missing_binaries
from tests.integration.test_errors import assert_user_error
from tests.integration.test_user_scripts import assert_engine_ran_the_rendered_config

pytestmark = [pytest.mark.integration, pytest.mark.netns]
ACCELERATE_SCRIPT = ("preflight=quick", "script=examples/train_accelerate.py", "--", "--max_steps", "4", "--save_every",
                     "2", "--seq_len", "128")
SECRET = "wandb-key-that-must-not-leak-0451"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("network namespaces and sshd need root")
    if missing_binaries():
        pytest.skip(f"missing {missing_binaries()}: apt-get install -y iproute2 openssh-server openssh-client pdsh")
    net = NetnsHosts(tmp_path_factory.mktemp("netns"))
    try:
        net.start()
        yield net
    finally:
        net.close()


def launcher_argv(net: NetnsHosts, hostfile: Path, *overrides: str) -> list[str]:
    """`python -m launcher hostfile=...` on the first host, as a user on the first box would type it."""
    return [*net.exec_argv(net.hosts[0]), sys.executable, "-m", "launcher", f"hostfile={hostfile}", "+plan=zero3",
            "topo.accelerator=cpu", f"topo.socket_ifname={IFNAME}", *overrides]


def launch_env(net: NetnsHosts) -> dict[str, str]:
    # The key must not travel; wandb itself stays off (no test traffic leaves the namespaces).
    return {**launcher_env(), **net.env, "WANDB_API_KEY": SECRET, "WANDB_MODE": "disabled"}


def launch_on(net: NetnsHosts, hostfile: Path, *overrides: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run(launcher_argv(net, hostfile, *overrides), cwd=REPO, env=launch_env(net), capture_output=True,
                          text=True, timeout=timeout)


def preempt(net: NetnsHosts, run_dir: Path) -> None:
    """README's recipe: SIGUSR1 to the ranks of one run on every host (not to DeepSpeed's launcher, which it kills)."""
    hosts = ",".join(h.addr for h in net.hosts)
    sh = [*net.exec_argv(net.hosts[0]), "pdsh", "-R", "ssh", "-w", hosts, f'pkill -USR1 -f -- "-m launcher.train.worker {run_dir}"']
    subprocess.run(sh, env=launch_env(net), capture_output=True, text=True, timeout=60)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def write_hostfile(net: NetnsHosts, path: Path, slots: int) -> Path:
    path.write_text("# two namespace hosts\n" + "".join(f"{h.addr} slots={slots}\n" for h in net.hosts))
    return path


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def assert_no_secret_written(run_dir: Path, *outputs: str) -> None:
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"secret written to {f}"
    assert all(SECRET not in out for out in outputs), "secret on a command line (visible in ps on the hosts)"


@pytest.mark.parametrize("slots, stop, steps", [(1, "usr1", 60), (2, "ctrl-c", 16)], ids=["2x1-usr1", "2x2-ctrl-c"])
def test_two_hosts_train_zero3_over_gloo_save_when_stopped_and_resume_from_the_latest_checkpoint(
        hosts, tmp_path, slots, stop, steps):
    """Stopped mid-run, by SIGUSR1 to the ranks of every host (README's recipe) or by Ctrl-C on the launcher
    (DeepSpeed's runner stops every host; the ranks save on the way out): no process is left on any host, the
    newest checkpoint is complete, and the same command resumes from it (2x2: four ZeRO-3 shards over two hosts; the
    2x1 case stops there, for the suite's time)."""
    run_dir, hostfile = tmp_path / "run", write_hostfile(hosts, tmp_path / "hosts", slots)
    # the full preflight (the default for several hosts) runs in the 2x1 case; 2x2 takes the quick one (suite time)
    checks = () if slots == 1 else ("preflight=quick",)
    command = launcher_argv(hosts, hostfile, f"run.dir={run_dir}", f"train.max_steps={steps}", "train.save_every=100",
                            *checks)
    # DeepSpeed's own runner would stop the job with `pkill -f "<python> -u -m deepspeed.launcher.launch"` on every
    # host, which another job's launcher matches too: this decoy stands for one and must outlive the stop.
    decoy = another_deepspeed_launch(tmp_path / "decoy")
    log = tmp_path / "first.out"
    with open(log, "w") as out:
        first = subprocess.Popen(command, cwd=REPO, env=launch_env(hosts), stdout=out, stderr=subprocess.STDOUT)
        metrics = run_dir / "metrics.jsonl"
        try:
            wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2 or
                                first.poll() is not None, 300, "2 trained steps")
            if stop == "usr1":
                preempt(hosts, run_dir)
            else:
                first.send_signal(signal.SIGINT)
            first.wait(timeout=300)
            wait_until(lambda: not hosts.processes_left(), 90, "every rank on every host to end")
            assert decoy.poll() is None, "the stop ended another job's DeepSpeed launcher"
        finally:
            if first.poll() is None:
                first.kill()
            decoy.kill()
    output = log.read_text()
    saved = [int(p.name.removeprefix("global_step")) for p in (run_dir / "checkpoints").glob("global_step*")]
    assert len(saved) == 1 and 2 <= saved[0] < steps, output[-4000:]
    assert (run_dir / "checkpoints" / f"global_step{saved[0]}" / "complete.json").exists()
    # the ranks' stderr: rank 0's relayed by pdsh into engine.log, the others' in rank<N>.out
    engine_log = "".join(p.read_text() for p in [run_dir / "logs" / "engine.log", *(run_dir / "logs").glob("rank*.out")])
    if stop == "usr1":
        assert "received SIGUSR1: saving at the next step boundary" in engine_log
    else:  # the launcher itself was stopped: the request reached both hosts through the lease; resumable, exit 75
        assert "stopping (Ctrl-C): saving at the next step" in output
        assert "stop requested by the launcher: saving at the next step boundary" in engine_log  # the first to see it
        assert first.returncode == 75 and f"saved at global step {saved[0]}" in output, output[-3000:]
        assert "Traceback" not in output
    for h in hosts.hosts:  # pdsh prefixes each host's output: both ran ranks
        assert f"{h.addr}: " in output
    assert all((run_dir / "logs" / f"rank{r}.log").exists() for r in range(2 * slots))
    assert f"GLOO_SOCKET_IFNAME={IFNAME}\n" in (run_dir / "deepspeed_env").read_text()
    if slots == 1:
        assert_preflight_ran_the_all_reduce_on_every_rank(hosts, run_dir, slots)
        assert_no_secret_written(run_dir, output)
        return

    # The same command, three steps past the save (the suite's time: the first run's step count only has to outlast
    # the signal), with the quick preflight.
    end = saved[0] + 3
    again = launch_on(hosts, hostfile, f"run.dir={run_dir}", f"train.max_steps={end}", "train.save_every=100",
                      "preflight=quick")
    assert_ok(again)
    assert f"resumed from global step {saved[0]}" in again.stdout
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, end + 1))
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.3
    assert (run_dir / "checkpoints" / "latest").read_text() == f"global_step{end}"
    assert_no_secret_written(run_dir, output, again.stdout, again.stderr)


def test_launcher_killed_alone_stops_the_ranks_on_every_host_and_the_rerun_resumes(hosts, tmp_path):
    """SIGKILL to the launcher only: the ranks were started over ssh (no terminal, so no SIGHUP reaches them); they
    see the lease's counter stop and end, with DeepSpeed's per-host launchers, on both hosts."""
    run_dir, hostfile = tmp_path / "run", write_hostfile(hosts, tmp_path / "hosts", 1)
    command = launcher_argv(hosts, hostfile, f"run.dir={run_dir}", "train.max_steps=200", "train.save_every=2",
                            "preflight=quick")
    with open(tmp_path / "first.out", "w") as out:
        first = subprocess.Popen(command, cwd=REPO, env=launch_env(hosts), stdout=out, stderr=subprocess.STDOUT)
    metrics = run_dir / "metrics.jsonl"
    try:
        wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 300, "3 trained steps")
    finally:
        first.kill()
    first.wait()
    wait_until(lambda: not hosts.processes_left(), 15, "every rank and launcher on every host to end")
    size = metrics.stat().st_size
    time.sleep(2)
    assert metrics.stat().st_size == size, "metrics still growing after the launcher died"

    latest = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("global_step"))
    again = launch_on(hosts, hostfile, f"run.dir={run_dir}", f"train.max_steps={latest + 2}", "train.save_every=2",
                      "preflight=quick")
    assert_ok(again)
    assert "warning: taking over run dir" in again.stderr and f"resumed from global step {latest}" in again.stdout


def test_a_rank_that_raises_on_the_second_host_is_named_with_its_exception(hosts, tmp_path):
    run_dir, hostfile = tmp_path / "run", write_hostfile(hosts, tmp_path / "hosts", 1)
    result = launch_on(hosts, hostfile, f"run.dir={run_dir}", "preflight=quick",
                       "script=tests/integration/fail_at_step.py", "--", "--fail_rank", "1", "--fail_step", "2")
    assert result.returncode != 0
    err = result.stderr
    assert f"rank 1 (on {hosts.hosts[1].name}) failed with ValueError: rank 1 fails at global step 2 on purpose" in err
    assert "Connection closed by peer" not in err and "Traceback" not in err + result.stdout


def another_deepspeed_launch(root: Path) -> subprocess.Popen:
    """A process whose command line is another job's DeepSpeed per-host launcher, `<python> -u -m
    deepspeed.launcher.launch ...` (a stand-in module that sleeps)."""
    package = root / "deepspeed" / "launcher"
    package.mkdir(parents=True)
    for init in (root / "deepspeed" / "__init__.py", package / "__init__.py"):
        init.write_text("")
    (package / "launch.py").write_text("import time\ntime.sleep(900)\n")
    return subprocess.Popen([sys.executable, "-u", "-m", "deepspeed.launcher.launch", "--world_info=another-job"],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)})


def assert_preflight_ran_the_all_reduce_on_every_rank(net: NetnsHosts, run_dir: Path, slots: int) -> None:
    """A multi-host launch runs the full preflight first: the all-reduce through DeepSpeed's runner on every host."""
    doc = json.loads((run_dir / "preflight.json").read_text())
    assert doc["mode"] == "full" and {h.addr for h in net.hosts} <= set(doc["hosts"])
    assert [c["status"] for c in doc["checks"] if c["check"] == "all-reduce"] == ["pass"]
    assert set(doc["collective"]["busbw_gbps"]) == {"1", "4", "16", "64"}
    log = (run_dir / "preflight" / "collective.log").read_text()
    for rank in range(2 * slots):  # pdsh relays each host's ranks
        h = net.hosts[rank // slots]
        assert f"{h.addr}: PREFLIGHT_JOINING {rank} {h.name}" in log


def test_unreachable_host_fails_fast_naming_it_and_starts_nothing(hosts, tmp_path):
    """A frozen host (sshd stopped: TCP connects, then silence) makes a plain ssh wait forever."""
    run_dir, frozen = tmp_path / "run", hosts.hosts[1]
    hosts.freeze(frozen)
    try:
        t0 = time.monotonic()
        result = launch_on(hosts, write_hostfile(hosts, tmp_path / "hosts", 1), f"run.dir={run_dir}", timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        hosts.thaw(frozen)
    assert_user_error(result, f"host {frozen.addr} is unreachable", "banner exchange", f"ssh {frozen.addr} true")
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not run_dir.exists() or not any(run_dir.glob("*.json"))


def test_malformed_hostfile_is_one_paragraph_naming_the_line(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("worker-0 slots=1\nworker-1\n")
    assert_user_error(run_launcher(f"hostfile={hostfile}", f"run.dir={tmp_path}/r"),
                      f"hostfile='{hostfile}'", "line 2 `worker-1` has no slots=N", "write `worker-1 slots=1`")
    assert not (tmp_path / "r").exists()


def test_dual_pgx_dry_run_renders_the_link_settings_and_contacts_no_host(tmp_path):
    """The default 192.168.100.x addresses are only rendered, never contacted (no ssh binary even reachable)."""
    env = {**launcher_env(), "PATH": str(Path(sys.executable).parent)}
    result = run_launcher("+topo=dual_pgx", "+plan=zero3", "run.dry_run=true", f"run.dir={tmp_path}/r", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "r"
    assert (run_dir / "hostfile").read_text().splitlines()[1:] == ["192.168.100.10 slots=1", "192.168.100.11 slots=1"]
    ds_env = (run_dir / "deepspeed_env").read_text()
    for line in ("NCCL_SOCKET_IFNAME=enp1s0f1np1", "GLOO_SOCKET_IFNAME=enp1s0f1np1",
                 "NCCL_IB_HCA=rocep1s0f1,roceP2p1s0f1", "NCCL_IB_DISABLE=0", "DS_ACCELERATOR=cuda"):
        assert line in ds_env.splitlines()
    launch = (run_dir / "launch.sh").read_text()
    assert "launcher.backends.ds_runner" in launch and "--master_addr=192.168.100.10" in launch
    assert f"DS_ENV_FILE={run_dir}/deepspeed_env" in launch


def preflight_on(net: NetnsHosts, hostfile: Path, run_dir: Path, *overrides: str, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.CompletedProcess[str], dict[str, dict]]:
    """`python -m launcher.preflight` on the first host: its result and preflight.json's rows by (check, host)."""
    argv = [*net.exec_argv(net.hosts[0]), sys.executable, "-m", "launcher.preflight", f"hostfile={hostfile}",
            "+plan=zero3", "topo.accelerator=cpu", f"topo.socket_ifname={IFNAME}", f"run.dir={run_dir}", *overrides]
    result = subprocess.run(argv, cwd=REPO, env=env or launch_env(net), capture_output=True, text=True, timeout=180)
    doc = json.loads((run_dir / "preflight.json").read_text())
    return result, {(c["check"], c["host"]): c for c in doc["checks"]} | {("doc", ""): doc}


def test_preflight_names_a_host_that_is_down_and_runs_no_collective(hosts, tmp_path):
    down = hosts.hosts[1]
    hosts.link(down, up=False)
    try:
        t0 = time.monotonic()
        result, rows = preflight_on(hosts, write_hostfile(hosts, tmp_path / "hosts", 1), tmp_path / "run")
        elapsed = time.monotonic() - t0
    finally:
        hosts.link(down, up=True)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    bad = [r for (check, host), r in rows.items() if host == down.addr and r.get("status") == "fail"]
    assert bad and "ssh" in bad[0]["detail"], rows
    assert rows[("all-reduce", "all")]["detail"] == "not run: fix the failed checks above first"
    assert elapsed < 45, f"took {elapsed:.0f} s"


def test_preflight_fails_when_one_host_has_another_transformers_version(hosts, tmp_path):
    """A second environment on one host: its transformers metadata says another version."""
    from importlib import metadata
    import shutil

    real = metadata.distribution("transformers")
    other = tmp_path / "env2" / "transformers-4.57.1.dist-info"
    shutil.copytree(Path(str(real._path)), other)  # type: ignore[attr-defined]
    meta = other / "METADATA"
    meta.write_text(meta.read_text().replace(f"Version: {real.version}", "Version: 4.57.1", 1))
    odd = hosts.hosts[1]
    hosts.set_env(odd, {"PYTHONPATH": str(other.parent)})
    try:
        result, rows = preflight_on(hosts, write_hostfile(hosts, tmp_path / "hosts", 1), tmp_path / "run")
    finally:
        hosts.set_env(odd, {})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    row = rows[("same transformers", "all")]
    assert row["status"] == "fail" and f"4.57.1 on {odd.addr}" in row["detail"]
    assert f"{real.version} on {hosts.hosts[0].addr}" in row["detail"] or real.version in row["detail"]
    assert "same transformers" in result.stdout


def test_preflight_across_hosts_names_a_missing_interface_and_a_taken_port(hosts, tmp_path):
    hostfile = write_hostfile(hosts, tmp_path / "hosts", 1)
    result, rows = preflight_on(hosts, hostfile, tmp_path / "a", "topo.socket_ifname=nosuch0")
    assert result.returncode == 1
    row = rows[("interface", hosts.hosts[1].addr)]
    assert row["status"] == "fail" and "no interface nosuch0" in row["detail"] and IFNAME in row["detail"]
    holder = subprocess.Popen([*hosts.exec_argv(hosts.hosts[0]), sys.executable, "-c",
                               "import socket,sys,time; s=socket.socket(); s.bind(('', 29533)); s.listen(); "
                               "print('bound', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        result, rows = preflight_on(hosts, hostfile, tmp_path / "b", "topo.master_port=29533")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    row = rows[("master port", hosts.hosts[0].addr)]
    assert row["status"] == "fail" and "port 29533 is taken" in row["detail"]


def test_a_rank_that_never_joins_on_the_second_host_is_named_with_its_host(hosts, tmp_path):
    env = {**launch_env(hosts), "LAUNCHER_PREFLIGHT_NEVER_JOIN": "1", "LAUNCHER_PREFLIGHT_TIMEOUT_S": "20"}
    result, rows = preflight_on(hosts, write_hostfile(hosts, tmp_path / "hosts", 1), tmp_path / "run", env=env)
    assert result.returncode == 1
    row = rows[("all-reduce", "all")]
    assert row["status"] == "fail" and row["detail"].startswith(f"rank(s) 1 ({hosts.hosts[1].addr}) never joined")
    wait_until(lambda: not hosts.processes_left(), 30, "the stuck rank to be ended on its host")


def test_accelerate_script_over_a_hostfile_runs_one_accelerate_launch_per_host(hosts, tmp_path):
    """The accelerate example: one `accelerate launch` per host, started by DeepSpeed's runner over pdsh. On CPU
    accelerate counts one process per rank (ENGINE_NOTES.md): check the engine's world size and the rendered config."""
    run_dir = tmp_path / "run"
    result = launch_on(hosts, write_hostfile(hosts, tmp_path / "hosts", 1), f"run.dir={run_dir}", "plan.zero_stage=2",
                       *ACCELERATE_SCRIPT)
    assert_ok(result)
    config = yaml.safe_load((run_dir / "accelerate_config.yaml").read_text())
    assert (config["num_machines"], config["num_processes"], config["main_process_ip"]) == (2, 2, hosts.hosts[0].addr)
    assert config["deepspeed_config"]["deepspeed_config_file"] == f"{run_dir}/ds_config.json"
    assert_engine_ran_the_rendered_config(run_dir, stage=2)
    for h in hosts.hosts:  # pdsh prefixes each host's output: both ran an accelerate launch
        assert f"{h.addr}: " in result.stdout
    assert (run_dir / "checkpoints" / "global_step4" / "complete.json").exists()
    assert "accelerate.commands.launch" in (run_dir / "launch.sh").read_text()
