"""The run dir's lease on real files: who holds it, when a holder counts as gone, and what the ranks' watch does."""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from launcher import lease, lease_watch
from launcher.launch import lease_holder


def holder(**changes) -> lease.Holder:
    return dataclasses.replace(lease.this_process("python -m launcher", hosts=("localhost",)), **changes)


def test_record_round_trips_in_one_fixed_block_and_a_torn_one_reads_as_none():
    h = holder(command="x" * 5000)
    data = lease.encode(h)
    assert len(data) == lease.RECORD_BYTES
    assert lease.decode(data) == dataclasses.replace(h, command="")  # an overlong command is dropped, not the record
    assert lease.decode(data[:100]) is None and lease.decode(b"") is None


def test_first_launch_creates_the_run_dir_and_a_second_is_refused_while_the_holder_runs(tmp_path):
    run_dir = tmp_path / "run"
    first = lease_holder.acquire(run_dir, holder(), say=print)
    assert lease.read(run_dir / lease.LEASE_FILE).pid == os.getpid()
    with pytest.raises(lease_holder.LeaseTaken) as err:
        lease_holder.acquire(run_dir, holder(), say=print)
    assert err.value.holder.nonce == first.holder.nonce and "which is running" in err.value.why
    first.release()
    assert not (run_dir / lease.LEASE_FILE).exists()
    lease_holder.acquire(run_dir, holder(), say=print).release()


def test_a_dead_launcher_on_this_host_with_nothing_left_is_taken_over_with_a_warning(tmp_path):
    run_dir, said = tmp_path / "run", []
    dead = holder(start_time=lease.process_start_time(os.getpid()) + 1)  # this pid, but another process's start time
    lease_holder.acquire(run_dir, dead, say=print)
    new = lease_holder.acquire(run_dir, holder(), say=said.append)
    assert any("taking over" in m and "is gone and none of its processes is left" in m for m in said)
    assert lease.read(run_dir / lease.LEASE_FILE).nonce == new.holder.nonce


def test_another_hosts_launcher_counts_as_gone_only_when_its_counter_stops(tmp_path):
    run_dir = tmp_path / "run"
    remote = holder(host="elsewhere", gone_after_s=0.5)
    path = run_dir / lease.LEASE_FILE
    lease_holder.acquire(run_dir, remote, say=print)

    def renewing_sleep(_s: float) -> None:  # the other host renews while this one watches
        current = lease.read(path)
        path.write_bytes(lease.encode(dataclasses.replace(current, counter=current.counter + 1)))

    alive = lease_holder.judge(path, run_dir, say=print, sleep=renewing_sleep)
    assert alive.alive and "being renewed" in alive.why
    gone = lease_holder.judge(path, run_dir, say=print, sleep=lambda _s: None)
    assert not gone.alive and "stopped renewing" in gone.why


def test_a_record_being_created_counts_as_taken_and_an_old_unreadable_one_as_gone(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / lease.LEASE_FILE
    path.write_bytes(b"")
    assert lease_holder.judge(path, run_dir, say=print).alive
    old = time.time() - 60
    os.utime(path, (old, old))
    assert not lease_holder.judge(path, run_dir, say=print).alive


def watch(run_dir: Path) -> tuple[dict[str, threading.Event], list[str]]:
    events = {k: threading.Event() for k in ("stop", "gone", "abort")}
    why: list[str] = []
    started = lease_watch.watch_launcher(run_dir, events["stop"].set, lambda w: (why.append(w), events["gone"].set()),
                                   events["abort"].set)
    assert started
    return events, why


def test_ranks_follow_the_lease_stop_then_abort(tmp_path):
    run_dir = tmp_path / "run"
    held = lease_holder.acquire(run_dir, holder(), say=print)
    events, _ = watch(run_dir)
    held.set_state("stop")
    assert events["stop"].wait(5) and not events["abort"].is_set()
    held.set_state("abort")
    assert events["abort"].wait(5) and not events["gone"].is_set()
    held.release()


def test_a_rank_on_another_host_sees_its_launcher_gone_when_the_counter_stops(tmp_path):
    run_dir = tmp_path / "run"
    lease_holder.acquire(run_dir, holder(host="elsewhere", gone_after_s=1.5), say=print)
    t0 = time.monotonic()
    events, why = watch(run_dir)
    assert events["gone"].wait(10)
    assert 1.5 <= time.monotonic() - t0 < 5 and "has not renewed its lease" in why[0]


def test_a_rank_on_the_launchers_host_sees_it_gone_by_its_pid_and_a_takeover_by_the_nonce(tmp_path):
    run_dir = tmp_path / "run"
    lease_holder.acquire(run_dir, holder(start_time=0), say=print)  # a pid whose process is not the launcher any more
    events, why = watch(run_dir)
    assert events["gone"].wait(5) and "is gone" in why[0]

    other = tmp_path / "other"
    lease_holder.acquire(other, holder(), say=print)
    events, why = watch(other)
    (other / lease.LEASE_FILE).write_bytes(lease.encode(holder()))  # another launch's record
    assert events["gone"].wait(5) and "another launch took over" in why[0]


def test_nothing_to_watch_without_a_lease_or_for_a_submitted_slurm_job(tmp_path):
    assert not lease_watch.watch_launcher(tmp_path, lambda: None, lambda w: None, lambda: None)
    held = lease_holder.acquire(tmp_path / "run", holder(), say=print)
    held.hand_to_slurm("1234")
    assert not lease_watch.watch_launcher(tmp_path / "run", lambda: None, lambda w: None, lambda: None)
    assert lease.read(tmp_path / "run" / lease.LEASE_FILE).describe().startswith("Slurm job 1234")


def test_processes_in_finds_a_job_by_its_run_dir_variable_only(tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    env = {**os.environ, "LAUNCHER_RUN_DIR": str(run_dir)}
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    bystander = subprocess.Popen(["sleep", "30", str(run_dir)])  # names the run dir, is not the job
    try:
        deadline = time.monotonic() + 5
        while job.pid not in lease_holder.processes_in(run_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = lease_holder.processes_in(run_dir)
        assert job.pid in found and bystander.pid not in found
        assert lease_holder.processes_in(tmp_path / "ru") == []
    finally:
        job.kill(), bystander.kill()


def test_the_cause_is_the_error_that_is_not_a_consequence_then_the_lowest_rank(tmp_path):
    from launcher.rundir import by_cause, is_consequence, write_error_record

    lost = "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:40322"
    assert is_consequence(lost) and not is_consequence("ValueError: bad row 7")
    write_error_record(tmp_path, {"rank": 0, "paragraph": "rank 0 lost its peer", "consequence": True})
    write_error_record(tmp_path, {"rank": 3, "paragraph": "rank 3 raised", "consequence": False})
    write_error_record(tmp_path, {"rank": 2, "paragraph": "rank 2 raised", "consequence": False})
    assert [e["rank"] for e in by_cause(tmp_path)] == [2, 3, 0]


def test_rank_zeros_console_echo_hides_tracebacks_and_points_at_the_log(tmp_path):
    from launcher.script.entry import TracebackFilter

    f = TracebackFilter(tmp_path / "rank0.log")
    out = f.feed(b"step 1 loss 2.0\n[rank0]: Traceback (most recent call last):\n[rank0]:   File \"x.py\", line 3\n")
    out += f.feed(b"[rank0]:     raise ValueError('x')\n[rank0]: RuntimeError: Connection closed by peer\nstep 2\n")
    assert out.decode() == f"step 1 loss 2.0\n(a traceback: see {tmp_path / 'rank0.log'})\nstep 2\n"


def test_a_crashing_rank_leaves_its_traceback_in_its_log_and_a_record_naming_it(tmp_path):
    """The built-in worker's crash path (train.failures.record_crash): what the supervisor then prints."""
    from launcher.rundir import by_cause
    from launcher.train.failures import record_crash

    (tmp_path / "logs").mkdir()
    try:
        raise ValueError("row 7 has no answer")
    except ValueError as err:
        record_crash(tmp_path, 1, err)
    try:
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4032")
    except RuntimeError as err:
        record_crash(tmp_path, 0, err)
    first = by_cause(tmp_path)[0]
    assert first["rank"] == 1 and "failed with ValueError: row 7 has no answer" in first["paragraph"]
    assert str(tmp_path / "logs" / "rank1.log") in first["paragraph"]
    assert "Traceback (most recent call last)" in (tmp_path / "logs" / "rank1.log").read_text()


REENTRANT = """
import os, signal, sys
from launcher import lease
from launcher.launch import lease_holder

held = lease_holder.acquire(lease_holder.Path(sys.argv[1]), lease.this_process("python -m launcher"), say=print)
signal.signal(signal.SIGINT, lambda *_: held.set_state("abort"))  # what a second Ctrl-C does (launch/spawn.py)
fsync, fired = os.fsync, []


def fsync_then_ctrl_c(fd):
    fsync(fd)
    if not fired:  # the next Ctrl-C lands while the first one's write still holds the lease's lock
        fired.append(1)
        os.kill(os.getpid(), signal.SIGINT)


lease_holder.os.fsync = fsync_then_ctrl_c
held.set_state("stop")
print("state", lease.read(held.path).state)
"""


def test_a_ctrl_c_landing_while_the_last_ones_state_is_written_does_not_hang_the_launcher(tmp_path):
    """Found by pressing Ctrl-C three times: the third handler waited for the lock the second held, in the same thread,
    and the launcher hung with its ranks gone and the run dir still leased. Run in a child so a hang fails the test."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", REENTRANT, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("state abort")  # the later Ctrl-C's state is the one left for the ranks
