"""Weights & Biases from rank 0: config and plan logged once, metrics per step. Offline runs land in
<run dir>/wandb/ (`wandb sync` uploads them later). The API key stays in the environment wandb reads it from."""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from launcher.plan import Plan
from launcher.train.metrics import StepMetrics


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
        )

    def log(self, m: StepMetrics) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in asdict(m).items() if k != "step" and v is not None}, step=m.step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
