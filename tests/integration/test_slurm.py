"""Slurm submission against a real Slurm (slurmctld + two slurmd node names + munge) that the fixture runs privately.

Both node names live on this machine (ENGINE_NOTES.md); ranks are CPU processes over gloo on loopback.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.checkpoint.store import latest_complete_any
from tests.conftest import REPO, launcher_env, read_metrics
from tests.integration.slurm_cluster import SlurmCluster, free_ports, missing_binaries
from tests.integration.test_errors import assert_user_error
from tests.integration.test_multinode import ACCELERATE_SCRIPT, assert_ok
from tests.integration.test_user_scripts import assert_engine_ran_the_rendered_config

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
SECRET = "hf-token-that-must-not-leak-0451"
CPU_SLURM = ("+topo=slurm", "topo.accelerator=cpu", "topo.cpu_procs_per_host=1")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("a private slurmctld/slurmd/munged needs root")
    if missing_binaries():
        pytest.skip(f"missing {missing_binaries()}: apt-get install -y slurmctld slurmd slurm-client munge")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def launch(cluster: SlurmCluster, *overrides: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None,
           plan: str = "zero3") -> subprocess.CompletedProcess[str]:
    merged = {**launcher_env(), **cluster.env, "PYTHONPATH": launcher_env()["PYTHONPATH"], "HF_TOKEN": SECRET,
              "WANDB_MODE": "disabled"}
    env = env or {k: v for k, v in merged.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    port = f"topo.master_port={free_ports(1)[0]}"
    argv = [*prefix, sys.executable, "-m", "launcher", *CPU_SLURM, f"+plan={plan}", port, *overrides]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)


def test_job_trains_saves_on_usr1_requeues_and_resumes_from_the_latest_checkpoint(slurm, tmp_path):
    run_dir = tmp_path / "run"
    total = 40  # enough steps that Slurm's signal lands mid-run even on a busy machine
    steps = (f"train.max_steps={total}", "train.save_every=100", f"run.dir={run_dir}")
    dry = launch(slurm, *steps, "run.dry_run=true")
    assert dry.returncode == 0 and (run_dir / "job.sbatch").exists(), dry.stderr[-3000:]
    assert slurm.run("squeue", "-h").stdout.strip() == "", "a dry run submitted a job"

    submitted = launch(slurm, *steps)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job_id = re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1)
    metrics = run_dir / "metrics.jsonl"
    slurm.wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 300, "3 trained steps")
    slurm.run("scancel", "--batch", "--signal=USR1", job_id)
    slurm.wait_for(lambda: slurm.job(job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                   and slurm.job(job_id).get("Restarts") == "1", 400, f"job {job_id} to be requeued and finish")

    job = slurm.job(job_id)
    out = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED", out[-4000:]
    assert f"requeueing job {job_id}" in out and "(restart 1)" in out and f"run complete at global step {total}" in out
    assert f"preflight (allocation of job {job_id}): " in out and ", 0 failed" in out  # on each (re)start
    doc = json.loads((run_dir / "preflight.json").read_text())
    assert doc["allocation"]["job"] == job_id and len(doc["allocation"]["nodes"]) == 2
    assert [c["status"] for c in doc["checks"] if c["check"] == "all-reduce"] == ["pass"]
    assert set(doc["collective"]["busbw_gbps"]) == {"1", "4", "16", "64"}
    resumed = re.search(r"resumed from global step (\d+)", (run_dir / "logs" / "rank0.log").read_text())
    assert resumed and 3 <= int(resumed.group(1)) < total, out[-4000:]
    assert (run_dir / "checkpoints" / f"global_step{resumed.group(1)}" / "complete.json").exists()
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, total + 1))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"global_step{total}"
    stored = list(slurm.root.glob(f"state/hash.*/job.{job_id}/environment"))
    assert stored and all(SECRET.encode() not in f.read_bytes() for f in stored), "secret in Slurm's job state"
    assert all(SECRET.encode() not in f.read_bytes() for f in run_dir.rglob("*") if f.is_file())


def test_inside_an_allocation_it_runs_there_with_srun_instead_of_submitting(slurm, tmp_path):
    run_dir = tmp_path / "run"
    salloc = ("salloc", "--nodes=2", "--exclusive")
    result = launch(slurm, "train.max_steps=2", f"run.dir={run_dir}", prefix=salloc)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Submitted batch job" not in result.stdout and "step 2/2" in result.stdout
    assert (run_dir / "checkpoints" / "latest").read_text() == "global_step2"
    small = launch(slurm, "train.max_steps=2", f"run.dir={tmp_path}/small", prefix=("salloc", "--nodes=1"))
    assert_user_error(small, "topo.nodes=2", "has 1 node(s)", "use topo.nodes=1")


def test_ctrl_c_inside_an_allocation_saves_on_every_node_and_exits_75(slurm, tmp_path):
    """The launcher in the foreground of an allocation (srun starts the ranks): the first Ctrl-C reaches every node's
    ranks through the run dir's lease; they save and the launcher exits 75 naming the checkpoint."""
    from launcher.launch.spawn import process_tree

    run_dir = tmp_path / "run"
    merged = {**launcher_env(), **slurm.env, "PYTHONPATH": launcher_env()["PYTHONPATH"], "WANDB_MODE": "disabled"}
    env = {k: v for k, v in merged.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    argv = ["salloc", "--nodes=2", "--exclusive", sys.executable, "-m", "launcher", *CPU_SLURM, "+plan=zero3",
            f"topo.master_port={free_ports(1)[0]}", "train.max_steps=200", "train.save_every=100", f"run.dir={run_dir}"]
    with open(tmp_path / "out.log", "w") as out:
        salloc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    metrics = run_dir / "metrics.jsonl"
    try:
        slurm.wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 300, "2 trained steps")
        launcher = [p for p in process_tree(salloc.pid)[1:]  # salloc names the command too
                    if b"-m\0launcher\0" in Path(f"/proc/{p}/cmdline").read_bytes()]
        os.kill(launcher[0], signal.SIGINT)  # what the terminal sends to the foreground process
        assert salloc.wait(timeout=180) == 75
    finally:
        if salloc.poll() is None:
            salloc.kill()
    text = (tmp_path / "out.log").read_text()
    saved = sorted((run_dir / "checkpoints").glob("global_step*"))
    assert len(saved) == 1 and f"stopped: saved at global step {saved[0].name[11:]}" in text, text[-3000:]
    assert "Traceback" not in text


def test_more_nodes_than_the_partition_has_is_refused_before_submitting(slurm, tmp_path):
    result = launch(slurm, "topo.nodes=3", "train.global_batch_size=6", "train.micro_batch_size=2",
                    f"run.dir={tmp_path}/r")
    assert_user_error(result, "topo.nodes=3", "partition debug has 2 node(s)", "use topo.nodes<=2")
    assert slurm.run("squeue", "-h").stdout.strip() == ""


def test_slurm_not_installed_is_one_paragraph(tmp_path):
    env = {**launcher_env(), "PATH": str(Path(sys.executable).parent)}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    argv = [sys.executable, "-m", "launcher", *CPU_SLURM, "+plan=zero3", f"run.dir={tmp_path}/r"]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert_user_error(result, "topo.backend='slurm'", "sbatch is not on PATH: Slurm is not installed on this host",
                      "install the Slurm client commands")


def test_accelerate_script_in_a_real_slurm_allocation(slurm, tmp_path):
    """srun starts one `accelerate launch` per node, each with its node's --machine_rank."""
    run_dir = tmp_path / "run"
    result = launch(slurm, f"run.dir={run_dir}", *ACCELERATE_SCRIPT, prefix=("salloc", "--nodes=2", "--exclusive"))
    assert_ok(result)
    assert "Submitted batch job" not in result.stdout
    sbatch = (run_dir / "job.sbatch").read_text()
    assert '--machine_rank="$SLURM_NODEID" --main_process_ip="$LAUNCHER_MASTER_ADDR"' in sbatch
    assert_engine_ran_the_rendered_config(run_dir, stage=3)
    assert (run_dir / "checkpoints" / "global_step4" / "complete.json").exists()


SCRIPT_STEPS = 60
PLAIN_SCRIPT = ("preflight=quick", "script=examples/train_deepspeed.py", "--", "--max_steps", str(SCRIPT_STEPS),
                "--save_every", "1000", "--seq_len", "128")


def logged_steps(log: Path) -> list[int]:
    """The global steps the plain example printed on rank 0, over every (re)start (the log is appended to)."""
    return [int(n) for n in re.findall(r"^step (\d+) loss", log.read_text(), re.M)] if log.exists() else []


def test_plain_script_on_sbatch_saves_on_usr1_is_requeued_and_resumes_from_its_checkpoint(slurm, tmp_path):
    """A user's script on the sbatch path: Slurm's pre-timeout signal reaches it, it saves at the next step (its only
    save before the end), the job requeues itself, and the requeued script gets LAUNCHER_RESUME_FROM and finishes."""
    run_dir = tmp_path / "run"
    submitted = launch(slurm, f"run.dir={run_dir}", *PLAIN_SCRIPT, plan="zero2")
    assert_ok(submitted)
    job_id = re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1)
    log = run_dir / "logs" / "rank0.log"
    slurm.wait_for(lambda: len(logged_steps(log)) >= 3, 300, "3 trained steps", every=0.1)
    slurm.run("scancel", "--batch", "--signal=USR1", job_id)
    slurm.wait_for(lambda: slurm.job(job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                   and slurm.job(job_id).get("Restarts") == "1", 300, f"job {job_id} to be requeued and finish")

    out, text, job = (run_dir / "logs" / f"slurm-{job_id}.out").read_text(), log.read_text(), slurm.job(job_id)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), out[-4000:]
    saved = re.search(r"stopped on request at global step (\d+) after saving", text)
    assert saved and 3 < int(saved.group(1)) < SCRIPT_STEPS, text[-3000:]
    step = int(saved.group(1))
    ckpt = run_dir / "checkpoints" / f"global_step{step}"
    assert "received SIGUSR1: saving at the next step boundary" in text and (ckpt / "complete.json").exists()
    assert f"requeueing job {job_id}" in out and "(restart 1)" in out
    assert f"the script resumes from {ckpt} (LAUNCHER_RESUME_FROM)" in out
    assert f"training from global step {step}" in text
    assert logged_steps(log) == list(range(1, SCRIPT_STEPS + 1)), "the requeued run did not continue where it saved"
    assert latest_complete_any(run_dir / "checkpoints").path.name == f"global_step{SCRIPT_STEPS}"
