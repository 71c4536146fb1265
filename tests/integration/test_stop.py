"""Stopping the way people do it, on the default CPU job with real signals: Ctrl-C once (a save, exit 75) and twice
(at once), the launcher killed alone (the job dies with it), and the same command run again while the first runs
(refused) or after it died (its lease taken over)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launcher.launch.lease_holder import processes_in
from launcher.lease import LEASE_FILE
from tests.conftest import (freeze_mid_save, last_step, launcher_env, read_metrics, run_launcher, start_launcher,
                            wait_for)

pytestmark = pytest.mark.integration
JOB = ("train.max_steps=120", "train.save_every=4", "train.keep_last=2")  # long enough to be stopped mid-run


def ctrl_c(proc: subprocess.Popen) -> None:
    """What a terminal sends: SIGINT to the foreground process group (the launcher's; the engine has its own)."""
    os.killpg(os.getpgid(proc.pid), signal.SIGINT)


def job_processes(run_dir: Path) -> list[int]:
    return processes_in(run_dir)


def assert_clean_console(text: str) -> None:
    assert "Traceback" not in text and "Error" not in text.replace("error: ", ""), text[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[float]:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    result = run_launcher(f"run.dir={run_dir}", *JOB)
    assert result.returncode == 0, result.stderr[-3000:]
    return [m["loss"] for m in read_metrics(run_dir)]


def test_ctrl_c_saves_at_the_next_step_a_second_launch_is_refused_and_a_rerun_continues_exactly(tmp_path,
                                                                                               uninterrupted):
    run_dir, log = tmp_path / "run", tmp_path / "first.log"
    first = start_launcher(f"run.dir={run_dir}", *JOB, log=log)
    wait_for(lambda: last_step(run_dir) >= 6, first)  # past the periodic save at step 4

    second = run_launcher(f"run.dir={run_dir}", *JOB, timeout=60)  # the same command, in another terminal
    assert second.returncode == 2, second.stdout + second.stderr
    assert "another job is using the run dir" in second.stderr and f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stdout + second.stderr

    ctrl_c(first)
    assert first.wait(timeout=120) == 75
    text = log.read_text()
    stopped = last_step(run_dir)
    assert "stopping (Ctrl-C): saving at the next step (Ctrl-C again to stop now)" in text
    assert f"stopped: saved at global step {stopped}" in text and stopped > 4
    assert (run_dir / "checkpoints" / f"global_step{stopped}" / "complete.json").exists()
    assert_clean_console(text)
    assert not (run_dir / LEASE_FILE).exists() and not job_processes(run_dir)

    again = run_launcher(f"run.dir={run_dir}", *JOB)
    assert again.returncode == 0 and f"resumed from global step {stopped}" in again.stdout
    assert [m["loss"] for m in read_metrics(run_dir)] == uninterrupted


def test_second_ctrl_c_stops_everything_within_seconds_without_waiting_for_the_save(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_launcher(f"run.dir={run_dir}", *JOB, "train.save_every=1000", log=log)
    wait_for(lambda: last_step(run_dir) >= 3, proc)
    ctrl_c(proc)
    assert freeze_mid_save(run_dir, proc)  # the save the first Ctrl-C asked for, held as a stalled disk would
    t0 = time.monotonic()
    ctrl_c(proc)
    assert proc.wait(timeout=30) == 130 and time.monotonic() - t0 < 10
    text = log.read_text()
    assert "stopping now, without saving" in text and "there is no complete checkpoint yet" in text
    assert_clean_console(text)
    assert not job_processes(run_dir)


def hang_up(proc: subprocess.Popen) -> None:
    """What closing the terminal sends: SIGHUP to the launcher's process group (the engine has a session of its own)."""
    os.killpg(os.getpgid(proc.pid), signal.SIGHUP)


def test_closed_terminal_stops_the_job_at_once_and_a_rerun_resumes_exactly(tmp_path, uninterrupted):
    """SIGHUP: nobody is left to wait for a save, so everything stops within seconds (exit 129) and the run dir is
    free; the same command resumes from the newest complete checkpoint."""
    run_dir = tmp_path / "run"
    proc = start_launcher(f"run.dir={run_dir}", *JOB, log=tmp_path / "first.log")
    wait_for(lambda: (run_dir / "checkpoints" / "global_step4" / "complete.json").exists() and
             last_step(run_dir) >= 6, proc)
    t0 = time.monotonic()
    hang_up(proc)
    assert proc.wait(timeout=30) == 129 and time.monotonic() - t0 < 10
    assert not job_processes(run_dir) and not (run_dir / LEASE_FILE).exists()
    again = run_launcher(f"run.dir={run_dir}", *JOB)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from global step" in again.stdout
    assert [m["loss"] for m in read_metrics(run_dir)] == uninterrupted


def test_under_nohup_a_closed_terminal_leaves_the_job_running(tmp_path, uninterrupted):
    """`nohup python -m launcher ...` ignores SIGHUP: the launcher keeps it ignored, so the job trains to the end."""
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_launcher(f"run.dir={run_dir}", *JOB, log=log, nohup=True)
    wait_for(lambda: last_step(run_dir) >= 3, proc)
    hang_up(proc)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert [m["loss"] for m in read_metrics(run_dir)] == uninterrupted
    assert_clean_console(log.read_text())


def test_launcher_killed_alone_takes_its_job_with_it_and_a_rerun_takes_over_and_resumes(tmp_path, uninterrupted):
    """SIGKILL to the launcher only (the OOM killer, a closed SSH session): torchrun and the ranks live in a session
    of their own, and stop by themselves when they see the launcher gone."""
    run_dir = tmp_path / "run"
    proc = start_launcher(f"run.dir={run_dir}", *JOB, log=tmp_path / "first.log")
    wait_for(lambda: last_step(run_dir) >= 5, proc)
    assert job_processes(run_dir)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while job_processes(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not job_processes(run_dir), "ranks or torchrun outlived their launcher by 15 s"
    size = (run_dir / "metrics.jsonl").stat().st_size
    time.sleep(2)
    assert (run_dir / "metrics.jsonl").stat().st_size == size
    logs = "".join(p.read_text() for p in (run_dir / "logs").glob("rank*.log"))
    assert "is gone: stopping this rank" in logs  # the first rank to see it; the other may lose its peer first

    again = run_launcher(f"run.dir={run_dir}", *JOB)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "warning: taking over run dir" in again.stderr and "is gone" in again.stderr
    assert "resumed from global step" in again.stdout
    assert [m["loss"] for m in read_metrics(run_dir)] == uninterrupted


def test_plain_deepspeed_script_saves_on_ctrl_c_and_resumes(tmp_path):
    """The README's signal for scripts is SIGTERM: examples/train_deepspeed.py saves on it (PreemptionFlag)."""
    run_dir, log = tmp_path / "run", tmp_path / "first.log"
    script = ("+plan=zero2", "script=examples/train_deepspeed.py", "--", "--max_steps", "60", "--save_every", "100",
              "--seq_len", "64")
    proc = start_launcher(f"run.dir={run_dir}", *script, log=log)
    wait_for(lambda: "step 3 loss" in log.read_text(), proc)
    ctrl_c(proc)
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    text = log.read_text()
    saved = sorted((run_dir / "checkpoints").glob("global_step*"))
    step = int(saved[0].name.removeprefix("global_step"))
    assert len(saved) == 1 and f"stopped: saved at global step {step}" in text
    assert_clean_console(text)
    again = run_launcher(f"run.dir={run_dir}", *script[:3], "--max_steps", str(step + 2), *script[5:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text() == f"global_step{step + 2}"
    assert f"step {step + 1} loss" in again.stdout and "step 1 loss" not in again.stdout  # continued, not restarted


def test_trainer_script_with_save_on_signal_saves_its_checkpoint_on_ctrl_c(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "first.log"
    proc = start_launcher(f"run.dir={run_dir}", "+plan=zero2", "script=examples/train_trainer.py", "--",
                          "--max_steps", "200", "--save_steps", "1000", "--logging_steps", "1", log=log)
    wait_for(lambda: "'loss'" in log.read_text() or "loss" in log.read_text().split("training from global step")[-1],
             proc, timeout=240)
    ctrl_c(proc)
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    text = log.read_text()
    saved = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert len(saved) == 1 and (saved[0] / "trainer_state.json").exists()
    assert f"stopped: saved at global step {saved[0].name.split('-')[1]}" in text
    assert "Traceback" not in text


def test_ctrl_c_during_preflight_is_one_line_and_leaves_nothing_behind(tmp_path):
    """The full preflight runs an all-reduce through torchrun first: a Ctrl-C then stops the check's processes too
    and releases the run dir."""
    run_dir, log, collective = tmp_path / "run", tmp_path / "run.log", tmp_path / "run" / "preflight" / "collective.log"
    # rank 1 never joins: the check waits (up to 300 s) with rank 0 running, so the Ctrl-C lands inside it however
    # fast or slow this machine is
    env = {**launcher_env(), "LAUNCHER_PREFLIGHT_NEVER_JOIN": "1", "LAUNCHER_PREFLIGHT_TIMEOUT_S": "300"}
    proc = start_launcher(f"run.dir={run_dir}", *JOB, "preflight=full", log=log, env=env)
    assert wait_for(lambda: collective.exists() and "PREFLIGHT_JOINING 0" in collective.read_text(), proc)
    ctrl_c(proc)
    assert proc.wait(timeout=60) == 130
    text = log.read_text()
    assert text.rstrip().endswith("stopped (Ctrl-C)") and "Traceback" not in text
    assert not job_processes(run_dir) and not (run_dir / LEASE_FILE).exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_a_closed_terminal_during_preflight_leave_nothing_behind(tmp_path, signum):
    """Before any rank starts, SIGTERM (a `kill`, a scheduler) and SIGHUP (the terminal closed) stop the launcher as
    Ctrl-C does: the check's processes, in a session of their own, go too, and the run dir is free. SIGTERM says so
    in one line (exit 143); SIGHUP says nothing, nobody is left to read it (exit 129)."""
    run_dir, log, collective = tmp_path / "run", tmp_path / "run.log", tmp_path / "run" / "preflight" / "collective.log"
    env = {**launcher_env(), "LAUNCHER_PREFLIGHT_NEVER_JOIN": "1", "LAUNCHER_PREFLIGHT_TIMEOUT_S": "300"}
    proc = start_launcher(f"run.dir={run_dir}", *JOB, "preflight=full", log=log, env=env)
    assert wait_for(lambda: collective.exists() and "PREFLIGHT_JOINING 0" in collective.read_text(), proc)
    os.killpg(os.getpgid(proc.pid), signum)
    assert proc.wait(timeout=60) == 128 + signum
    text = log.read_text()
    assert "Traceback" not in text
    assert text.rstrip().endswith("stopped (SIGTERM)") if signum == signal.SIGTERM else "stopped" not in text
    assert not job_processes(run_dir) and not (run_dir / LEASE_FILE).exists()


def test_ctrl_c_after_the_last_save_leaves_a_finished_run_finished(tmp_path):
    """A Ctrl-C that lands after the run's final checkpoint, while the ranks wind down, stopped nothing: exit 0 and
    no "rerun to resume" (the rerun would only say the run is complete)."""
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_launcher(f"run.dir={run_dir}", "train.max_steps=6", "train.save_every=4", log=log)
    assert wait_for(lambda: (run_dir / "checkpoints" / "global_step6" / "complete.json").exists(), proc, poll=0.005)
    ctrl_c(proc)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "the job had already finished: all 6 steps are saved" in text, text[-3000:]
    assert "rerun the same command" not in text and "finished with exit code 0" in text
    assert_clean_console(text)
