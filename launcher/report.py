"""`python -m launcher.report runs/<name>`: a summary of a run and its plots (loss.png, throughput.png).

The launcher writes the plots at the end of every run too; this command redraws them at any time, mid-run included.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path

from launcher.errors import LauncherError, report as report_error
from launcher.rundir import METRICS_FILE, PLAN_FILE


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        raise LauncherError("run_dir", str(run_dir), "give a run directory that has trained at least one step",
                            problem="it has no metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(training step rows, validation rows): metrics.jsonl holds both, told apart by `eval_loss`."""
    return [r for r in rows if "eval_loss" not in r], [r for r in rows if "eval_loss" in r]


def summary(run_dir: Path, rows: list[dict]) -> str:
    plan = json.loads((run_dir / PLAN_FILE).read_text()) if (run_dir / PLAN_FILE).exists() else {}
    metrics, evals = split_rows(rows)
    steady = metrics[len(metrics) // 4:] or metrics
    mfu = [m["mfu"] for m in steady if m.get("mfu") is not None]
    head = f"run {plan.get('run_name', run_dir.name)}: {len(metrics)} steps"
    if plan:
        head += (f" of {plan['max_steps']}, {plan['plan_name']} on {plan['topo_name']} (world size "
                 f"{plan['world_size']}), model {plan['model']['name']}, method {plan['method']['name']}")
    lines = [
        head,
        f"loss       first {metrics[0]['loss']:.4f}  last {metrics[-1]['loss']:.4f}  min {min(m['loss'] for m in metrics):.4f}",
        f"throughput median {statistics.median(m['tokens_per_s'] for m in steady):,.0f} tokens/s, step time median "
        f"{statistics.median(m['step_time_s'] for m in steady):.3f} s"
        + (f", MFU median {statistics.median(mfu):.1%}" if mfu else ""),
        f"memory     peak {max(m.get('memory_gb', 0.0) for m in metrics):.2f} GiB per rank",
    ]
    if evals:
        best = min(evals, key=lambda m: m["eval_loss"])
        lines.insert(2, f"eval loss  first {evals[0]['eval_loss']:.4f} (step {evals[0]['step']})  last "
                        f"{evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})  min {best['eval_loss']:.4f} "
                        f"(step {best['step']})")
    return "\n".join(lines)


def preload() -> threading.Thread:
    """Import matplotlib (~1 s of CPU) in the background while the job trains: the plots drawn when it ends then
    do not wait for it. Join the thread before plotting or exiting."""
    thread = threading.Thread(target=_import_matplotlib, name="preload-matplotlib", daemon=True)
    thread.start()
    return thread


def _import_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def plot(run_dir: Path, rows: list[dict]) -> list[Path]:
    """loss.png (the training loss per step, and the eval loss where it was scored) and throughput.png."""
    _import_matplotlib()
    import matplotlib.pyplot as plt

    metrics, evals = split_rows(rows)
    steps = [m["step"] for m in metrics]
    out = []
    for name, key, label in (("loss.png", "loss", "loss"), ("throughput.png", "tokens_per_s", "tokens / s")):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        ax.plot(steps, [m[key] for m in metrics], linewidth=1.5, label="training loss" if key == "loss" else None)
        if key == "loss" and evals:
            ax.plot([m["step"] for m in evals], [m["eval_loss"] for m in evals], marker="o", linewidth=1.5,
                    label="eval loss")
            ax.legend()
        ax.set_xlabel("global step")
        ax.set_ylabel(label)
        ax.set_title(f"{run_dir.name}: {label}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / name)
        plt.close(fig)
        out.append(run_dir / name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.report", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        metrics = read_metrics(args.run_dir)
    except LauncherError as err:
        return report_error(err, how="LAUNCHER_DEBUG=1")
    print(summary(args.run_dir, metrics))
    for path in plot(args.run_dir, metrics):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
