"""script= / script_module= from the user's config -> the ScriptLaunch the launch side runs (launcher/script/launch.py
holds the checks and the rank program); read at the entry with the rest of the config."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shlex
import sys

from launcher.config.schema import LauncherConfig
from launcher.errors import LauncherError
from launcher.plan.types import Plan
from launcher.script.checks import (SP_MINIMUM, check_accelerate_installed, check_plan,
                                    check_sequence_parallel_support)
from launcher.script.launch import ScriptLaunch, load_script, prepare_launch


def script_from_config(cfg: LauncherConfig, plan: Plan, script_args: list[str] | tuple[str, ...], cwd: str
                  ) -> ScriptLaunch | None:
    """script=: the user's script runs on every rank instead of the built-in worker . Every check is
    done here, before the run dir is touched."""
    if not (cfg.script or cfg.script_module):
        if script_args:
            raise LauncherError("script", "", "name the script they are for: script=train.py -- ARGS",
                                problem=f"the arguments after -- ({shlex.join(script_args)}) go to a user script")
        return None
    loaded = load_script(cfg.script, cfg.script_module, cfg.script_api, list(script_args), cwd)
    check_accelerate_installed(loaded.api, importlib.util.find_spec("accelerate") is not None, sys.executable)
    check_plan(plan, loaded.api)
    check_sequence_parallel_support(plan, loaded.api, {p: _version(p) for p in SP_MINIMUM})
    print(f"script     {loaded.name}: script_api={loaded.api} ({loaded.reason})")
    return prepare_launch(loaded, plan, cwd, cfg.topo.master_addr, cfg.topo.master_port)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""
