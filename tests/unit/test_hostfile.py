"""Hostfiles as users write them: DeepSpeed's `host slots=N` format, every mistake named by its line; the plan and
the files DeepSpeed's runner reads (hostfile, deepspeed_env) rendered from it."""
from __future__ import annotations

from pathlib import Path

import pytest

from launcher.backends.hostfile import HostFacts, check_host, hostfile_spec, parse_probe
from launcher.config.compose import compose
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware
from launcher.plan.hostfile import parse_hostfile, read_hostfile, uniform_slots
from launcher.plan.types import Plan
from launcher.plan.resolve import resolve
from launcher.render.hostfile import render_deepspeed_env, render_hostfile

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
REPO = Path(__file__).resolve().parent.parent.parent


def plan_for(*overrides: str) -> Plan:
    cfg, _ = compose(list(overrides))
    return resolve(cfg, CPU, run_dir="/runs/x", run_name="x")


def error_text(lines: list[str]) -> str:
    with pytest.raises(LauncherError) as err:
        uniform_slots(parse_hostfile(lines, "hf"), "hf")
    return err.value.paragraph()


def test_hosts_keep_file_order_and_comments_and_blank_lines_are_skipped():
    entries = parse_hostfile(["# cluster", "", "worker-1 slots=4  # fast one", "  worker-0\tslots=4", "10.0.0.7 slots=4"])
    assert [(e.host, e.slots, e.line) for e in entries] == [("worker-1", 4, 3), ("worker-0", 4, 4), ("10.0.0.7", 4, 5)]


@pytest.mark.parametrize("lines, fragments", [
    (["worker-0 slots=8", "worker-1"], ["line 2 `worker-1` has no slots=N", "write `worker-1 slots=1`"]),
    (["worker-0 slots=8", "worker-0 slots=8"], ["host worker-0 is listed twice (lines 1 and 2)"]),
    (["worker-0 slots=0"], ["line 1 `worker-0 slots=0` has slots=0", "whole number >= 1"]),
    (["worker-0 slots=four"], ["has slots=four"]),
    (["worker-0 slots=8 max_slots=8"], ["line 1 `worker-0 slots=8 max_slots=8` is not in DeepSpeed's hostfile format"]),
    (["worker-0 gpus=8"], ["is not in DeepSpeed's hostfile format"]),
    (["a,b slots=1"], ["invalid host name `a,b`"]),
    (["# nothing", ""], ["it lists no hosts"]),
    (["worker-0 slots=8", "worker-1 slots=4"], ["different slots (worker-0 slots=8, worker-1 slots=4)", "slots=4 on each"]),
])
def test_malformed_hostfile_names_the_line_and_the_fix(lines, fragments):
    text = error_text(lines)
    assert text.startswith("error: hostfile='hf' cannot be used.")
    for fragment in fragments:
        assert fragment in text, text


def test_missing_hostfile_names_the_path(tmp_path):
    with pytest.raises(LauncherError) as err:
        read_hostfile("nope", cwd=str(tmp_path))
    assert f"{tmp_path}/nope does not exist" in err.value.paragraph()


def test_hostfile_sets_hosts_slots_and_backend_of_the_plan(tmp_path):
    hf = tmp_path / "cluster"
    hf.write_text("worker-b slots=2\nworker-a slots=2\n")
    p = plan_for(f"hostfile={hf}", "topo.accelerator=cpu", "+plan=zero3")
    assert (p.backend, p.hosts, p.procs_per_host, p.world_size, p.dp, p.grad_accum) == (
        "hostfile", ("worker-b", "worker-a"), 2, 4, 4, 1)


def test_hostfile_launch_defaults_to_gpus_whatever_this_host_has(tmp_path):
    hf = tmp_path / "cluster"
    hf.write_text("worker-0 slots=8\nworker-1 slots=8\n")
    p = plan_for(f"hostfile={hf}", "train.global_batch_size=32")
    assert (p.accelerator, p.world_size, p.precision) == ("cuda", 16, "bf16")


def test_shipped_example_hostfiles_parse():
    for path in sorted((REPO / "hostfiles").iterdir()):
        assert uniform_slots(read_hostfile(str(path))) >= 1


def test_hostfile_with_slurm_and_many_hosts_on_local_backend_are_refused(tmp_path):
    hf = tmp_path / "cluster"
    hf.write_text("a slots=1\nb slots=1\n")
    with pytest.raises(LauncherError, match="the allocation names the nodes"):
        plan_for(f"hostfile={hf}", "+topo=slurm")
    with pytest.raises(LauncherError, match="use topo.backend=hostfile"):
        plan_for("topo.hosts=[a,b]")


def test_rendered_hostfile_is_read_back_by_deepspeeds_parser():
    from deepspeed.launcher.runner import _parse_hostfile

    p = plan_for("+topo=dual_pgx")
    text = render_hostfile(p)
    assert dict(_parse_hostfile(text.splitlines())) == {"192.168.100.10": 1, "192.168.100.11": 1}


def test_dual_pgx_network_settings_reach_every_rank_through_deepspeed_env():
    p = plan_for("+topo=dual_pgx", "topo.nccl.ib_hca=roceP2p1s0f1", "topo.hosts=[spark-a,spark-b]")
    env = {"DS_ACCELERATOR": "cuda", **p.nccl_env}
    spec, files = hostfile_spec(p, "/venv/bin/python", "192.168.100.10", 0, env, "/work", {"WANDB_API_KEY": "s3cret"})
    assert files["hostfile"].endswith("spark-a slots=1\nspark-b slots=1\n")
    assert "NCCL_IB_HCA=roceP2p1s0f1\n" in files["deepspeed_env"] and "NCCL_IB_DISABLE=0\n" in files["deepspeed_env"]
    assert "NCCL_NET_GDR_LEVEL" not in files["deepspeed_env"]  # GB10 has no GPUDirect RDMA: nothing forced
    assert spec.env["DS_ENV_FILE"] == "/runs/x/deepspeed_env"
    runner = spec.argv[spec.argv.index("/venv/bin/python"):]
    assert runner[:4] == ("/venv/bin/python", "-m", "launcher.backends.ds_runner", "--launcher-run-dir=/runs/x")
    assert "--master_addr=192.168.100.10" in spec.argv and "--launcher=pdsh" in spec.argv
    assert "s3cret" not in repr(spec) + repr(files)


def test_secrets_that_deepspeed_would_export_are_unset_for_the_runner():
    p = plan_for("+topo=dual_pgx")
    spec, _ = hostfile_spec(p, "py", "", 0, {}, "/w", {"MLFLOW_TRACKING_PASSWORD": "x", "WANDB_API_KEY": "y"})
    env_argv = spec.argv[spec.argv.index("env"):spec.argv.index("py")]
    assert env_argv == ("env", "-u", "MLFLOW_TRACKING_PASSWORD") and "WANDB_API_KEY" not in spec.argv


@pytest.mark.parametrize("env, fragment", [
    ({"WANDB_API_KEY": "abc"}, "secrets are never written into the run dir"),
    ({"HF_TOKEN": "abc"}, "secrets are never written"),
    ({"X": 'a"b'}, "inside double quotes"),
    ({"X": "$HOME"}, "inside double quotes"),
])
def test_deepspeed_env_refuses_secrets_and_unquotable_values(env, fragment):
    with pytest.raises(LauncherError) as err:
        render_deepspeed_env(env)
    assert fragment in err.value.paragraph() and "abc" not in err.value.paragraph()


def test_probe_output_is_parsed_and_each_problem_names_the_host():
    p = plan_for("+topo=dual_pgx")
    facts = parse_probe("192.168.100.11", "python=1\ncwd=1\nshared=1\ngpus=1\niface=lo:65536\niface=enp1s0f1np1:1500\n")
    assert facts.ifaces == {"lo": 65536, "enp1s0f1np1": 1500} and facts.gpus == 1
    env = p.nccl_env
    src = ("topo.hosts", list(p.hosts))
    with pytest.raises(LauncherError, match="host 192.168.100.11: enp1s0f1np1 has MTU 1500"):
        check_host(facts, p, "py", "/w", "/runs", env, 9000, src)
    check_host(facts, p, "py", "/w", "/runs", env, 0, src)
    cases = [
        (HostFacts("b", error="ssh failed: Connection refused"), "host b is unreachable: ssh failed: Connection refused"),
        (HostFacts("b", cwd=True, shared=True), "host b has no py"),
        (HostFacts("b", python=True, shared=True), "host b has no directory /w"),
        (HostFacts("b", python=True, cwd=True), "host b does not see /runs"),
        (HostFacts("b", python=True, cwd=True, shared=True, gpus=0), "host b has 0 GPU(s) and the plan starts 1"),
        (HostFacts("b", python=True, cwd=True, shared=True, gpus=1, ifaces={"eth0": 1500}),
         "host b has no interface enp1s0f1np1 (NCCL_SOCKET_IFNAME); it has eth0"),
    ]
    for bad, fragment in cases:
        with pytest.raises(LauncherError) as err:
            check_host(bad, p, "py", "/w", "/runs", env, 9000, src)
        assert fragment in err.value.paragraph()


def test_local_ssh_clients_ignore_term_and_usr1_so_remote_ranks_are_never_cut_off():
    """launcher.launch.spawn signals leaf processes; for a hostfile launch those are ssh clients, whose death would leave
    the remote ranks running. The runner's children start with both signals ignored (Ctrl-C still stops all)."""
    import subprocess
    import sys

    p = plan_for("+topo=dual_pgx")
    spec, _ = hostfile_spec(p, sys.executable, "", 0, {}, "/w", {})
    prefix = spec.argv[:spec.argv.index(sys.executable)]
    probe = "import signal as s; print(s.getsignal(s.SIGTERM) is s.SIG_IGN, s.getsignal(s.SIGUSR1) is s.SIG_IGN)"
    out = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout
    assert out.split() == ["True", "True"]


def test_missing_pdsh_or_ssh_is_one_error_before_any_host_is_asked(tmp_path):
    from launcher.backends.hostfile import preflight

    p = plan_for("+topo=dual_pgx")
    with pytest.raises(LauncherError) as err:
        preflight(p, "py", "/w", {}, 0, [], ("topo.hosts", list(p.hosts)), path=str(tmp_path))
    assert "ssh is not on PATH" in err.value.paragraph() and "apt-get install openssh-client pdsh" in err.value.paragraph()


def test_the_runners_stop_names_the_run_dir_and_matches_only_that_runs_launchers():
    """DeepSpeed's PDSHRunner builds its kill command from the launch command; ours keeps the pdsh part and matches
    the per-host launchers of this run dir only, checked with the ERE matcher pkill uses (grep -E)."""
    import shlex
    import subprocess

    from deepspeed.launcher.multinode_runner import PDSHRunner
    from deepspeed.launcher.runner import parse_args

    from launcher.backends.ds_runner import own_kill_command

    args = parse_args(["--launcher=pdsh", "--master_addr=10.0.0.1", "--module", "launcher.train.worker", "/runs/a b+c"])
    runner = PDSHRunner(args, "d29ybGQ=")
    _, kill, _ = runner.get_cmd({}, {"h1": [0], "h2": [0]})
    python = "/opt/py3.11/bin/python3.11"
    ours = own_kill_command(kill, python, "/runs/a b+c")
    assert ours[:-1] == kill[:-2] and ours[-1].startswith("pkill -f ")
    pattern = shlex.split(ours[-1])[-1]
    launch = f"{python} -u -m deepspeed.launcher.launch --world_info=d29ybGQ= --node_rank=0 --module"
    lines = [f"{launch} launcher.train.worker /runs/a b+c", f"{launch} launcher.train.worker /runs/a b+c2",
             f"{launch} other_job.train /data/x", f"{launch} launcher.train.worker /runs/a bbc",
             f"pdsh -R ssh -w h1 {ours[-1]}"]
    grep = subprocess.run(["grep", "-E", pattern], input="\n".join(lines) + "\n", capture_output=True, text=True)
    assert grep.stdout.splitlines() == lines[:1]


def test_each_hosts_gpu_memory_is_checked_against_the_estimate_sized_here():
    """Sized on a launching host with 140 GiB GPUs; a worker with 24 GiB GPUs is named before anything starts, and a
    worker whose GPUs do not report memory (GB10: [N/A]) is not judged."""
    from launcher.backends.hostfile import check_hosts_memory
    from launcher.plan.hardware import Hardware

    h200 = Hardware("cuda", 8, "NVIDIA H200", 139.8, "9.0", True, 64, 512.0, "x86_64")
    cfg, _ = compose(["hostfile=hostfiles/example_cluster", "+plan=zero2", "model=llama3_1_8b",
                      "train.global_batch_size=32", "train.micro_batch_size=1"])
    p = resolve(cfg, h200, run_dir="/runs/x", run_name="x")
    probe = "python=1\ncwd=1\nshared=1\ngpus=8\ngpumib={}\n"
    big, small, unknown = (parse_probe(h, probe.format(mib)) for h, mib in
                           (("worker-0", "143771"), ("worker-1", "24564"), ("worker-2", "[N/A]")))
    assert (big.gpu_memory_gb, unknown.gpu_memory_gb) == (pytest.approx(140.4, abs=0.1), 0.0)
    src = ("hostfile", "hostfiles/example_cluster")
    check_hosts_memory(p, [big, unknown], src)
    with pytest.raises(LauncherError) as err:
        check_hosts_memory(p, [big, small, unknown], src)
    text = err.value.paragraph()
    assert "host worker-1's GPUs have 24 GiB" in text and f"~{p.memory.need_gb:.1f} GiB per GPU" in text
    assert "+plan=zero3" in text and err.value.field == "hostfile"
