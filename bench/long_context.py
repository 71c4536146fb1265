"""Long sequences on one GPU: what DeepSpeed's tiled MLP does to the peak memory and the speed, and the sequence
parallel code path at sp=1 against +plan=zero2 (issue 26: no regression).

On a lent GPU machine, from the project root:  source .device/setup.sh && python3 bench/long_context.py
Every row is `python -m launcher` on the 1.14B Llama shape of bench/perf.py (rows cut to exactly seq_len tokens),
bf16, one micro batch per step; the peak is torch.cuda.max_memory_allocated as the rank reports it, the estimate is
the plan's (plan.json). The table is printed and appended to bench/results/long_context.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.perf import GPU_SPEC, Bench, run_tree, tail  # noqa: E402

RESULTS = REPO / "bench" / "results" / "long_context.md"
ROWS = [  # name, seq_len, micro batch, steps, overrides
    ("zero2, seq 2048, micro 4", 2048, 4, 12, ["+plan=zero2"]),
    ("sp code path at sp=1 with ZeRO-2, seq 2048, micro 4", 2048, 4, 12,
     ["+plan=sp", "plan.sp=1", "plan.zero_stage=2"]),
    ("zero2, seq 16384, tiled MLP off", 16384, 1, 6, ["+plan=zero2", "train.tiled_mlp=off"]),
    ("zero2, seq 16384, tiled MLP on", 16384, 1, 6, ["+plan=zero2", "train.tiled_mlp=on"]),
    ("zero2, seq 32768, tiled MLP off", 32768, 1, 5, ["+plan=zero2", "train.tiled_mlp=off"]),
    ("zero2, seq 32768, tiled MLP on", 32768, 1, 5, ["+plan=zero2", "train.tiled_mlp=on"]),
    ("zero2, seq 16384, checkpointing, tiled MLP off", 16384, 1, 6,
     ["+plan=zero2", "train.gradient_checkpointing=true", "train.tiled_mlp=off"]),
    ("zero2, seq 16384, checkpointing, tiled MLP on", 16384, 1, 6,
     ["+plan=zero2", "train.gradient_checkpointing=true", "train.tiled_mlp=on"]),
]


def row(bench: Bench, name: str, overrides: list[str], work: Path, budget: float) -> dict:
    run_dir = work / "runs" / re.sub(r"\W+", "_", name)
    argv = [sys.executable, "-m", "launcher", *bench.launcher_overrides(run_dir, bench.spec.steps), *overrides]
    log = work / f"{run_dir.name}.log"
    metricsfile = run_dir / "metrics.jsonl"

    def read() -> list[dict]:
        rows = [json.loads(x) for x in metricsfile.read_text().splitlines() if x.strip()] \
            if metricsfile.exists() else []
        return [m for m in rows if "loss" in m]

    # stopped once its last step is logged: the final checkpoint of a 1.1B model (18 GB) is not what is measured
    code, _ = run_tree(argv, bench.env, log, budget, done=lambda: len(read()) >= bench.spec.steps)
    metrics = read()
    plan = json.loads((run_dir / "plan.json").read_text()) if (run_dir / "plan.json").exists() else {}
    shutil.rmtree(run_dir, ignore_errors=True)
    if len(metrics) < bench.spec.steps:
        return {"name": name, "error": f"exit {code}: {tail(log)}"}
    steady = metrics[2:] or metrics
    return {"name": name, "tokens_per_s": statistics.median(m["tokens_per_s"] for m in steady),
            "mfu": statistics.median(m["mfu"] for m in steady if m.get("mfu") is not None) if steady[0].get("mfu")
            else None, "peak_gib": max(m["memory_gb"] for m in metrics), "estimate_gib": plan["memory"]["total_gb"],
            "loss": metrics[-1]["loss"]}


def table(rows: list[dict], device: str) -> str:
    lines = [f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {device}, 1.14B Llama (bench/perf.py's shape), bf16",
             "", "| run | tokens/s | MFU | peak GiB (measured) | estimate GiB | last loss |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:400]} | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['name']} | {r['tokens_per_s']:,.0f} | {mfu} | {r['peak_gib']:.2f} | "
                     f"{r['estimate_gib']:.2f} | {r['loss']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole table")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (0-based) to run; empty: all")
    args = parser.parse_args(argv)
    chosen = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-long-"))
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    deadline = time.monotonic() + args.budget
    results = []
    for name, seq_len, micro, steps, overrides in chosen:
        spec = dataclasses.replace(GPU_SPEC, seq_len=seq_len, micro_batch_size=micro, steps=steps)
        left = deadline - time.monotonic()
        if left < 60:
            results.append({"name": name, "error": "not run: out of time budget"})
            continue
        folder = work / f"s{seq_len}"
        folder.mkdir(parents=True, exist_ok=True)
        bench = Bench(spec, False, folder, 1, left, env)
        if not bench.data.exists():
            bench.write_data(rows=16)
        results.append(row(bench, name, overrides, folder, left))
        print(table(results[-1:], device), flush=True)
    text = table(results, device)
    print(text)
    if device != "cpu":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(text + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
