"""`python -m launcher.preflight +topo=... [overrides]`: the launch's composition and plan, then every check, a table,
preflight.json in the run dir; exit 1 when a check fails, 2 for a user error. `preflight=quick` limits it to this
host's static checks; otherwise (auto or full) it runs everything, the collective included.
`python -m launcher.preflight --peak`: time a bf16 matmul on each GPU here and record it for MFU (preflight/peak.py).
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from launcher.errors import LauncherError, report
from launcher.interrupts import stop_on_term_and_hangup, stopped
from launcher.rundir import dry_run_dir


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    debug = environ.get("LAUNCHER_DEBUG") == "1"
    stop_on_term_and_hangup()
    try:
        if "--peak" in overrides:
            from launcher.preflight import peak

            return peak.main(environ)
        from launcher.config.compose import compose
        from launcher.plan.from_config import plan_job
        from launcher.preflight import mode_for, run_checks
        from launcher.preflight.report import failed, print_table, summary_line, write_json

        cfg, _ = compose(overrides)
        cfg, plan, _hw = plan_job(cfg, os.getcwd(), environ)
        run_dir = Path(plan.run_dir)
        mode = mode_for(plan.launch.preflight, plan.num_hosts)
        mode = "full" if plan.launch.preflight in ("auto", "skip") else mode
        rows, extra = run_checks(plan, environ, mode)
    except LauncherError as err:
        if debug:
            traceback.print_exc()
        return report(err, debug, how="LAUNCHER_DEBUG=1")
    except KeyboardInterrupt as err:
        return stopped(err)
    print_table(rows)
    path = write_json(dry_run_dir(run_dir), rows, extra)  # never over a running or finished run's preflight.json
    print(summary_line(rows, mode) + f"; {path}")
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
