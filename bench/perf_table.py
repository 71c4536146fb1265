"""bench/perf.py's rows, their token accounting and the table and targets made of them: pure, unit-tested.

Each row carries its own tokens per step and GPU (a launcher row from its metrics.jsonl, a baseline from the micro
batch it ran), so rows of different micro batches or gradient accumulation compare by their real rates.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

TARGETS = [  # (launcher row, baseline row, minimum ratio of tokens/s per GPU)
    ("launcher-zero2", "ds-zero2", 1.0), ("launcher-zero2", "fsdp2", 1.0), ("launcher-zero3", "ds-zero3", 1.0),
    ("launcher-zero3", "hf-zero3", 1.5), ("best", "hf-zero3", 1.5), ("launcher-auto", "ds-zero2-liger", 1.10),
]
MFU_TARGETS = [("launcher-zero2", 0.45), ("best", 0.45), ("launcher-auto", 0.55)]  # (row, minimum MFU)


@dataclass
class Result:
    name: str
    what: str
    ok: bool = False
    error: str = ""
    step_times: list[float] = field(default_factory=list)
    tokens_per_step: float | None = None  # per GPU: what this row trained each step, whatever its micro batch
    peak_gib: float | None = None
    startup_s: float | None = None  # process start -> start of step 1
    optimizer: str = ""
    optimizer_s: float = 0.0  # of startup_s, building or loading the optimizer (FusedAdam's op)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""

    def median_step(self, first: int) -> float | None:
        steady = self.step_times[first - 1:]
        return statistics.median(steady) if self.ok and steady else None

    def rate(self, first: int) -> float | None:
        """Tokens/s per GPU over the steady steps, from this row's own tokens per step."""
        step = self.median_step(first)
        return self.tokens_per_step / step if step and self.tokens_per_step else None


# ---- a launcher row's accounting ------------------------------------------------------------------------------------
def step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The optimizer steps of metrics.jsonl: with validation it also holds eval rows (eval_loss, no loss, no tokens)."""
    return [m for m in rows if "loss" in m and "tokens" in m]


def tokens_per_gpu(steps: list[dict[str, Any]], gpus: int) -> float:
    """metrics.jsonl counts a step's tokens over all GPUs; a row's rate is per GPU (the median step's, should the
    count vary)."""
    return statistics.median(m["tokens"] for m in steps) / gpus


def plan_notes(plan: dict[str, Any]) -> list[str]:
    """What plan.json says a launcher row ran: micro batch and gradient accumulation (auto may pick them), and the
    plan +plan=auto chose."""
    batch = f"micro batch {plan['micro_batch_size']} x grad accum {plan['grad_accum']}"
    if plan.get("auto_reason"):
        return [f"+plan=auto chose {plan['plan_name']}, {batch}"]
    return [batch]


# ---- the table and the targets --------------------------------------------------------------------------------------
def rates(results: dict[str, Result], first: int) -> dict[str, float]:
    """Tokens/s per GPU of every row that ran, and `best`: the fastest launcher row."""
    rate = {n: r.rate(first) for n, r in results.items() if r.rate(first)}
    launcher_rows = [n for n in rate if n.startswith("launcher-")]
    if launcher_rows:
        rate["best"] = max(rate[n] for n in launcher_rows)
    return rate


def best_launcher_row(rate: dict[str, float]) -> str | None:
    launcher_rows = {n: v for n, v in rate.items() if n.startswith("launcher-")}
    return max(launcher_rows, key=launcher_rows.get) if launcher_rows else None


def table(results: dict[str, Result], first: int, per_token: float, peak_flops: float | None) -> str:
    """The markdown table; MFU = tokens/s per GPU x training FLOPs per token / the GPU's peak."""
    rate = rates(results, first)
    lines = ["| run | what | optimizer | tokens/s per GPU | MFU | peak GiB | step s | start to step 1 s | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if name not in rate:
            status = f"skipped | | | | | {r.skipped}" if r.skipped else f"failed | | | | | {r.error}"
            lines.append(f"| {name} | {r.what} | {r.optimizer} | {status} |")
            continue
        mfu = f"{rate[name] * per_token / peak_flops:.1%}" if peak_flops else "n/a"
        lines.append(f"| {name} | {r.what} | {r.optimizer} | {rate[name]:,.0f} | {mfu} | {r.peak_gib:.1f} | "
                     f"{r.median_step(first):.3f} | {r.startup_s:.1f} | {'; '.join(r.notes)} |")
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def label(mine: str, best: str | None) -> str:
    return f"best ({best})" if mine == "best" and best else mine


def ratio_targets(rate: dict[str, float]) -> list[str]:
    """Each launcher row against its baseline, both rows at their own tokens per step."""
    best = best_launcher_row(rate)
    out = []
    for mine, theirs, minimum in TARGETS:
        if mine in rate and theirs in rate:
            ratio = rate[mine] / rate[theirs]
            out.append(f"- {label(mine, best)} / {theirs}: {ratio:.2f}x (target >= {minimum}x): "
                       f"{verdict(ratio >= minimum)}")
        else:
            out.append(f"- {label(mine, best)} / {theirs}: not measured (a row failed or was skipped)")
    return out


def mfu_targets(rate: dict[str, float], per_token: float, peak_flops: float | None) -> list[str]:
    """No MFU without a known peak (the CPU); `best` only where it is not launcher-zero2 again."""
    if not peak_flops:
        return []
    best = best_launcher_row(rate)
    out = []
    for mine, minimum in MFU_TARGETS:
        row = best if mine == "best" else mine
        if mine == "best" and row == "launcher-zero2":
            continue
        if row not in rate:
            out.append(f"- {label(mine, best)} MFU: not measured (a row failed or was skipped)")
            continue
        mfu = rate[row] * per_token / peak_flops
        out.append(f"- {label(mine, best)} MFU: {mfu:.1%} (target >= {minimum:.0%}): {verdict(mfu >= minimum)}")
    return out


def startup_targets(startups: dict[str, list[float]]) -> list[str]:
    """The launcher's start against the same-stage loop's, both under torchrun: medians, a start varies by seconds."""
    out = []
    for stage in ("zero2", "zero3"):
        mine, plain = startups.get(f"launcher-{stage}", []), startups.get(f"ds-{stage}", [])
        if mine and plain:
            extra = statistics.median(mine) - statistics.median(plain)
            out.append(f"- launch overhead ({stage}): `python -m launcher` to step 1 {startup_samples(mine)}, torchrun "
                       f"ds_loop.py (same model, less loading FusedAdam) {startup_samples(plain)}: {extra:+.1f} s "
                       f"(target <= +3 s): {verdict(extra <= 3)}")
    return out


def targets(results: dict[str, Result], first: int, startups: dict[str, list[float]], per_token: float,
            peak_flops: float | None) -> list[str]:
    rate = rates(results, first)
    return (ratio_targets(rate) + mfu_targets(rate, per_token, peak_flops) + startup_targets(startups)
            + fp8_lines(rate, per_token, peak_flops))


def fp8_lines(rate: dict[str, float], per_token: float, peak_flops: float | None) -> list[str]:
    """The opt-in FP8 row against the loop and bf16 auto: no target of its own, its MFU against the bf16 peak."""
    if "launcher-auto-fp8" not in rate:
        return []
    mfu = f", MFU {rate['launcher-auto-fp8'] * per_token / peak_flops:.1%} of the bf16 peak" if peak_flops else ""
    against = [f"{rate['launcher-auto-fp8'] / rate[r]:.2f}x {r}" for r in ("ds-zero2-liger", "launcher-auto")
               if r in rate]
    return [f"- launcher-auto-fp8 (train.precision=fp8, opt-in): {', '.join(against) or 'no row to compare'}{mfu}"]


def startup_samples(samples: list[float]) -> str:
    """'median 24.1 s of 3 (31.2, 22.0, 24.1)': one start on these machines varies by seconds."""
    listed = ", ".join(f"{x:.1f}" for x in samples)
    return f"median {statistics.median(samples):.1f} s of {len(samples)} ({listed})"
