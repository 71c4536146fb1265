"""Loss parity of train.precision=fp8 against bf16 (issue 27): the same job, seed and data twice through the launcher,
a few hundred steps each, compared step by step. FP8 ships only where its loss stays within a stated margin of bf16's.

The model is bench/perf.py's 1.14B Llama cut to 4 layers, so that every layer FP8 converts there (q/o, gate/up, down)
converts here too and the runs take a minute. The data is generated: words of random letters, packed, enough that
the steps see every token once (the shipped set is small enough that both runs memorize it and their losses both go
to zero, which compares nothing: the 09:53 run below). The loss then falls to the plateau that the letters' entropy
sets, and a numerical fault in the FP8 layers would show as a higher plateau.
    On a lent GPU machine: source .device/setup.sh && python3 bench/fp8_parity.py --record yes
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.perf import read_jsonl, run_tree, tail  # noqa: E402

RESULTS = REPO / "bench" / "results" / "fp8.md"
MARGIN = 0.02  # the mean loss of the last WINDOW steps: fp8 within 2% of bf16
WINDOW = 50
MODEL = ["model.arch.hidden_size=2048", "model.arch.num_layers=4", "model.arch.num_heads=16",
         "model.arch.num_kv_heads=8", "model.arch.intermediate_size=8192"]


def write_data(path: Path, rows: int, seed: int = 1234) -> None:
    """Alpaca rows of ~150 random-letter words each (~2 per 1,024-token packed row)."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"

    def text() -> str:
        return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(150))

    path.write_text("".join(json.dumps({"instruction": "Continue the text.", "output": text()}) + "\n"
                            for _ in range(rows)))


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m and "step" in m]


def run(name: str, precision: str, steps: int, work: Path, extra: list[str]) -> tuple[list[float], str]:
    run_dir = work / name
    argv = [sys.executable, "-m", "launcher", *MODEL, "train.seq_len=1024", "train.micro_batch_size=8",
            "train.global_batch_size=8", f"train.max_steps={steps}", "train.lr=3e-4", "train.warmup_steps=20",
            "train.save_every=0", "train.log_every=1", f"train.precision={precision}", "data.packing=true",
            "logging.wandb.mode=disabled", "preflight=skip", f"data.path={work / 'data.jsonl'}", f"run.dir={run_dir}",
            *extra]
    code, _ = run_tree(argv, dict(os.environ), work / f"{name}.log", 900)
    return losses(run_dir), "" if code == 0 else f"exit {code}: {tail(work / f'{name}.log')}"


def compare(bf16: list[float], fp8: list[float], window: int = WINDOW) -> tuple[float, float, float]:
    """(mean bf16 loss, mean fp8 loss, their relative difference) over the last `window` steps."""
    a, b = statistics.fmean(bf16[-window:]), statistics.fmean(fp8[-window:])
    return a, b, abs(b - a) / a


def report(bf16: list[float], fp8: list[float], steps: int, errors: list[str]) -> list[str]:
    import torch

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [f"## {when}, 1x {gpu}: loss parity, train.precision=fp8 against bf16 ({steps} steps)", "",
             f"torch {torch.__version__}; `python3 bench/fp8_parity.py`: {' '.join(MODEL)}, seq 1024, micro 8, "
             "lr 3e-4, generated random-letter text packed (each token seen once), the same seed.", ""]
    if errors or len(bf16) < steps or len(fp8) < steps:
        return lines + [f"- did not finish: {'; '.join(errors) or 'fewer steps logged than asked'}", ""]
    if any(not math.isfinite(x) for x in fp8):
        return lines + ["- fp8 logged a loss that is not finite: parity FAILED", ""]
    lines += ["| step | bf16 loss | fp8 loss |", "|---|---|---|"]
    for s in sorted({1, 10, 25, 50, 100, 150, 200, 250, steps} & set(range(1, steps + 1))):
        lines.append(f"| {s} | {bf16[s - 1]:.4f} | {fp8[s - 1]:.4f} |")
    a, b, rel = compare(bf16, fp8)
    verdict = "met" if rel <= MARGIN else "MISSED"
    return lines + ["", f"- mean loss of the last {WINDOW} steps: bf16 {a:.4f}, fp8 {b:.4f}, difference "
                    f"{rel * 100:.2f}% (margin {MARGIN * 100:.0f}%): {verdict}", ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--record", choices=("yes", "no"), default="no", help="append the result to bench/results/fp8.md")
    p.add_argument("--logs", default="", help="copy the two runs' logs here")
    args, extra = p.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="fp8-parity-") as tmp:
        work = Path(tmp)
        write_data(work / "data.jsonl", rows=args.steps * 8 * 2 + 100)
        bf16, e1 = run("bf16", "bf16", args.steps, work, extra)
        fp8, e2 = run("fp8", "fp8", args.steps, work, extra)
        if args.logs:
            Path(args.logs).mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", str(work / "bf16.log"), str(work / "fp8.log"), args.logs], check=False)
            subprocess.run(["cp", str(work / "fp8" / "logs" / "rank0.log"), f"{args.logs}/fp8-rank0.log"], check=False)
    lines = report(bf16, fp8, args.steps, [e for e in (e1, e2) if e])
    print("\n".join(lines))
    if args.record == "yes":
        with open(RESULTS, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
