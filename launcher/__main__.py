"""`python -m launcher`: compose -> plan -> render -> check -> launch. Nothing else lives here."""
from __future__ import annotations

import os
import sys
import traceback

from launcher.errors import LauncherError, report
from launcher.interrupts import stop_on_term_and_hangup, stopped

HYDRA_FLAGS = ("--cfg", "-c", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--resolve", "--package", "-p")


def split_script_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Everything after a literal `--` belongs to the user's script, never to Hydra."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def debug_requested(overrides: list[str]) -> bool:
    """run.debug=true among the overrides, read by Hydra's own override parser: it must work even when composing
    fails on another override (that failure is what the traceback is for)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in overrides:
        try:
            parsed = OverridesParser.create().parse_override(override)
        except Exception:  # noqa: BLE001 - a malformed override is reported by the composition itself
            continue
        if parsed.key_or_group == "run.debug" and str(parsed.value()).lower() == "true":
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    overrides, script_args = split_script_args(args)
    if overrides[:1] in (["--help"], ["-h"], ["list"]):
        from launcher.config.catalog import help_text, list_text

        print(help_text() if overrides[0] != "list" else list_text())
        return 0
    if any(a.split("=", 1)[0] in HYDRA_FLAGS for a in overrides):
        from launcher.config.hydra_cli import passthrough

        return passthrough(overrides)
    debug = os.environ.get("LAUNCHER_DEBUG") == "1" or debug_requested(overrides)
    stop_on_term_and_hangup()
    try:
        from omegaconf import OmegaConf

        from launcher.config.compose import compose
        from launcher.launch.job import launch_plan
        from launcher.plan.from_config import plan_job
        from launcher.script.from_config import script_from_config
        from launcher.script.launch import join_module_word
        from launcher.secrets import mask_secrets

        cwd, environ = os.getcwd(), dict(os.environ)
        cfg, composed = compose(join_module_word(overrides))
        cfg, plan, hw = plan_job(cfg, cwd, environ)
        script = script_from_config(cfg, plan, script_args, cwd)
        resolved = OmegaConf.to_yaml(mask_secrets(OmegaConf.to_container(composed)))
        return launch_plan(plan, hw, resolved, script, cfg.run.dry_run, cwd, environ)
    except LauncherError as err:
        if debug:
            traceback.print_exc()
        return report(err, debug)
    except KeyboardInterrupt as err:  # before the job started (planning, preflight) or after it (plots): nothing to save
        return stopped(err)


if __name__ == "__main__":
    sys.exit(main())
