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

from launcher.plan import Plan
from launcher.train.metrics import StepMetrics

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, plan: Plan, run_dir: Path) -> None:
        self.run: Any = None
        if plan.wandb_mode == "disabled":
            return
        import wandb

        run_id = f"{plan.run_name}-{hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]}"
        self.run = wandb.init(
            project=plan.wandb_project, entity=plan.wandb_entity or None, name=plan.run_name, id=run_id,
            resume="allow", dir=str(run_dir), mode=plan.wandb_mode, config={"plan": plan.to_dict()},
            settings=wandb.Settings(silent=True),
        )
        log.info(_where(self.run.settings.sync_dir, self.run.url if plan.wandb_mode == "online" else None))

    def log(self, m: StepMetrics) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in asdict(m).items() if k != "step" and v is not None}, step=m.step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _where(sync_dir: str, url: str | None) -> str:
    """The one console line about the Weights & Biases run (wandb's own banner stays out of the console)."""
    if url:
        return f"Weights & Biases: {url} (files in {sync_dir})"
    return f"Weights & Biases: offline run in {sync_dir} (`wandb sync` that folder to upload it)"
