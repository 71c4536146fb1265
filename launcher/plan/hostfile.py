"""DeepSpeed-format hostfiles (`host slots=N` per line): parsed from lines and validated, with errors that name the line.

DeepSpeed's own parser (`deepspeed.launcher.runner._parse_hostfile`) raises a bare ValueError deep in the runner and
accepts lines with trailing garbage; this one is stricter and fails at the entry, before anything is launched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from launcher.errors import LauncherError

FIELD = "hostfile"
HOST_RE = re.compile(r"^[A-Za-z0-9_.:@\[\]-]+$")  # a name, an IPv4/IPv6 address or user@host; no commas (pdsh -w)
SLOTS_RE = re.compile(r"^slots=(\S*)$")


@dataclass(frozen=True)
class HostEntry:
    host: str
    slots: int
    line: int


def parse_hostfile(lines: Iterable[str], source: str = FIELD) -> tuple[HostEntry, ...]:
    """Hosts in file order (rank order). Comments (#) and blank lines are skipped; everything else must be
    exactly `host slots=N` with N >= 1 and each host listed once."""
    entries: list[HostEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        entry = _parse_line(text, number, source)
        if entry.host in seen:
            raise LauncherError(FIELD, source, "list each host once, with all its slots on one line",
                                problem=f"host {entry.host} is listed twice (lines {seen[entry.host]} and {number})")
        seen[entry.host] = number
        entries.append(entry)
    if not entries:
        raise LauncherError(FIELD, source, "write one `host slots=N` line per host, e.g. `worker-0 slots=8`",
                            problem="it lists no hosts")
    return tuple(entries)


def _parse_line(text: str, number: int, source: str) -> HostEntry:
    parts = text.split()
    example = f"`{parts[0]} slots=1`"
    if len(parts) == 1:
        raise LauncherError(FIELD, source, f"write {example} (slots = GPUs, or CPU processes, to use on that host)",
                            problem=f"line {number} `{text}` has no slots=N")
    slots = SLOTS_RE.match(parts[1])
    if len(parts) > 2 or not slots:
        raise LauncherError(FIELD, source, f"write each line as `host slots=N`, e.g. {example}",
                            problem=f"line {number} `{text}` is not in DeepSpeed's hostfile format")
    if not HOST_RE.match(parts[0]):
        raise LauncherError(FIELD, source, "use a host name or an address that ssh accepts (no commas or quotes)",
                            problem=f"line {number} has an invalid host name `{parts[0]}`")
    if not slots.group(1).isdigit() or int(slots.group(1)) < 1:
        raise LauncherError(FIELD, source, f"slots must be a whole number >= 1, e.g. {example}",
                            problem=f"line {number} `{text}` has slots={slots.group(1)!s}")
    return HostEntry(parts[0], int(slots.group(1)), number)


def uniform_slots(entries: tuple[HostEntry, ...], source: str = FIELD) -> int:
    """The plan runs the same number of ranks on every host (the global batch arithmetic assumes it)."""
    counts = {e.slots for e in entries}
    if len(counts) > 1:
        listing = ", ".join(f"{e.host} slots={e.slots}" for e in entries)
        low = min(counts)
        raise LauncherError(FIELD, source, f"give every host the same slots (e.g. slots={low} on each)",
                            problem=f"hosts have different slots ({listing})")
    return counts.pop()


def read_hostfile(path: str, cwd: str = ".") -> tuple[HostEntry, ...]:
    """Read and parse; a missing file is a user error naming the path that was tried."""
    full = Path(cwd, path).expanduser()
    if not full.is_file():
        raise LauncherError(FIELD, path, "give a file with one `host slots=N` line per host (see hostfiles/)",
                            problem=f"{full.resolve()} does not exist")
    return parse_hostfile(full.read_text().splitlines(), source=path)
