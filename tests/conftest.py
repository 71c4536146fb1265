"""Shared fixtures: a place for runs, and a helper that runs the launcher as a user would (a real subprocess)."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
# The launches of one test process share a tokenized-data cache of their own, not the user's ~/.cache/launcher.
DATA_CACHE = tempfile.mkdtemp(prefix="launcher-test-cache-")
atexit.register(shutil.rmtree, DATA_CACHE, True)


def check_golden(name: str, text: str) -> None:
    """Rendered artifacts against reviewed files; LAUNCHER_UPDATE_GOLDEN=1 rewrites them (then review the diff)."""
    path = GOLDEN / name
    if os.environ.get("LAUNCHER_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} missing: run with LAUNCHER_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def launcher_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LAUNCHER_DEBUG", None)
    env["WANDB_MODE"] = "disabled"  # the wandb test turns it on with logging.wandb.mode=offline
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("LAUNCHER_CACHE_DIR", DATA_CACHE)
    return env


def console_script() -> str:
    """The `launcher` entry point of the environment the tests run in (.venv/bin/launcher after scripts/setup.sh),
    whether or not that environment's bin is on PATH."""
    exe = Path(sys.executable).parent / "launcher"
    assert exe.exists(), f"the console script {exe} is missing: install with scripts/setup.sh"
    return str(exe)


def run_launcher(*overrides: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """`python -m launcher <overrides>` in a child process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launcher", *overrides],
        cwd=cwd or REPO, env=env or launcher_env(), capture_output=True, text=True, timeout=timeout,
    )


def read_metrics(run_dir: Path) -> list[dict]:
    """The training steps' rows of metrics.jsonl (validation scores have rows of their own, with eval_loss)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if "eval_loss" not in row]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def start_launcher(*overrides: str, env: dict[str, str] | None = None, log: Path | None = None,
                   nohup: bool = False) -> subprocess.Popen:
    """`python -m launcher` in the background, in its own session, output to `log`, with Ctrl-C's signal as a
    terminal's foreground job has it: a test suite started in the background by a shell (`pytest &`) ignores SIGINT,
    every child inherits that, and Python then installs no KeyboardInterrupt for it. `nohup`: SIGHUP ignored, as
    `nohup python -m launcher ...` starts it."""
    import signal

    def signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)

    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "launcher", *overrides], cwd=REPO, env=env or launcher_env(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=signals)


def kill_tree(proc: subprocess.Popen, signum: int = 9) -> None:
    """A crash as the machine sees it: every process of the job gets SIGKILL at once."""
    from launcher.launch.spawn import process_tree

    for p in process_tree(proc.pid):
        try:
            os.kill(p, signum)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.02) -> bool:
    """Poll until condition() holds (True) or the process ended (False); bounded by timeout."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(poll)
    raise TimeoutError("condition not reached in time")


def freeze_mid_save(run_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Stop the job's processes (SIGSTOP: a storage that stalls) the moment a save's temporary directory appears.
    True when they were frozen mid-save (the directory is still there), False when the run ended first."""
    import time

    from launcher.launch.lease_holder import processes_in

    ckpts, deadline = run_dir / "checkpoints", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ckpts.is_dir() and any(p.name.startswith(".tmp-global_step") for p in os.scandir(ckpts)):
            for pid in processes_in(run_dir):
                try:
                    os.kill(pid, 19)  # SIGSTOP
                except ProcessLookupError:
                    pass
            return any(ckpts.glob(".tmp-global_step*"))
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError("no save started in time")


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except ValueError:
        return 0


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Train once per distinct job in the session; tests that only read a run's outputs (metrics, checkpoints,
    exports) share it instead of paying for another training run."""
    cache: dict[tuple[str, ...], tuple[subprocess.CompletedProcess[str], Path]] = {}

    def get(*overrides: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        if overrides not in cache:
            run_dir = tmp_path_factory.mktemp("trained") / "run"
            cache[overrides] = (run_launcher(f"run.dir={run_dir}", *overrides), run_dir)
        return cache[overrides]

    return get
