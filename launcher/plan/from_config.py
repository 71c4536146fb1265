"""The config -> the Plan, with every input checked on the launching host: the last place the user's config is read
before a launch (launch/ takes the Plan), the same for a launch and for a standalone preflight."""
from __future__ import annotations

from pathlib import Path

from launcher.config import inputs, services
from launcher.config.schema import LauncherConfig
from launcher.plan.hardware import Hardware, detect
from launcher.plan.checks import check_fp8_installed
from launcher.plan.types import Plan
from launcher.plan.resolve import resolve
from launcher.rundir import default_run_name


def plan_job(cfg: LauncherConfig, cwd: str, environ: dict[str, str]) -> tuple[LauncherConfig, Plan, Hardware]:
    """Checked inputs -> Plan, the same for a launch and for a standalone preflight."""
    import importlib.util

    hw = detect()
    cfg = inputs.check_model(cfg, cwd)
    cfg = inputs.check_tokenizer(cfg, cwd)
    name = cfg.run.name or default_run_name(cfg.model.name, cfg.method.name, cfg.plan.name)
    run_dir = Path(inputs.absolute(cfg.run.dir or str(Path(cfg.run.output_dir) / name), cwd))
    field, value = ("run.dir", cfg.run.dir) if cfg.run.dir else ("run.output_dir", cfg.run.output_dir)
    inputs.check_run_dir(run_dir, field, value)
    inputs.check_resume(cfg.run.resume, run_dir, cwd, script=bool(cfg.script or cfg.script_module))
    data_sets = inputs.check_data(cfg, cwd)
    wandb_env = (environ.get("WANDB_MODE", ""), bool(services.wandb_key(environ)),
                 importlib.util.find_spec("wandb") is not None)
    plan = resolve(cfg, hw, run_dir=str(run_dir), run_name=name, data_sets=data_sets, wandb_env=wandb_env,
                   micro_cap=recorded_micro_batch(run_dir) if cfg.train.micro_batch_size == "auto" else 0)
    check_fp8_installed(plan, importlib.util.find_spec("torchao") is not None)
    return cfg, plan, hw


def recorded_micro_batch(run_dir: Path) -> int:
    """The micro batch an out-of-memory left this run at (launcher/launch/replan.py): a rerun of an auto micro batch
    starts there instead of running out of memory again. 0: none recorded."""
    import json

    from launcher.plan.micro_batch import RECORD_FILE

    try:
        return int(json.loads((run_dir / RECORD_FILE).read_text())["micro_batch_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
