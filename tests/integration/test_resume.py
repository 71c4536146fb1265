"""Crash-proof checkpoints with real kills: SIGKILL anywhere (mid-save included), SIGTERM preemption, restarts,
damaged shards, and resume on another world size or ZeRO stage."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (freeze_mid_save, kill_tree, last_step, read_metrics, run_launcher, start_launcher,
                            wait_for)

pytestmark = pytest.mark.integration
JOB = ("train.max_steps=24", "train.save_every=2", "train.keep_last=2")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[float]:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert run_launcher(f"run.dir={run_dir}", *JOB).returncode == 0
    return [m["loss"] for m in read_metrics(run_dir)]


def losses(run_dir: Path) -> list[float]:
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1)), "metrics must hold each step once"
    return [m["loss"] for m in metrics]


def test_sigkill_anywhere_including_mid_save_resumes_bit_exactly(tmp_path, uninterrupted):
    """Four kills at random moments, half of them (seed 1) while a checkpoint is being written (the job is frozen the
    moment a save's temporary directory appears, as a stalled filesystem would hold it): every resume starts from a
    complete checkpoint and the final per-step losses equal the uninterrupted run's."""
    run_dir, rng = tmp_path / "run", random.Random(1)
    kills = mid_save = 0
    while kills < 4:
        proc = start_launcher(f"run.dir={run_dir}", *JOB, log=tmp_path / f"attempt{kills}.log")
        done_before = last_step(run_dir)
        if rng.random() < 0.5:
            frozen = freeze_mid_save(run_dir, proc)
            reached, mid_save = frozen or proc.poll() is None, mid_save + frozen
        else:
            target = done_before + rng.randint(1, 3)
            reached = wait_for(lambda: last_step(run_dir) >= target, proc)
        if not reached:  # the run finished before the kill point
            assert proc.returncode == 0
            break
        kill_tree(proc)
        kills += 1
    assert kills == 4 and mid_save >= 2
    final = run_launcher(f"run.dir={run_dir}", *JOB)
    assert final.returncode == 0, final.stdout[-3000:]
    assert losses(run_dir) == uninterrupted


def test_sigterm_saves_at_the_next_step_and_exits_75_then_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start_launcher(f"run.dir={run_dir}", *JOB, "train.save_every=100", log=tmp_path / "first.log")
    wait_for(lambda: last_step(run_dir) >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    log = (tmp_path / "first.log").read_text()
    stopped = last_step(run_dir)
    assert f"saved at global step {stopped}" in log and 5 <= stopped < 24
    assert (run_dir / "checkpoints" / f"global_step{stopped}" / "complete.json").exists()
    again = run_launcher(f"run.dir={run_dir}", *JOB, "train.save_every=100")
    assert again.returncode == 0 and f"resumed from global step {stopped}" in again.stdout
    assert losses(run_dir) == uninterrupted


def test_max_restarts_restarts_a_crashed_job_from_its_latest_checkpoint(tmp_path, uninterrupted):
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_launcher(f"run.dir={run_dir}", *JOB, "run.max_restarts=2", "run.restart_backoff_s=1", log=log)
    wait_for(lambda: last_step(run_dir) >= 7, proc)
    from launcher.launch.spawn import leaf_descendants

    rank = leaf_descendants(proc.pid)[-1]
    subprocess.run(["kill", "-9", str(rank)], check=True)  # one rank dies: torchrun tears the job down
    assert proc.wait(timeout=300) == 0
    text = log.read_text()
    assert "restart 1/2 in 1 s: the job exited with code 1; it resumes from global step" in text
    assert "tokenized examples from the cache" in text.split("restart 1/2")[1]  # the restart skips tokenizing
    assert losses(run_dir) == uninterrupted


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(trained_run, tmp_path):
    _, trained = trained_run("+plan=zero2", "train.max_steps=12", "train.save_every=6")
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    shard = max((run_dir / "checkpoints" / "global_step12").glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    again = run_launcher(f"run.dir={run_dir}", "+plan=zero2", "train.max_steps=14", "train.save_every=6")
    assert again.returncode == 0, again.stdout[-2000:]
    assert f"skipping checkpoint {run_dir}/checkpoints/global_step12: file {shard.name} is truncated" in again.stdout
    assert "resumed from global step 6" in again.stdout


@pytest.mark.parametrize("change", [("topo.cpu_procs_per_host=1",), ("+plan=zero3",)], ids=["2to1procs", "zero2to3"])
def test_resume_on_another_world_size_or_zero_stage_goes_through_universal_checkpoint(trained_run, tmp_path, change):
    """The loss continues within a small tolerance: the reduction order changes with the layout, and per-rank RNG
    states cannot be carried across world sizes, so bit equality is not expected."""
    job = ("train.max_steps=10", "train.save_every=5")
    _, whole = trained_run(*job)
    _, first_half = trained_run("train.max_steps=5", "train.save_every=5")
    resumed = tmp_path / "resumed"
    shutil.copytree(first_half, resumed)
    keep = "+plan.deepspeed.checkpoint.tag_validation=WARN"  # a user's own checkpoint key survives the conversion
    again = run_launcher(f"run.dir={resumed}", *job, *change, keep)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "resumed from global step 5" in again.stdout and "universal checkpoint" in again.stdout
    universal = json.loads((resumed / "ds_config.universal.json").read_text())  # what the ranks ran, on disk
    assert universal["checkpoint"] == {"tag_validation": "WARN", "load_universal": True}
    expected, got = [m["loss"] for m in read_metrics(whole)], losses(resumed)
    assert got[:5] == expected[:5]
    assert all(abs(a - b) / b < 2e-3 for a, b in zip(got[5:], expected[5:])), (got, expected)
    meta = json.loads((resumed / "checkpoints" / "global_step10" / "complete.json").read_text())
    assert (meta["world_size"], meta["zero_stage"]) == ((1, 2) if "procs" in change[0] else (2, 3))


@pytest.fixture
def small_disk(tmp_path):
    """A real 12 MiB filesystem (tmpfs) to run in: room for one tiny checkpoint, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_save_that_would_not_fit_fails_early_and_keeps_the_previous_checkpoint(small_disk):
    run_dir = small_disk / "run"
    result = run_launcher(f"run.dir={run_dir}", "train.max_steps=6", "train.save_every=2", "train.keep_last=0")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    paragraph = " ".join(result.stderr.split())
    assert "error: run.dir=" in paragraph and "more free space than the filesystem has" in paragraph
    assert "lower train.keep_last" in paragraph
    from launcher.checkpoint.store import latest_complete

    assert latest_complete(run_dir / "checkpoints").global_step == 2
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
