"""Imported by Python at start-up in every process of a user's script: launcher.script.entry puts this directory
first on the script's PYTHONPATH. It registers one exit hook and then imports the sitecustomize it shadows (the
user's or the distribution's), as Python would have.

Why: a rank that exits with a gloo process group still alive can abort while the interpreter shuts down (SIGABRT,
"terminate called without an active exception": a gloo worker thread takes the GIL after finalization began; see
launcher/gloo_exit.py, pytorch issue 190489, and pull request 179291 that would have fixed it in torch was abandoned).
Trainer and many plain scripts never call destroy_process_group, so a script that finished could be reported as
failed with exit code 134.

In a rank (LOCAL_RANK set, its parent not a rank) it also follows the launcher's lease (launcher.lease): a stop asked
in the launcher's terminal on another host reaches the script as SIGTERM, the signal the README documents for
scripts; a launcher that is gone, or a second Ctrl-C, ends the rank at once.
"""
import atexit
import importlib
import os
import sys


def _close_gloo_group() -> None:
    """Destroy a gloo default group and let gloo's worker threads finish while the interpreter is whole (why, and how
    it was measured: launcher/gloo_exit.py). Registered first, so it runs after the script's own exit hooks (wandb's,
    accelerate's). NCCL groups are left to the script: their teardown may wait on peers."""
    try:
        from launcher.gloo_exit import leave_gloo
    except ImportError:
        return
    leave_gloo()


def _import_shadowed() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved, mine = sys.path[:], sys.modules.pop("sitecustomize", None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        importlib.import_module("sitecustomize")
    except ModuleNotFoundError as err:
        if err.name != "sitecustomize":
            raise
        sys.modules["sitecustomize"] = mine
    finally:
        sys.path[:] = saved


def _is_rank() -> bool:
    if "LOCAL_RANK" not in os.environ or not os.environ.get("LAUNCHER_RUN_DIR"):
        return False
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            return b"\0LOCAL_RANK=" not in b"\0" + f.read()
    except OSError:
        return True


def _follow_launcher() -> None:
    try:
        from launcher import lease, lease_watch
    except ImportError:
        return
    import signal

    def gone(why: str) -> None:
        print(f"{why}: stopping this rank", file=sys.stderr, flush=True)
        os._exit(lease.LAUNCHER_GONE_EXIT)

    lease_watch.watch_launcher(__import__("pathlib").Path(os.environ["LAUNCHER_RUN_DIR"]),
                         lambda: os.kill(os.getpid(), signal.SIGTERM), gone, lambda: os._exit(lease.ABORT_EXIT))


atexit.register(_close_gloo_group)
if _is_rank():
    _follow_launcher()
_import_shadowed()
