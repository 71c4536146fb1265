"""`train.profile_steps=8-10`: torch.profiler over those global steps of every rank, for a user asking where a
step's time goes. Each rank writes a Chrome trace (open it in https://ui.perfetto.dev) and a table of its top
operators into <run dir>/profile/, and logs how busy its GPU was: a GPU idle for a third of the step is waiting
on the host (hooks, data, syncs), not on its kernels. LAUNCHER_PROFILE_WITH_STACK=1 adds Python frames to the
trace (slower steps, but bench/trace_gaps.py can then name the Python function a gap falls in)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("launcher")
TOP_ROWS = 25


def parse_steps(text: str) -> tuple[int, int] | None:
    """'8-10' -> (8, 10), '9' -> (9, 9), '' -> None. The config check has already refused anything else."""
    if not text:
        return None
    first, _, last = text.partition("-")
    return int(first), int(last or first)


class StepProfiler:
    """Started when the step before `first` ends and stopped when `last` ends: the window holds whole steps,
    each bounded by the loop's own host sync, and nothing of start-up or of the checkpoint save after it."""

    def __init__(self, steps: tuple[int, int] | None, start_step: int, out_dir: Path, rank: int, cuda: bool) -> None:
        self.steps, self.out_dir, self.rank, self.cuda = steps, out_dir, rank, cuda
        self.prof: Any = None
        if steps and start_step >= steps[0]:
            log.info(f"train.profile_steps={steps[0]}-{steps[1]}: this run starts after step {start_step}, "
                     "nothing is profiled")
            self.steps = None
        elif steps and start_step == steps[0] - 1:
            self._start()

    def after_step(self, step: int) -> None:
        if not self.steps:
            return
        if step == self.steps[0] - 1:
            self._start()
        elif step == self.steps[1] and self.prof is not None:
            self._finish(step)

    def close(self, last_step: int) -> None:
        """At the end of the run. It may have ended inside the window (its last step, a stop on request): what was
        recorded is kept. Or before it: say so, rather than leave the user looking for a trace."""
        if not self.steps:
            return
        if self.prof is not None and last_step >= self.steps[0]:
            self._finish(last_step)
            return
        if self.prof is not None:
            self.prof.stop()
            self.prof = None
        log.info(f"train.profile_steps={self.steps[0]}-{self.steps[1]}: the run ended at global step {last_step}, "
                 "before the first of them; nothing was profiled")
        self.steps = None

    def _start(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(activities=activities,
                                           with_stack=os.environ.get("LAUNCHER_PROFILE_WITH_STACK") == "1")
        self.prof.start()

    def _finish(self, last: int) -> None:
        self.prof.stop()
        first = self.steps[0] if self.steps else 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / f"rank{self.rank}-steps{first}-{last}.json.gz"
        self.prof.export_chrome_trace(str(trace))
        sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        table = self.prof.key_averages().table(sort_by=sort, row_limit=TOP_ROWS)
        (self.out_dir / f"rank{self.rank}-steps{first}-{last}.txt").write_text(table)
        log.info(f"profile of steps {first}-{last}: {busy_summary(self.prof.events())}; trace and top operators in "
                 f"{self.out_dir}")
        self.prof, self.steps = None, None


def busy_summary(events: Any) -> str:
    """Wall time of the window against the union of its GPU kernels' intervals (every stream)."""
    spans = [(e.time_range.start, e.time_range.end) for e in events]
    if not spans:
        return "no events"
    wall_us = max(end for _, end in spans) - min(start for start, _ in spans)
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    if not kernels:
        return f"{wall_us / 1e6:.3f} s of host time (no GPU)"
    busy, (start, end) = 0.0, kernels[0]
    for s, e in kernels[1:]:
        if s > end:
            busy, start, end = busy + end - start, s, e
        else:
            end = max(end, e)
    busy += end - start
    return f"{wall_us / 1e6:.3f} s of wall time, GPU busy {busy / 1e6:.3f} s ({busy / wall_us:.0%})"
