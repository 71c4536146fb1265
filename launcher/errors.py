"""The one error type users see, and the one place that formats it.

A user mistake must end as one paragraph naming the field, the bad value and what would work, with exit code 2;
everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
import textwrap

USER_ERROR_EXIT = 2


class LauncherError(Exception):
    """A bad input found where it was detected: `field` is the config path a user would type (e.g. train.micro_batch_size)."""

    def __init__(self, field: str, value: object, hint: str, problem: str = "") -> None:
        self.field = field
        self.value = value
        self.hint = hint
        self.problem = problem
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        problem = f" {_sentence(self.problem)}" if self.problem else ""
        return f"error: {self.field}={self.value!r} cannot be used.{problem} {_sentence(self.hint)}"


def _sentence(text: str) -> str:
    return text.strip().rstrip(".") + "."


def report(err: LauncherError, debug: bool = False, how: str = "run.debug=true or LAUNCHER_DEBUG=1") -> int:
    """Print a LauncherError as one wrapped paragraph on stderr and return the exit code to use."""
    text = textwrap.fill(err.paragraph(), width=110, break_on_hyphens=False, break_long_words=False)
    print(text, file=sys.stderr)
    if not debug:
        print(f"(run with {how} for a traceback)", file=sys.stderr)
    return USER_ERROR_EXIT


def choice(field_name: str, value: str, allowed: tuple[str, ...]) -> None:
    """A config field's value must be one of `allowed`: the error lists them."""
    if value not in allowed:
        raise LauncherError(field_name, value, f"use one of: {', '.join(allowed)}")


def positive(field_name: str, value: int | float, allow_zero: bool = False) -> None:
    """A config field's number must be positive (or zero, when that means something)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise LauncherError(field_name, value, "it must be a positive number" if not allow_zero else "it must be >= 0")
