"""job.sbatch as users get it (golden files), what it asks Slurm for, and the submission the Slurm backend makes.

Set LAUNCHER_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then review the diff.
"""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from launcher.backends.slurm import preflight, slurm_spec
from launcher.config.compose import compose
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware
from launcher.plan.types import Plan
from launcher.plan.resolve import resolve
from launcher.render.env import rank_env
from launcher.launch.job import allocation_check
from launcher.render.slurm import render_sbatch, world_info
from tests.conftest import check_golden

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
GPU_JOB = ("+topo=slurm", "+plan=zero3", "topo.nodes=4", "train.global_batch_size=64", "topo.slurm.partition=gpu",
           "topo.slurm.account=proj42", "topo.slurm.time=04:00:00", 'topo.slurm.extra=["--qos=high"]')
CPU_JOB = ("+topo=slurm", "+plan=zero3", "topo.accelerator=cpu", "topo.cpu_procs_per_host=1", "topo.master_port=29671")


def plan_and_script(*overrides: str) -> tuple[Plan, str]:
    cfg, _ = compose(list(overrides))
    plan = resolve(cfg, CPU, run_dir="/runs/x", run_name="x")
    env = rank_env(plan, {"WANDB_API_KEY": "s3cret"})  # topo.env included, as launcher.launch.job uses it
    return plan, render_sbatch(plan, cfg.topo.slurm, "/venv/bin/python", "/work", env, cfg.topo.master_addr,
                               cfg.topo.master_port, allocation_check(plan, {}))


@pytest.mark.parametrize("name, overrides", [("job-gpu.sbatch", GPU_JOB), ("job-cpu.sbatch", CPU_JOB)])
def test_job_sbatch_matches_golden_and_is_valid_bash(name, overrides):
    _, script = plan_and_script(*overrides)
    check_golden(f"slurm/{name}", script)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "s3cret" not in script and "WANDB" not in script


def test_gpu_job_asks_for_whole_nodes_one_task_each_and_a_signal_before_the_limit():
    plan, script = plan_and_script(*GPU_JOB)
    header = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
    for opt in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--exclusive", "--partition=gpu",
                "--account=proj42", "--time=04:00:00", "--requeue", "--signal=B:USR1@300", "--qos=high",
                "--output=/runs/x/logs/slurm-%j.out", "--open-mode=append"):
        assert opt in header
    assert plan.world_size == 32 and "export NCCL" not in script


def test_world_info_is_deepspeeds_encoding_with_one_entry_per_node():
    from deepspeed.launcher.runner import encode_world_info

    plan, _ = plan_and_script(*GPU_JOB)
    expected = {f"node{i}": list(range(8)) for i in range(4)}
    assert world_info(plan) == encode_world_info(expected)
    assert json.loads(base64.urlsafe_b64decode(world_info(plan))) == expected


def test_requeue_and_signal_can_be_turned_off():
    _, script = plan_and_script(*CPU_JOB, "topo.slurm.requeue=false", "topo.slurm.signal_before_s=0",
                                "topo.slurm.exclusive=false")
    assert "--no-requeue" in script and "scontrol requeue" not in script
    assert "--signal" not in script and "--exclusive" not in script


def test_extra_sbatch_lines_must_be_options():
    with pytest.raises(LauncherError, match="give sbatch options such as --qos=high"):
        compose(["+topo=slurm", 'topo.slurm.extra=["qos high"]'])


def test_submission_is_sbatch_without_secrets_and_an_allocation_is_used_in_place():
    cfg, _ = compose(list(CPU_JOB))
    plan = resolve(cfg, CPU, run_dir="/runs/x", run_name="x")
    spec, files = slurm_spec(plan, cfg.topo.slurm, "py", "/w", {}, "", 0, {"HF_TOKEN": "t", "PATH": "/bin"})
    assert spec.argv == ("env", "-u", "HF_TOKEN", "sbatch", "/runs/x/job.sbatch") and "job.sbatch" in files
    spec, _ = slurm_spec(plan, cfg.topo.slurm, "py", "/w", {}, "", 0, {"SLURM_JOB_ID": "7"})
    assert spec.argv == ("bash", "/runs/x/job.sbatch", "--in-allocation")


def _fake_bin(tmp_path: Path, *names: str) -> str:
    for name in names:
        (tmp_path / name).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / name).chmod(0o755)
    return str(tmp_path)


def test_slurm_not_installed_is_one_clear_error(tmp_path):
    cfg, _ = compose(list(CPU_JOB))
    plan = resolve(cfg, CPU, run_dir="/runs/x", run_name="x")
    with pytest.raises(LauncherError) as err:
        preflight(plan, cfg.topo.slurm, "", {"PATH": str(tmp_path)})
    assert "sbatch is not on PATH: Slurm is not installed on this host" in err.value.paragraph()


def test_an_allocation_with_fewer_nodes_than_the_plan_is_refused(tmp_path):
    cfg, _ = compose(list(CPU_JOB))
    plan = resolve(cfg, CPU, run_dir="/runs/x", run_name="x")
    environ = {"PATH": _fake_bin(tmp_path, "srun"), "SLURM_JOB_ID": "12", "SLURM_JOB_NUM_NODES": "1"}
    with pytest.raises(LauncherError) as err:
        preflight(plan, cfg.topo.slurm, "", environ)
    assert "the allocation this runs in (job 12) has 1 node(s)" in err.value.paragraph()
    assert "topo.nodes=1" in err.value.paragraph()


def test_a_secret_in_topo_env_is_refused_not_written():
    with pytest.raises(LauncherError) as err:
        plan_and_script(*CPU_JOB, "+topo.env.WANDB_API_KEY=abc")
    assert "secrets are never written into job.sbatch" in err.value.paragraph() and "abc" not in err.value.paragraph()
