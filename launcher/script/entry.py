"""Where a user's script starts on each rank, at every (re)start:

    python -m launcher.script.entry rank RUN_DIR API [NAME=VALUE...] -- SCRIPT.py|-m MODULE ARGS...
    python -m launcher.script.entry node RUN_DIR -- ACCELERATE_LAUNCH_ARGV...   (accelerate over a hostfile)

`rank` finds the newest complete checkpoint (so a restarted, requeued or rerun job resumes), passes it on
(LAUNCHER_RESUME_FROM; `--resume_from_checkpoint` for a Trainer script), sets the variables rendered for it
(NAME=VALUE: a Trainer script's parallelism config under sequence parallel), runs the script with its output in
logs/rank<N>.log (rank 0 also on the console), passes signals on to it, and when the script fails on its own leaves
a report naming the rank and the last lines of its log for the supervisor. `node` adds the host's --machine_rank
(DeepSpeed's runner starts it as the only rank of its host) and execs `accelerate launch`.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Callable

from launcher.checkpoint.store import Checkpoint, latest_complete_any
from launcher.errors import LauncherError
from launcher.script.launch import flag_values
from launcher.rundir import CHECKPOINTS, EXCEPTION_LINE, PLAN_FILE, is_consequence, rank_log, write_error_record

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
TAIL_LINES = 15
PR_SET_PDEATHSIG = 1
SCRIPT_SITE = Path(__file__).parent / "site"


def resume_args(api: str, script_args: list[str], resume: Checkpoint | None) -> list[str]:
    """A Trainer script resumes with --resume_from_checkpoint unless the user named a checkpoint already."""
    if api != "hf_trainer" or resume is None or "resume_from_checkpoint" in flag_values(script_args):
        return []
    return ["--resume_from_checkpoint", str(resume.path)]


def failure_report(script: str, rank: int, host: str, code: int, log: Path, tail: list[str]) -> dict:
    """The rank's error for the console: its exception (type and message) when it raised one, else the last lines of
    its output; the whole output is in its log."""
    raised = last_exception(tail)
    if EXCEPTION_LINE.match(raised):
        problem, shown = f"rank {rank} (on {host}) failed with {raised} (exit code {code})", ""
    else:
        problem = f"rank {rank} (on {host}) exited with code {code}"
        shown = "\nThe last lines of {}:\n{}".format(log, "\n".join(f"    {line}" for line in tail) or "    (no output)")
    err = LauncherError("script", script, f"read {log} for its whole output; rerun the same command to resume from "
                        "the newest complete checkpoint", problem=problem)
    return {"rank": rank, "field": err.field, "value": script, "restartable": True, "time": time.time(),
            "consequence": is_consequence(raised), "paragraph": err.paragraph() + shown}


def last_exception(tail: list[str]) -> str:
    """The exception line a Python traceback ends with (without torch's `[rankN]:` prefix), or the last line."""
    found = [m.group(1) for line in tail if (m := EXCEPTION_LINE.match(line.strip()))]
    return (found or tail or [""])[-1]


def script_path(env: dict[str, str]) -> str:
    """The script's PYTHONPATH: script/site/ first (its sitecustomize closes a gloo group at exit), then, as under
    `python -m` and accelerate launch, the working directory, so that its modules are importable by the script."""
    return os.pathsep.join(p for p in (str(SCRIPT_SITE), os.getcwd(), env.get("PYTHONPATH", "")) if p)


def run_rank(run_dir: Path, api: str, command: list[str], env: dict[str, str]) -> int:
    rank = int(env.get("RANK", "0"))
    say = (lambda m: print(m, flush=True)) if rank == 0 else (lambda _m: None)  # rank 0's stdout is the console
    resume = latest_complete_any(run_dir / CHECKPOINTS, warn=say)
    target_len = 2 if command[:1] == ["-m"] else 1
    argv = [sys.executable, *command, *resume_args(api, command[target_len:], resume)]
    if resume:
        say(f"launcher: the script resumes from {resume.path} (LAUNCHER_RESUME_FROM)")
    log = rank_log(run_dir, rank)
    log.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**env, "LAUNCHER_RESUME_FROM": str(resume.path) if resume else "", "PYTHONPATH": script_path(env)}
    code, tail, signalled = _run_logged(argv, child_env, log, echo=rank == 0, run_dir=run_dir)
    if code != 0 and not signalled:
        write_error_record(run_dir, failure_report(" ".join(command[:target_len]), rank, socket.gethostname(), code,
                                                   log, tail))
    return code


def _start_as_if_alone() -> None:
    """In the script's process, before exec. It must not outlive this entry (torchrun or DeepSpeed may SIGKILL it).
    And it gets the forwarded signals with their default actions, as if started by itself: what an engine's launcher
    ignores (job.sbatch's step ignores SIGUSR1 so that DeepSpeed's launcher survives it) is inherited, and would
    otherwise leave a script that does not catch Slurm's pre-timeout signal training on as if none came."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for s in FORWARDED:
        signal.signal(s, signal.SIG_DFL)


def _run_logged(argv: list[str], env: dict[str, str], log: Path, echo: bool, run_dir: Path | None = None
                ) -> tuple[int, list[str], bool]:
    """Run argv with stdout and stderr appended to log (and echoed); returns (exit code, last lines, whether a signal
    from outside stopped it). With run_dir, this rank follows the launcher's lease: a stop asked there reaches the
    script as SIGTERM (the signal the README documents for scripts), a launcher that is gone or an abort ends it."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_start_as_if_alone)
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    if run_dir is not None:
        _follow_launcher(run_dir, proc, lambda: forward(signal.SIGTERM, None))
    try:
        tail = _copy_output(proc, log, echo)
        code = proc.wait()
    finally:  # a caller in the same process (a test, an embedding tool) gets its own handlers back
        for s, handler in previous.items():
            signal.signal(s, handler)
    shown = [line.decode(errors="replace")[:300] for line in tail]
    return (128 - code if code < 0 else code), shown, bool(received)


def _follow_launcher(run_dir: Path, proc: subprocess.Popen[bytes], stop: Callable[[], None]) -> None:
    from launcher import lease, lease_watch

    def end(code: int, why: str) -> None:
        print(f"{why}: stopping this rank", file=sys.stderr, flush=True)
        proc.kill()
        os._exit(code)

    lease_watch.watch_launcher(run_dir, stop, lambda why: end(lease.LAUNCHER_GONE_EXIT, why),
                         lambda: end(lease.ABORT_EXIT, "stopped at once on the launcher's request"))


class TracebackFilter:
    """Rank 0's output as the console shows it: everything but Python tracebacks, which stay in the rank's log (a
    rank that fails is reported by the supervisor with its exception; the others' tracebacks are consequences)."""

    START = b"Traceback (most recent call last)"

    def __init__(self, log: Path) -> None:
        self.log, self.hiding = log, False

    def feed(self, chunk: bytes) -> bytes:
        shown = []
        for piece in chunk.splitlines(keepends=True):
            if not self.hiding and self.START in piece:
                self.hiding = True
                shown.append(f"(a traceback: see {self.log})\n".encode())
                continue
            if self.hiding:
                text = piece.decode(errors="replace").strip()
                text = text.split("]: ", 1)[1] if text.startswith("[rank") and "]: " in text else text
                if EXCEPTION_LINE.match(text) and not text.startswith(("File ", "raise ", "return ")):
                    self.hiding = False
                continue
            shown.append(piece)
        return b"".join(shown)


def _copy_output(proc: subprocess.Popen[bytes], log: Path, echo: bool) -> deque[bytes]:
    """Until the child closes its output: append it to log, echo it, and keep its last non-empty lines."""
    tail: deque[bytes] = deque(maxlen=TAIL_LINES)
    partial = b""
    console = TracebackFilter(log)
    assert proc.stdout is not None
    with open(log, "ab") as out:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            out.write(chunk)
            out.flush()
            if echo:
                sys.stdout.buffer.write(console.feed(chunk))
                sys.stdout.flush()
            lines = (partial + chunk).replace(b"\r", b"\n").split(b"\n")
            partial = lines.pop()
            tail.extend(line for line in lines if line.strip())
    if partial.strip():
        tail.append(partial)
    return tail


def run_node(run_dir: Path, command: list[str], env: dict[str, str]) -> None:
    """Exec `accelerate launch` with this host's --machine_rank: the runner started one process per host, whose RANK
    is the host's index, and gave it one device; accelerate's torchrun starts and numbers the host's ranks itself."""
    plan = json.loads((run_dir / PLAN_FILE).read_text())
    at = command.index("--config_file") + 2
    argv = [*command[:at], "--machine_rank", env.get("RANK", "0"), *command[at:]]
    child = {k: v for k, v in env.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "CROSS_RANK", "CROSS_SIZE")}
    child["PYTHONPATH"] = script_path(env)
    child["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(plan["procs_per_host"]))) if plan["accelerator"] == "cuda" \
        else ""
    os.execve(argv[0], argv, child)


def split_settings(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """`NAME=VALUE... -- COMMAND...` -> ({NAME: VALUE}, COMMAND); without a `--` after them, all is the command."""
    at = words.index("--") if "--" in words else -1
    if at < 0 or not all("=" in word for word in words[:at]):
        return {}, words
    return dict(word.split("=", 1) for word in words[:at]), words[at + 1:]


def main(argv: list[str]) -> int:
    mode, run_dir, rest = argv[0], Path(argv[1]), argv[2:]
    if mode == "node":
        run_node(run_dir, rest[1:] if rest[:1] == ["--"] else rest, dict(os.environ))
    settings, command = split_settings(rest[1:])
    return run_rank(run_dir, rest[0], command, {**os.environ, **settings})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
