"""The profiler's step window (launcher/train/profiling.py), driven by real torch.profiler sessions on the CPU."""
from __future__ import annotations

import logging

import pytest
import torch

from launcher.train.profiling import StepProfiler, busy_summary, parse_steps


def work() -> None:
    torch.randn(64, 64) @ torch.randn(64, 64)


@pytest.mark.parametrize("text, steps", [("", None), ("9", (9, 9)), ("8-10", (8, 10))])
def test_profile_steps_parse(text, steps):
    assert parse_steps(text) == steps


def test_busy_summary_reads_a_real_profile():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert "s of host time (no GPU)" in busy_summary(prof.events())


def test_window_holds_exactly_the_named_steps(tmp_path):
    profiler = StepProfiler((3, 4), 0, tmp_path, 0, cuda=False)
    for step in range(1, 7):
        work()
        profiler.after_step(step)
        assert (profiler.prof is not None) == (step in (2, 3))
    profiler.close(6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0-steps3-4.json.gz", "rank0-steps3-4.txt"]


def test_a_run_ending_inside_the_window_keeps_what_was_recorded(tmp_path):
    profiler = StepProfiler((3, 10), 2, tmp_path, 1, cuda=False)  # resumed at step 2: the window opens at once
    for step in (3, 4):
        work()
        profiler.after_step(step)
    profiler.close(4)
    assert (tmp_path / "rank1-steps3-4.txt").exists()


@pytest.mark.parametrize("start, last, says", [(5, 8, "starts after step 5"), (0, 2, "ended at global step 2")])
def test_a_window_the_run_never_reaches_is_said_not_silently_skipped(start, last, says, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="launcher"):
        profiler = StepProfiler((4, 5), start, tmp_path, 0, cuda=False)
        for step in range(start + 1, last + 1):
            profiler.after_step(step)
        profiler.close(last)
    assert says in caplog.text and "nothing" in caplog.text and not any(tmp_path.iterdir())
