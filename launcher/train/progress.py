"""Rank 0's console during training: a live rich progress bar on a terminal, a plain line per log interval elsewhere
(Slurm logs, pipes), so the same run reads well in both. While the bar is live, console log records print above it."""
from __future__ import annotations

import io
import logging
import sys
from typing import Any

from launcher.train.metrics import Peak, StepMetrics

log = logging.getLogger("launcher")


class Progress:
    def __init__(self, max_steps: int, start_step: int, log_every: int, line: Any, tty: bool | None = None,
                 console: Any = None, peak: Peak | None = None) -> None:
        self.max_steps, self.log_every, self.line = max_steps, log_every, line
        self.mfu_basis = f" ({peak.basis})" if peak else ""  # the bar is short: the basis alone
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.bar: Any = None
        self.routed: list[tuple[logging.StreamHandler, Any]] = []
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
            from rich.progress import TimeElapsedColumn, TimeRemainingColumn

            self.bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), refresh_per_second=4, console=console,
            )
            self.task = self.bar.add_task("train", total=max_steps, completed=start_step, stats="")
            self.bar.start()
            self.routed = _route_above(self.bar.console)

    def update(self, m: StepMetrics) -> None:
        """The bar moves every step; the line goes to the console (no terminal) or to the file log (terminal)."""
        line = self.line(m)
        if self.bar is None:
            if m.step % self.log_every == 0 or m.step == self.max_steps:
                log.info(line)
            return
        mfu = f" MFU {m.mfu:.0%}{self.mfu_basis}" if m.mfu is not None else ""
        stats = f"loss {m.loss:.4f} {m.tokens_per_s:,.0f} tok/s{mfu} {m.memory_gb:.1f} GiB"
        self.bar.update(self.task, completed=m.step, stats=stats)
        _file_only(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            for handler, stream in self.routed:
                handler.setStream(stream)
            self.routed = []


def _route_above(console: Any) -> list[tuple[logging.StreamHandler, Any]]:
    """Point the console log handlers that write to the bar's terminal (worker.setup_logging's, on rank 0) at the
    bar's console, which prints each record above the live bar instead of onto it; returns what to restore."""
    return [(h, h.setStream(_AboveBar(console))) for h in log.handlers
            if isinstance(h, logging.StreamHandler) and h.stream is console.file]


class _AboveBar(io.TextIOBase):
    """A log handler's stream while the bar is live: rich prints each record above the bar. Soft wrap leaves long
    lines (paths) for the terminal to wrap instead of breaking them with newlines."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def write(self, text: str) -> int:
        from rich.text import Text

        self.console.print(Text.from_ansi(text.removesuffix("\n")), soft_wrap=True)
        return len(text)


def _file_only(text: str) -> None:
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.emit(logging.LogRecord("launcher", logging.INFO, __file__, 0, text, None, None))
