"""Where a step's time goes at a small micro batch (issue 27): `python -m launcher +plan=zero2` on the 1.14B Llama of
bench/perf.py at micro 4, profiled over three steps (train.profile_steps), then the same with Python frames
(LAUNCHER_PROFILE_WITH_STACK=1), then the job with +plan=auto at 32 sequences per GPU, profiled too. Prints each
row's tokens/s and MFU (their medians include the profiled steps: a profile's figures, not a benchmark's), the
top operators, where the GPU idles and what it runs by kernel kind (bench/trace_gaps.py), and copies them to --out.

On a lent GPU machine, from the project root:  source .device/setup.sh && python3 bench/host_profile.py --out DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.perf import GPU_SPEC, Bench, run_tree, tail  # noqa: E402
from bench.trace_gaps import gap_report, kernel_report, load_events  # noqa: E402


ROWS = ("zero2-micro4-profiled", "zero2-micro4-with-stack", "auto-global32")


def run(bench: Bench, name: str, overrides: list[str], steps: int, out: Path, stack: bool = False) -> None:
    run_dir = bench.work / "runs" / name
    argv = [sys.executable, "-m", "launcher", *bench.launcher_overrides(run_dir, steps), *overrides]
    log = bench.work / f"{name}.log"
    metrics_file = run_dir / "metrics.jsonl"

    def read() -> list[dict]:
        rows = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()] \
            if metrics_file.exists() else []
        return [m for m in rows if "loss" in m]

    env = {**bench.env, **({"LAUNCHER_PROFILE_WITH_STACK": "1"} if stack else {})}
    code, _ = run_tree(argv, env, log, 280, done=lambda: len(read()) >= steps)
    metrics = read()
    if len(metrics) < steps:
        print(f"{name}: failed (exit {code}): {tail(log)}")
        return
    plan = json.loads((run_dir / "plan.json").read_text())
    steady = metrics[3:]
    print(f"{name}: plan {plan['plan_name']} micro {plan['micro_batch_size']} x accum {plan['grad_accum']}: "
          f"{statistics.median(m['tokens_per_s'] for m in steady):,.0f} tokens/s, MFU "
          f"{statistics.median(m['mfu'] for m in steady):.1%}, peak {max(m['memory_gb'] for m in metrics):.1f} GiB; "
          f"{plan.get('auto_reason', '')} {plan.get('micro_batch_note', '')}")
    for line in (run_dir / "logs" / "rank0.log").read_text().splitlines():
        if "profile of steps" in line or "liger-kernel" in line:
            print("   ", line.split(" INFO ", 1)[-1])
    for table in (run_dir / "profile").glob("rank0-*.txt") if (run_dir / "profile").exists() else []:
        shutil.copy(table, out / f"{name}-{table.name}")
        print(table.read_text()[:6000])
    for trace in (run_dir / "profile").glob("rank0-*.json.gz") if (run_dir / "profile").exists() else []:
        events = load_events(trace)
        report = gap_report(events) + "\n" + kernel_report(events)
        (out / f"{name}-gaps.txt").write_text(report + "\n")
        print(report, flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    args = parser.parse_args()
    rows = args.rows.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-host-"))
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    bench = Bench(dataclasses.replace(GPU_SPEC, steps=10), False, work, 1, 300, env)
    bench.write_data(rows=64)
    if "zero2-micro4-profiled" in rows:
        run(bench, "zero2-micro4-profiled", ["+plan=zero2", "train.profile_steps=6-8"], 10, args.out)
    if "zero2-micro4-with-stack" in rows:
        run(bench, "zero2-micro4-with-stack", ["+plan=zero2", "train.profile_steps=6-7"], 8, args.out, stack=True)
    if "auto-global32" in rows:
        run(bench, "auto-global32", ["+plan=auto", "train.micro_batch_size=auto", "train.global_batch_size=32",
                                     "train.profile_steps=6-7"], 10, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
