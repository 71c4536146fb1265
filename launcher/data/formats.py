"""Instruction data: rows on disk -> Conversations (chat messages and tools), and the tokenized Example they become.

Both formats, under LLaMA-Factory's column and tag names (`rows.py` reads one row), become one Conversation per row,
so everything after loading (the chat template, label masking, truncation: `tokenization.py`) is shared. A row that
cannot be used is dropped and counted by reason (Drops); a file is refused only when no row is usable. Batching,
packing and sampling live in `batching.py`.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, NamedTuple

from launcher.errors import LauncherError
from launcher.data.rows import TAGS, Messages, RowDrop, RowMapping, Tools, read_row, row_mapping

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
FORMATS = ("alpaca", "sharegpt")
ALPACA_SHAPE = (
    'each alpaca row needs {{"{prompt}": "...", "{query}": "..." (may be empty or absent), "{response}": "..."}}, '
    'optionally "{system}": "...", "{history}": [["earlier question", "earlier answer"], ...] and "{tools}": '
    '"[function specs as JSON]"'
)
SHAREGPT_SHAPE = (
    'each sharegpt row needs {{"{messages}": [{{"{role_tag}": "{user_tag}", "{content_tag}": "..."}}, '
    '{{"{role_tag}": "{assistant_tag}", "{content_tag}": "..."}}]}}: an optional {system_tag} turn first, then '
    "{user_tag} (or {observation_tag}) turns alternating with {assistant_tag} (or {function_tag}) turns, ending with "
    '{assistant_tag} or {function_tag}; optionally "{system}": "..." and "{tools}": "[function specs as JSON]"'
)
SHAREGPT_AUTO = ' ("messages" with "role"/"content" and roles user/assistant/tool also work)'
LOG_ROWS = 3  # row numbers kept per drop reason

# A byte order mark names the encoding; without one the file must be UTF-8. UTF-32-LE's mark starts with UTF-16-LE's.
ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"), (b"", "utf-8"),
)


class Conversation(NamedTuple):
    """One row as transformers' chat templates take it: messages (roles system|user|assistant|tool) and the
    function specs the assistant may call (None: no tools)."""

    messages: Messages
    tools: Tools | None = None


@dataclass
class Drops:
    """Rows left out of a data set, counted by a short stable reason with the first row numbers (1-based) of each,
    so one line tells a user what was skipped and where to look."""

    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[int]] = field(default_factory=dict)

    def add(self, reason: str, row: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        numbers = self.rows.setdefault(reason, [])
        if len(numbers) < LOG_ROWS:
            numbers.append(row)

    @property
    def dropped(self) -> int:
        return sum(self.counts.values())

    @property
    def kept(self) -> int:
        return self.total - self.dropped

    def reasons(self) -> str:
        """E.g. "2 missing 'output' (rows 4, 9), 1 unknown role 'bot' (row 17)": most frequent first."""
        parts = []
        for reason, count in sorted(self.counts.items(), key=lambda item: -item[1]):
            rows = self.rows[reason]
            more = ", ..." if count > len(rows) else ""
            parts.append(f"{count} {reason} (row{'s' if count > 1 else ''} {', '.join(map(str, rows))}{more})")
        return ", ".join(parts)

    def message(self, where: str) -> str:
        if not self.dropped:
            return ""
        return f"data: dropped {self.dropped} of {self.total} rows of {where}: {self.reasons()}"


@dataclass(frozen=True)
class Example:
    """One tokenized conversation; labels are IGNORE_INDEX everywhere except the assistant's answers."""

    input_ids: list[int]
    labels: list[int]

    @cached_property
    def num_targets(self) -> int:
        """Tokens the causal LM loss is taken on: labels are shifted by one, so labels[0] never counts (cached: every
        step sums it over the global batch)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def _bad_file(path: str, problem: str) -> LauncherError:
    return LauncherError(
        "data.path", path, "give a .json file holding a list of rows or a .jsonl file with one row per line, "
        "or leave data.path empty for the shipped data set", problem=problem,
    )


def decode_text(raw: bytes, path: str) -> str:
    """A data file's text: UTF-8 (with or without a byte order mark), or UTF-16/UTF-32 with one. Anything else is
    refused naming the first byte that is not text; the entry's check and every rank read files through this."""
    bom, encoding = next((bom, enc) for bom, enc in ENCODINGS if raw.startswith(bom))
    try:
        text = raw[len(bom):].decode(encoding)
    except UnicodeDecodeError as err:
        raise _not_text(path, raw, len(bom), len(bom) + err.start, encoding, "cannot be decoded") from err
    if "\0" in text:  # valid UTF-8 but not text: a binary file, or UTF-16 without its byte order mark
        offset = len(bom) + len(text[: text.index("\0")].encode(encoding))
        raise _not_text(path, raw, len(bom), offset, encoding, "is a NUL, which text never holds")
    return text


def _not_text(path: str, raw: bytes, start: int, offset: int, encoding: str, why: str) -> LauncherError:
    line = raw[start:offset].decode(encoding, errors="replace").count("\n") + 1
    stem, ext = os.path.splitext(path)
    return LauncherError(
        "data.path", path, f"convert it to UTF-8, e.g. iconv -f {_guess_encoding(raw)} -t utf-8 {path} > "
        f"{stem}.utf8{ext}, and give that file (UTF-16 and UTF-32 are read too when the file starts with a byte "
        "order mark)", problem=f"it is not {encoding.upper()} text: byte {offset} (0x{raw[offset]:02x}, on line "
        f"{line}) {why}",
    )


def _guess_encoding(raw: bytes) -> str:
    """What iconv should read the file as: UTF-16 when every other byte is NUL (ASCII text with no byte order mark)."""
    head = raw[:4096]
    if head[1::2].count(0) > len(head) // 4:
        return "utf-16le"
    if head[0::2].count(0) > len(head) // 4:
        return "utf-16be"
    return "<its encoding, e.g. latin1 or cp1252>"


def load_rows(path: str) -> list[Any]:
    """Read a JSON list or JSON Lines file (told apart by the first character, not the file name). A row that is
    not a JSON object is kept: read_conversations drops it and counts it with the other unusable rows."""
    if not os.path.isfile(path):
        raise _bad_file(path, "the file does not exist")
    with open(path, "rb") as f:
        text = decode_text(f.read(), path)
    if not text.strip():
        raise _bad_file(path, "the file is empty")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise _bad_file(path, f"invalid JSON at line {err.lineno}: {err.msg}") from err
    else:
        rows = []
        for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise _bad_file(path, f"invalid JSON at line {lineno}: {err.msg}") from err
    if not rows:
        raise _bad_file(path, "the file holds no rows")
    return rows


def expected_shape(mapping: RowMapping) -> str:
    """What a row should look like under this mapping, in the names the user's data uses."""
    if mapping.formatting == "alpaca":
        return ALPACA_SHAPE.format(**mapping.columns)
    shape = SHAREGPT_SHAPE.format(**mapping.columns, **(mapping.tags or TAGS))
    return shape + (SHAREGPT_AUTO if mapping.tags is None else "")


def _mapping(formatting: str, columns: dict[str, str] | None, tags: dict[str, str] | None) -> RowMapping:
    if formatting not in FORMATS:
        raise LauncherError("data.format", formatting, f"use one of: {', '.join(FORMATS)}")
    return row_mapping(formatting, columns, tags)


def read_conversations(rows: Iterable[Any], formatting: str, columns: dict[str, str] | None,
                       tags: dict[str, str] | None, where: str) -> tuple[list[Conversation], Drops]:
    """Every usable row as a Conversation, and the rows dropped by reason; refused (naming `where`, the reasons
    and the expected shape) only when no row is usable, since then the columns or format are surely wrong."""
    mapping = _mapping(formatting, columns, tags)
    conversations: list[Conversation] = []
    drops = Drops()
    for index, row in enumerate(rows, start=1):
        drops.total = index
        try:
            if not isinstance(row, dict):
                raise RowDrop("not a JSON object")
            conversations.append(Conversation(*read_row(row, mapping)))
        except RowDrop as drop:
            drops.add(drop.reason, index)
    if not conversations:
        count = f"none of its {drops.total} rows is" if drops.total > 1 else "its one row is not"
        problem = f"{count} usable: {drops.reasons()}" if drops.total else "it holds no rows"
        raise LauncherError("data", where, f"with data.format={formatting}, {expected_shape(mapping)}",
                            problem=problem)
    return conversations, drops


def load_conversations(path: str, fmt: str, columns: dict[str, str] | None = None,
                       tags: dict[str, str] | None = None) -> list[Conversation]:
    """All usable rows of a data file; the dropped ones are logged as one line with their reasons."""
    conversations, drops = read_conversations(load_rows(path), fmt, columns, tags, path)
    if drops.dropped:
        log.warning(drops.message(path))
    return conversations


def to_messages(row: Any, fmt: str, index: int, path: str = "") -> Messages:
    """One row as chat messages (roles system|user|assistant|tool), or a LauncherError naming the file, the
    1-based row number `index`, the problem and the expected shape: the single-row check."""
    mapping = _mapping(fmt, None, None)
    try:
        if not isinstance(row, dict):
            raise RowDrop("not a JSON object", f"got {type(row).__name__}")
        return read_row(row, mapping)[0]
    except RowDrop as drop:
        problem = f"row {index}: {drop.reason}" + (f" ({drop.detail})" if drop.detail else "")
        raise LauncherError("data.path", path, f"with data.format={fmt}, {expected_shape(mapping)}",
                            problem=problem) from drop
