"""Weights & Biases from rank 0: config and plan logged once, metrics per step. Offline runs land in
<run dir>/wandb/ (`wandb sync` uploads them later). The API key stays in the environment wandb reads it from.

wandb runs silent, as its banner and end-of-run history and summary would break into the live progress bar: the
history and summary stay in the run's own files, its warnings go to its debug.log, and the launcher says in one line
where the run is."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from launcher.plan.types import Plan
from launcher.train.metrics import EvalMetrics, StepMetrics

log = logging.getLogger(__name__)


RANK_INIT_TIMEOUT_S = 30  # wandb's own default is 90 s; the launching host already checked the server


class Tracker:
    """Tracking never stops training: a wandb that cannot start online starts offline, one that cannot start at all
    or fails later (its service died, its folder's disk is full) is reported once and tracking stops."""

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        self.run: Any = None
        if plan.wandb_mode == "disabled":
            return
        mode = plan.wandb_mode
        self.run = _start(plan, run_dir, mode)
        if self.run is None and mode == "online":
            mode = "offline"
            self.run = _start(plan, run_dir, mode)
        if self.run is not None:
            log.info(_where(self.run.settings.sync_dir, self.run.url if mode == "online" else None))

    def log(self, m: StepMetrics) -> None:
        if self.run is not None:
            try:
                self.run.log({k: v for k, v in asdict(m).items() if k != "step" and v is not None}, step=m.step)
            except Exception as err:  # noqa: BLE001 - any failure of an outside service; training goes on
                self._stop(f"logging step {m.step} failed: {type(err).__name__}: {err}")

    def log_eval(self, m: EvalMetrics) -> None:
        if self.run is not None:
            try:
                self.run.log({"eval_loss": m.eval_loss, "eval_tokens": m.eval_tokens}, step=m.step)
            except Exception as err:  # noqa: BLE001 - any failure of an outside service; training goes on
                self._stop(f"logging the eval loss of step {m.step} failed: {type(err).__name__}: {err}")

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as err:  # noqa: BLE001
                self._stop(f"finishing failed: {type(err).__name__}: {err}")

    def _stop(self, why: str) -> None:
        log.warning(f"Weights & Biases stopped tracking this run ({why}); training goes on, metrics.jsonl has every "
                    "step")
        self.run = None


def _start(plan: Plan, run_dir: Path, mode: str) -> Any:
    import wandb

    run_id = f"{plan.run_name}-{hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]}"
    try:
        # The process-wide settings carry the mode too: wandb's usage analytics read them, not the run's, and in the
        # default online mode an offline run would still probe W&B's servers (10 s to time out on a closed network).
        wandb.setup(settings=wandb.Settings(mode=mode))
        return wandb.init(
            project=plan.wandb_project, entity=plan.wandb_entity or None, name=plan.run_name, id=run_id,
            resume="allow", dir=str(run_dir), mode=mode, config={"plan": plan.to_dict()},
            settings=wandb.Settings(silent=True, init_timeout=RANK_INIT_TIMEOUT_S),
        )
    except Exception as err:  # noqa: BLE001 - wandb raises CommError, UsageError, timeouts, OSError...
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        then = "trying offline" if mode == "online" else "tracking is off for this run; metrics.jsonl has every step"
        log.warning(f"Weights & Biases could not start {mode} ({type(err).__name__}: {first}); {then}")
        return None


def _where(sync_dir: str, url: str | None) -> str:
    """The one console line about the Weights & Biases run (wandb's own banner stays out of the console)."""
    if url:
        return f"Weights & Biases: {url} (files in {sync_dir})"
    return f"Weights & Biases: offline run in {sync_dir} (`wandb sync` that folder to upload it)"
