"""Failures inside a rank that have a user-facing cause, turned into the one-paragraph error: out of memory at a step,
and a collective that timed out because some rank or host never arrived."""
from __future__ import annotations

import math
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from launcher.errors import LauncherError
from launcher.rundir import is_consequence, rank_log, write_error_record
from launcher.plan.types import Plan

TIMEOUT_MARKERS = ("timed out", "timeout", "Timeout")
PEER_LOST_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class CollectiveFailure(LauncherError):
    """A rank lost its peers or waited too long: reported as one paragraph, but a restart may cure it. A lost peer
    is a consequence of another rank's exit: the supervisor reports that rank's error first."""

    lost_peer = False


REPLAN_STEPS = 3  # an out-of-memory within this many steps of a start, at an auto micro batch, is re-planned


class EarlyOutOfMemory(LauncherError):
    """Out of memory in the first steps at a micro batch train.micro_batch_size=auto chose: the supervisor re-plans
    with the next smaller one (the engine's collectives cannot be recovered inside the ranks)."""

    replan = True


def oom_error(plan: Plan, rank: int, step: int, start: int = 0) -> LauncherError:
    if plan.micro_batch_note and step < start + REPLAN_STEPS:
        return EarlyOutOfMemory(
            "train.micro_batch_size", plan.micro_batch_size, "the launcher retries with the next smaller micro batch",
            problem=f"rank {rank} ran out of GPU memory in global step {step + 1} at micro batch "
            f"{plan.micro_batch_size}, which auto chose (estimated {plan.memory.total_gb:.1f} GiB per GPU of "
            f"{plan.memory.capacity_gb:.0f})")
    half = max(plan.micro_batch_size // 2, 1)
    return LauncherError(
        "train.micro_batch_size", plan.micro_batch_size,
        f"run with run.dry_run=true to see the memory estimate, then try train.micro_batch_size={half} (gradient "
        "accumulation keeps the global batch), train.gradient_checkpointing=true, a plan that shards more "
        "(+plan=zero3, +plan=zero3_offload) or method=lora",
        problem=f"rank {rank} ran out of GPU memory in global step {step + 1} (estimated "
        f"{plan.memory.total_gb:.1f} GiB per GPU of {plan.memory.capacity_gb:.0f})",
    )


def collective_error(plan: Plan, rank: int, step: int, detail: str, lost_peer: bool = False) -> CollectiveFailure:
    hosts = ", ".join(plan.hosts)
    what = ("lost the connection to another rank" if lost_peer
            else f"waited {plan.collective_timeout_s} s")
    failure = CollectiveFailure(
        "run.collective_timeout_s", plan.collective_timeout_s,
        "one or more ranks stopped answering (a crashed or frozen process, a host that went down, or a network "
        "NCCL/gloo cannot use): check the other ranks' logs in logs/, then run python -m launcher.preflight with the "
        "same +topo= to test every host and the collective path; raise run.collective_timeout_s only for very slow "
        "first steps",
        problem=f"rank {rank} on {socket.gethostname()} {what} in a collective in global step {step + 1} of a job on "
        f"hosts [{hosts}]: {detail.strip().splitlines()[0][:200]}",
    )
    failure.lost_peer = lost_peer
    return failure


@contextmanager
def user_facing_failures(plan: Plan, rank: int, current_step: list[int]) -> Iterator[None]:
    """Wrap the training loop; current_step[0] is kept up to date by the caller."""
    start = current_step[0]
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise oom_error(plan, rank, current_step[0], start) from err
    except (RuntimeError, torch.distributed.DistError) as err:
        if any(marker in str(err) for marker in TIMEOUT_MARKERS):
            raise collective_error(plan, rank, current_step[0], str(err)) from err
        if any(marker in str(err) for marker in PEER_LOST_MARKERS):
            raise collective_error(plan, rank, current_step[0], str(err), lost_peer=True) from err
        raise


def nonfinite_error(plan: Plan, step: int, loss: float, grad_norm: float | None) -> LauncherError | None:
    """train.nonfinite=stop: a global step whose loss or gradient norm is inf/NaN ends the run there, before its
    save (without DeepSpeed's per-gradient check its update may have carried them into the weights). Every rank sees
    the same all-reduced loss and global norm, so every rank stops at the same step."""
    if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
        return None
    norm = "" if grad_norm is None else f" and a gradient norm of {grad_norm:.6g}"
    return LauncherError(
        "train.lr", plan.train.lr,
        f"rerun the same command to resume from the newest complete checkpoint with a lower train.lr or more "
        f"train.warmup_steps (now {plan.train.warmup_steps}), and look for broken rows in the data; or set "
        "train.nonfinite=skip to have DeepSpeed skip bf16 steps whose gradients are not finite",
        problem=f"global step {step} gave a loss of {loss:.6g}{norm}, which is not finite: the run stopped there "
        "without saving (train.nonfinite=stop), since such a step may carry inf/NaN into the weights")


FAULT_NONFINITE_VAR = "LAUNCHER_FAULT_NONFINITE_STEP"


def injected_nonfinite_step(env: dict[str, str]) -> int:
    """Fault injection for train.nonfinite (tests/integration/test_nonfinite.py): with LAUNCHER_FAULT_NONFINITE_STEP=N
    the loss of global step N is multiplied by NaN before its backward pass, as a diverging run's would be. 0: off."""
    value = env.get(FAULT_NONFINITE_VAR, "")
    return int(value) if value.isdigit() else 0


FAULT_OOM_VAR = "LAUNCHER_FAULT_OOM_ABOVE_MICRO"


def injected_out_of_memory(plan: Plan, env: dict[str, str]) -> None:
    """Fault injection for the out-of-memory re-plan (tests/integration/test_micro_batch_replan.py), whose real
    trigger, a GPU running out of memory, a CPU machine cannot produce: with LAUNCHER_FAULT_OOM_ABOVE_MICRO=N in
    the environment, a micro batch above N raises torch's out-of-memory error where the first step would."""
    limit = env.get(FAULT_OOM_VAR, "")
    if limit.isdigit() and plan.micro_batch_size > int(limit):
        raise torch.OutOfMemoryError(f"injected by {FAULT_OOM_VAR}={limit}: micro batch {plan.micro_batch_size}")


class Watchdog:
    """Turns a hang into an error: a collective whose peer froze or vanished can block in the backend longer than its
    timeout (a stopped process keeps its sockets open), so a thread checks that steps keep completing."""

    def __init__(self, plan: Plan, rank: int, on_hang: Callable[[LauncherError], None]) -> None:
        import threading
        import time

        self.plan, self.rank, self.on_hang, self.time = plan, rank, on_hang, time
        self.step, self.last, self.paused = 0, time.monotonic(), True
        threading.Thread(target=self._watch, daemon=True, name="launcher-watchdog").start()

    def pet(self, step: int) -> None:
        self.step, self.last, self.paused = step, self.time.monotonic(), False

    def pause(self, paused: bool) -> None:
        """Saves and the first step (engine warm-up) may legitimately take long."""
        self.paused, self.last = paused, self.time.monotonic()

    def _watch(self) -> None:
        limit = self.plan.collective_timeout_s
        while True:
            self.time.sleep(min(5.0, limit / 4))
            if not self.paused and self.time.monotonic() - self.last > limit:
                self.on_hang(collective_error(self.plan, self.rank, self.step,
                                              f"no global step completed for {limit} s"))
                return


def record_user_error(run_dir: Path, rank: int, err: LauncherError) -> None:
    """For the supervisor, which reports it as the job's error (exit 2) instead of restarting."""
    lost_peer = isinstance(err, CollectiveFailure) and err.lost_peer
    write_error_record(run_dir, {"rank": rank, "field": err.field, "value": str(err.value),
                                 "paragraph": err.paragraph(), "restartable": isinstance(err, CollectiveFailure),
                                 "consequence": lost_peer, "replan": isinstance(err, EarlyOutOfMemory)})


def record_crash(run_dir: Path, rank: int, err: Exception) -> None:
    """An exception the launcher has no paragraph for: its traceback into logs/rank<N>.log (not onto the console),
    and a record naming it. A communication error after another rank's exit is marked as a consequence."""
    import traceback

    log_path = rank_log(run_dir, rank)
    with open(log_path, "a") as f:
        f.write(traceback.format_exc())
    message = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}".rstrip(": ")
    write_error_record(run_dir, {
        "rank": rank, "field": "", "value": "", "restartable": True, "consequence": is_consequence(message),
        "paragraph": f"error: rank {rank} on {socket.gethostname()} failed with {message}. Its traceback is in "
                     f"{log_path}; rerun the same command to resume from the newest complete checkpoint (or "
                     "run.max_restarts=N to restart by itself)."})
