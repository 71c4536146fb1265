"""Where a GPU waits for its host, read from a `train.profile_steps` Chrome trace (issue 27).

A GPU is idle wherever none of its kernels, copies or sets runs. Each idle stretch (a gap) is put down to what the
rank's training thread was doing then: the loop phase (the `launcher: <phase>` ranges of launcher/train/loop.py)
and the outermost operator running on that thread (`aten::...`, a liger kernel's autograd function, a DeepSpeed
range); a gap with no operator running is Python between operators (module hooks, DeepSpeed's bookkeeping).
Then what the GPU runs while busy, by kernel kind (matmul, attention, liger's Triton kernels, optimizer, copies).

    python bench/trace_gaps.py <run dir>/profile/rank0-steps6-8.json.gz [--min-gap-us 5]
"""
from __future__ import annotations

import argparse
import bisect
import gzip
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
PHASE_PREFIX = "launcher: "
BETWEEN = "(Python between operators)"
SLICE_US = 20.0  # resolution at which Python frames are matched to idle time


def load_events(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def outermost(spans: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The operators not nested in another one on the same thread (a trace nests them by time)."""
    out: list[tuple[float, float, str]] = []
    for start, end, name in sorted(spans, key=lambda s: (s[0], -s[1])):
        if out and end <= out[-1][1]:
            continue
        out.append((start, end, name))
    return out


def overlaps(spans: list[tuple[float, float, str]], starts: list[float], lo: float, hi: float
             ) -> list[tuple[float, str]]:
    """(overlap in us, name) of each span overlapping [lo, hi]; spans are outermost, so sorted and disjoint."""
    i = max(bisect.bisect_right(starts, lo) - 1, 0)
    found = []
    while i < len(spans) and spans[i][0] < hi:
        start, end, name = spans[i]
        part = min(end, hi) - max(start, lo)
        if part > 0:
            found.append((part, name))
        i += 1
    return found


def attribute(pieces: list[tuple[float, float, str, bool]], lo: float, hi: float,
              between: list[tuple[float, float]] | None = None) -> dict[str, float]:
    """Split [lo, hi] among the operators running then, each piece (start, end, name, on the autograd worker):
    where a worker thread runs an operator (the backward pass on CUDA runs on one), it takes the time over the main
    thread, which only waits for it; time with no operator anywhere is Python between operators (its midpoints and
    lengths, in slices of about SLICE_US, are added to `between`)."""
    points = sorted({lo, hi, *(max(p[0], lo) for p in pieces), *(min(p[1], hi) for p in pieces)})
    out: dict[str, float] = defaultdict(float)
    for a, b in zip(points, points[1:]):
        mid = (a + b) / 2
        running = [p for p in pieces if p[0] <= mid < p[1]]
        running.sort(key=lambda p: not p[3])
        out[running[0][2] if running else BETWEEN] += b - a
        if not running and between is not None:  # in slices, each put down to the Python frame at its middle
            slices = max(1, round((b - a) / SLICE_US))
            between.extend((a + (k + 0.5) * (b - a) / slices, (b - a) / slices) for k in range(slices))
    return out


def innermost_python(events: list[dict], threads: set[tuple], main: tuple, samples: list[tuple[float, float]]
                     ) -> dict[str, float]:
    """With a trace taken with_stack (LAUNCHER_PROFILE_WITH_STACK=1), the Python function each sample of 'Python
    between operators' falls in: the innermost frame of the autograd thread if it runs one, else of the main thread.
    A sweep over the frames in start order; frames nest per thread, so a stack per thread holds the running ones."""
    frames = sorted((e["ts"], e["ts"] + e["dur"], e["name"], (e["pid"], e["tid"])) for e in events
                    if e.get("cat") == "python_function" and (e["pid"], e["tid"]) in threads)
    if not frames:
        return {}
    stacks: dict[tuple, list] = defaultdict(list)
    out: dict[str, float] = defaultdict(float)
    i = 0
    for at, us in sorted(samples):
        while i < len(frames) and frames[i][0] <= at:
            stack = stacks[frames[i][3]]
            while stack and stack[-1][1] <= frames[i][0]:
                stack.pop()
            stack.append(frames[i])
            i += 1
        running = []
        for tid, stack in stacks.items():
            while stack and stack[-1][1] <= at:
                stack.pop()
            if stack:
                running.append((tid == main, stack[-1][2]))
        out[min(running)[1] if running else "(no Python frame)"] += us
    return out


def gap_report(events: list[dict], min_gap_us: float = 5.0, top: int = 15) -> str:
    """The window's wall time, GPU busy time, and its idle time by loop phase and by host operator."""
    phases_all = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith(PHASE_PREFIX)]
    if not phases_all:
        return "no `launcher: ` phase ranges in this trace (profiled before they existed?)"
    tids: dict[tuple, int] = defaultdict(int)
    for e in phases_all:
        tids[(e["pid"], e["tid"])] += 1
    main = max(tids, key=tids.get)
    phases = outermost([(e["ts"], e["ts"] + e["dur"], e["name"][len(PHASE_PREFIX):]) for e in phases_all
                        if (e["pid"], e["tid"]) == main])
    # the training thread and the autograd engine's (on CUDA the backward pass and its hooks run on a thread of
    # its own); other threads (a lease watch, gloo's workers) run beside the step and do not hold up the GPU
    workers = {(e["pid"], e["tid"]) for e in events if e.get("cat") == "cpu_op"
               and e["name"].startswith("autograd::engine::evaluate_function")}
    threads: dict[tuple, list] = defaultdict(list)
    for e in events:
        if (e["pid"], e["tid"]) in workers | {main} and e.get("cat") in ("cpu_op", "user_annotation") \
                and not e["name"].startswith((PHASE_PREFIX, "ProfilerStep")):
            threads[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"], e["name"]))
    ops = {tid: outermost(spans) for tid, spans in threads.items()}
    starts = {tid: [o[0] for o in spans] for tid, spans in ops.items()}
    lo, hi = phases[0][0], phases[-1][1]
    busy = merged([(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in GPU_CATS
                   and e["ts"] + e["dur"] > lo and e["ts"] < hi])
    gaps, cursor = [], lo
    for start, end in busy:
        if start - cursor >= min_gap_us:
            gaps.append((cursor, min(start, hi)))
        cursor = max(cursor, end)
    if hi - cursor >= min_gap_us:
        gaps.append((cursor, hi))
    by_phase: dict[str, float] = defaultdict(float)
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    phase_starts = [p[0] for p in phases]
    between: list[tuple[float, float]] = []
    for g0, g1 in gaps:
        for part, name in overlaps(phases, phase_starts, g0, g1):
            by_phase[name] += part
        pieces = []
        for tid, spans in ops.items():
            i = max(bisect.bisect_right(starts[tid], g0) - 1, 0)
            while i < len(spans) and spans[i][0] < g1:
                if spans[i][1] > g0:
                    pieces.append((*spans[i], tid != main))
                i += 1
        for name, us in attribute(pieces, g0, g1, between).items():
            by_op[name][0] += us
            by_op[name][1] += 1
    wall = hi - lo
    idle = sum(g1 - g0 for g0, g1 in gaps)
    busy_us = sum(min(e, hi) - max(s, lo) for s, e in busy)
    cpu_by_phase: dict[str, float] = defaultdict(float)
    for start, end, name in phases:
        cpu_by_phase[name] += end - start
    lines = [f"window {wall / 1e3:.1f} ms (the loop's phases, {len(phases)} ranges): GPU busy {busy_us / 1e3:.1f} ms "
             f"({busy_us / wall:.0%}), idle {idle / 1e3:.1f} ms in {len(gaps)} gaps of >= {min_gap_us:g} us",
             "host time and GPU idle time by loop phase:"]
    for name in sorted(cpu_by_phase, key=cpu_by_phase.get, reverse=True):
        lines.append(f"  {name:<16} host {cpu_by_phase[name] / 1e3:8.1f} ms   GPU idle {by_phase[name] / 1e3:8.1f} ms")
    lines.append(f"GPU idle by what the host thread was running (top {top}):")
    for name, (us, count) in sorted(by_op.items(), key=lambda kv: kv[1][0], reverse=True)[:top]:
        lines.append(f"  {us / 1e3:8.2f} ms in {count:5d} gaps  {name[:100]}")
    frames = innermost_python(events, workers | {main}, main, between)
    if frames:
        lines.append(f"'{BETWEEN}' by the innermost Python function running (top {top}):")
        for name, us in sorted(frames.items(), key=lambda kv: kv[1], reverse=True)[:top]:
            lines.append(f"  {us / 1e3:8.2f} ms  {name[:110]}")
    return "\n".join(lines)


KERNEL_KINDS = (  # first match wins: attention and optimizer kernels can carry gemm-like names
    ("attention", re.compile(r"flash|fmha|sdpa|attention|cudnn", re.I)),  # cuDNN: its SDPA kernels
    ("optimizer", re.compile(r"multi_tensor|adam|foreach", re.I)),
    ("liger / Triton", re.compile(r"liger|rms_norm|swiglu|rope|cross_entropy|triton", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|matmul|splitk", re.I)),
)


def kernel_kind(event: dict) -> str:
    """A GPU event's kind for kernel_report: one of KERNEL_KINDS, 'copy / set' or 'other' (elementwise, reductions)."""
    if event.get("cat") in ("gpu_memcpy", "gpu_memset"):
        return "copy / set"
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(event["name"])), "other")


def kernel_report(events: list[dict], top: int = 8) -> str:
    """What the GPU runs while busy, by kind: where a step's time goes once the host no longer holds it up, and so
    which lever is left (faster matmuls, fewer small kernels). Times are summed per kernel within the loop's phases."""
    phases = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith(PHASE_PREFIX)]
    if not phases:
        return "no `launcher: ` phase ranges in this trace"
    lo, hi = min(e["ts"] for e in phases), max(e["ts"] + e["dur"] for e in phases)
    by_kind: dict[str, float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") in GPU_CATS and lo <= e["ts"] < hi:
            kind = kernel_kind(e)
            by_kind[kind] += e["dur"]
            if kind == "other":
                other[e["name"]] += e["dur"]
    total = sum(by_kind.values())
    lines = [f"GPU time by kernel kind (window {(hi - lo) / 1e3:.1f} ms, kernels {total / 1e3:.1f} ms):"]
    for kind, us in sorted(by_kind.items(), key=lambda kv: kv[1], reverse=True):
        lines.append(f"  {kind:<15} {us / 1e3:8.1f} ms  {us / total:6.1%} of kernel time, "
                     f"{us / (hi - lo):6.1%} of window")
    if other:
        lines.append(f"'other' kernels (top {top}):")
        for name, us in sorted(other.items(), key=lambda kv: kv[1], reverse=True)[:top]:
            lines.append(f"  {us / 1e3:8.2f} ms  {name[:110]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--min-gap-us", type=float, default=5.0)
    args = parser.parse_args(argv)
    events = load_events(args.trace)
    print(gap_report(events, args.min_gap_us))
    print(kernel_report(events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
