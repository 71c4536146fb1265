"""What users see: the summary, a live progress bar on a terminal and plain lines in logs, metrics, plots, wandb
offline files without secrets, discoverability, and a hang turned into a message naming the ranks."""
from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, console_script, kill_tree, last_step, launcher_env, run_launcher, start_launcher, wait_for

pytestmark = pytest.mark.integration
SHORT = ("train.max_steps=6", "train.save_every=3")


def run_in_pty(*overrides: str, env: dict[str, str]) -> str:
    """The launcher attached to a pseudo-terminal, as in an interactive shell; returns what the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "launcher", *overrides], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


def test_terminal_shows_summary_and_live_progress_bar_and_wandb_keeps_no_secret(tmp_path):
    """One interactive run, with wandb offline and an API key in the environment."""
    run_dir, secret = tmp_path / "run", "sekrit-0123456789abcdef0123456789abcdef"
    env = {**launcher_env(), "COLUMNS": "160", "WANDB_API_KEY": secret}
    env.pop("WANDB_MODE")
    screen = run_in_pty(f"run.dir={run_dir}", *SHORT, "logging.wandb.mode=offline", env=env)
    for line in ("topology   local (local): 1 host(s) [localhost] x 2 CPU process(es) = world size 2",
                 "batch      global 8 = micro 2 x dp 2 x accum 2", "memory     ~", "resume     none (fresh start)"):
        assert line in screen
    assert "train" in screen and "6/6" in screen and "tok/s" in screen and "ETA" in screen
    assert "step 1/6 | loss" not in screen  # on a terminal the bar replaces the per-step lines...
    assert "step 1/6 | loss" in (run_dir / "logs" / "rank0.log").read_text()  # ...which go to the log file
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    record = next(offline[0].glob("run-*.wandb")).read_bytes()  # offline runs keep the config in their record
    assert b"global_batch_size" in record and b"zero_stage" in record and b"tiny-full-zero2" in record
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"{path} holds the API key"


def test_without_terminal_each_step_is_a_plain_line_and_other_ranks_stay_off_the_console(trained_run):
    result, run_dir = trained_run("+plan=zero2", "train.max_steps=12", "train.save_every=6")
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("step ")]
    assert len(lines) == 12 and lines[0].startswith("step 1/12 | loss ") and "tok/s" in lines[0]
    assert "rank1" not in result.stdout
    assert "step 1/12" not in (run_dir / "logs" / "rank1.log").read_text()  # rank 1 logs only its own events


def test_metrics_jsonl_has_every_field_per_step(trained_run):
    _, run_dir = trained_run("+plan=zero2", "train.max_steps=12", "train.save_every=6")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for r in rows:
        assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "step_time_s", "time", "mfu",
                "memory_gb"} <= set(r)
        assert r["loss"] > 0 and r["tokens_per_s"] > 0 and r["memory_gb"] > 0 and r["mfu"] is None  # no GPU peak


def test_plots_are_written_at_the_end_and_by_the_report_command(trained_run, tmp_path):
    _, run_dir = trained_run("+plan=zero2", "train.max_steps=12", "train.save_every=6")
    for name in ("loss.png", "throughput.png"):
        assert (run_dir / name).stat().st_size > 5000
        (run_dir / name).unlink()
    done = subprocess.run([sys.executable, "-m", "launcher.report", str(run_dir)], capture_output=True, text=True,
                          env=launcher_env(), cwd=REPO, timeout=120)
    assert done.returncode == 0 and "loss       first" in done.stdout and "throughput median" in done.stdout
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_and_list_describe_groups_and_what_each_needs():
    helped = run_launcher("--help")
    assert helped.returncode == 0
    assert "zero3_offload    ZeRO-3 with optimizer states and parameters offloaded" in helped.stdout
    listed = run_launcher("list")
    assert "dual_pgx" in listed.stdout and "needs: 2 hosts reachable over ssh" in listed.stdout
    cfg = run_launcher("--cfg", "job", "+plan=zero3")
    assert cfg.returncode == 0 and "zero_stage: 3" in cfg.stdout


def test_a_frozen_rank_is_reported_with_ranks_and_hosts_instead_of_hanging(tmp_path):
    from launcher.launch.spawn import leaf_descendants

    run_dir = tmp_path / "run"
    proc = start_launcher(f"run.dir={run_dir}", "train.max_steps=1000", "train.save_every=0",
                          "run.collective_timeout_s=6", log=tmp_path / "run.log")
    try:
        wait_for(lambda: last_step(run_dir) >= 3, proc)
        os.kill(leaf_descendants(proc.pid)[0], signal.SIGSTOP)
        assert proc.wait(timeout=180) == 1  # not a user error: run.max_restarts would restart it
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    text = " ".join((tmp_path / "run.log").read_text().split())
    assert "error: run.collective_timeout_s=6 cannot be used." in text
    assert "waited 6 s in a collective" in text and "hosts [localhost]" in text and "launcher.preflight" in text


def test_shell_completion_is_hydras_and_completes_presets():
    script = run_launcher("--shell-completion", "install=bash")
    assert script.returncode == 0 and "hydra_bash_completion" in script.stdout
    exe = console_script()
    env = {**launcher_env(), "COMP_LINE": "launcher plan=ze"}
    done = subprocess.run([exe, "-sc", "query=bash"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "plan=zero3_offload" in done.stdout.split()
