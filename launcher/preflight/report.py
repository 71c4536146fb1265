"""Preflight output: the console table (check, host, result, fix hint) and preflight.json in the run dir."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from launcher.preflight.checks import FAIL, PASS, Check

STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def failed(rows: list[Check]) -> list[Check]:
    return [r for r in rows if r.status == FAIL]


def summary_line(rows: list[Check], mode: str) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "warn", "fail")}
    return f"preflight ({mode}): {counts['pass']} passed, {counts['warn']} warning(s), {counts['fail']} failed"


def print_table(rows: list[Check], only_problems: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("check", "host", "result", "fix hint", title="preflight")
    for r in rows:
        if only_problems and r.status == PASS:
            continue
        table.add_row(r.check, r.host, f"[{STYLE[r.status]}]{r.status}[/]: {r.detail}", r.hint)
    Console(width=160).print(table)


def write_json(run_dir: Path, rows: list[Check], extra: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "preflight.json"
    doc = {"ok": not failed(rows), **extra, "checks": [dataclasses.asdict(r) for r in rows]}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path
