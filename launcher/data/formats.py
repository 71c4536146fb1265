"""Instruction data: rows on disk -> chat messages, checked row by row, and the tokenized Example they become.

Both formats become one list of {role, content} messages per row, so everything after loading (the chat template,
label masking, truncation: `tokenization.py`) is shared. Batching, packing and sampling live in `batching.py`.
"""
from __future__ import annotations

import codecs
import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

from launcher.errors import LauncherError

IGNORE_INDEX = -100
FORMATS = ("alpaca", "sharegpt")
ALPACA_SHAPE = (
    'each alpaca row needs {"instruction": "...", "input": "..." (may be empty or absent), "output": "..."}, '
    'optionally "system": "..." and "history": [["earlier question", "earlier answer"], ...]'
)
SHAREGPT_SHAPE = (
    'each sharegpt row needs {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}: '
    "an optional system turn first, then human and gpt turns alternating, ending with gpt "
    '("messages" with "role"/"content" and roles user/assistant also work)'
)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

# A byte order mark names the encoding; without one the file must be UTF-8. UTF-32-LE's mark starts with UTF-16-LE's.
ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"), (b"", "utf-8"),
)

Messages = list[dict[str, str]]
Fail = Callable[[str], LauncherError]


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


def load_rows(path: str) -> list[dict[str, Any]]:
    """Read a JSON list or JSON Lines file (told apart by the first character, not the file name)."""
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
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise _bad_file(path, f"row {index}: expected a JSON object, got {type(row).__name__}")
    return rows


def _bad_row(path: str, fmt: str, index: int, problem: str) -> LauncherError:
    shape = ALPACA_SHAPE if fmt == "alpaca" else SHAREGPT_SHAPE
    return LauncherError("data.path", path, f"with data.format={fmt}, {shape}", problem=f"row {index}: {problem}")


def _text(row: dict[str, Any], key: str, required: bool, fail: Fail) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise fail(f"missing key '{key}'")
        return ""
    if not isinstance(value, str):
        raise fail(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _alpaca_messages(row: dict[str, Any], fail: Fail) -> Messages:
    instruction = _text(row, "instruction", True, fail)
    input_text = _text(row, "input", False, fail)
    output = _text(row, "output", True, fail)
    system = _text(row, "system", False, fail)
    user = "\n\n".join(part for part in (instruction, input_text) if part)
    if not user.strip():
        raise fail("'instruction' is empty")
    if not output.strip():
        raise fail("'output' is empty")
    messages = [{"role": "system", "content": system}] if system else []
    history = row.get("history") or []
    if not isinstance(history, list):
        raise fail(f"'history' must be a list of [question, answer] pairs, got {type(history).__name__}")
    for number, pair in enumerate(history, start=1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) and p.strip() for p in pair)):
            raise fail(f"'history' item {number} must be a [question, answer] pair of non-empty strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _sharegpt_turn(turn: Any, number: int, fail: Fail) -> dict[str, str]:
    keys = ("from", "value") if isinstance(turn, dict) and "from" in turn else ("role", "content")
    if not isinstance(turn, dict) or any(key not in turn for key in keys):
        raise fail(f"turn {number} needs 'from' and 'value' (or 'role' and 'content')")
    speaker, content = turn[keys[0]], turn[keys[1]]
    if speaker not in SHAREGPT_ROLES:
        raise fail(f"turn {number} has {keys[0]}={speaker!r}; use one of {', '.join(SHAREGPT_ROLES)}")
    if not isinstance(content, str):
        raise fail(f"turn {number} '{keys[1]}' must be a string, got {type(content).__name__}")
    return {"role": SHAREGPT_ROLES[speaker], "content": content}


def _sharegpt_messages(row: dict[str, Any], fail: Fail) -> Messages:
    key = "conversations" if "conversations" in row or "messages" not in row else "messages"
    turns = row.get(key)
    if turns is None:
        raise fail("missing key 'conversations'")
    if not isinstance(turns, list):
        raise fail(f"'{key}' must be a list of turns, got {type(turns).__name__}")
    messages = [_sharegpt_turn(turn, number, fail) for number, turn in enumerate(turns, start=1)]
    start = 1 if messages and messages[0]["role"] == "system" else 0
    if len(messages) == start:
        raise fail("the conversation has no human or gpt turns")
    for number, message in enumerate(messages[start:], start=start + 1):
        expected = "user" if (number - start) % 2 == 1 else "assistant"
        if message["role"] != expected:
            raise fail(f"turn {number} is from {message['role']} but {expected} was expected: "
                       "after an optional first system turn, user and assistant turns must alternate")
        if not message["content"].strip():
            raise fail(f"turn {number} ({message['role']}) is empty")
    if messages[-1]["role"] != "assistant":
        raise fail("the conversation ends with a user turn; it must end with an assistant (gpt) turn")
    return messages


def to_messages(row: dict[str, Any], fmt: str, index: int, path: str = "") -> Messages:
    """One row as chat messages (roles system|user|assistant); `index` is the 1-based row number used in errors."""
    if fmt not in FORMATS:
        raise LauncherError("data.format", fmt, f"use one of: {', '.join(FORMATS)}")

    def fail(problem: str) -> LauncherError:
        return _bad_row(path, fmt, index, problem)

    return _alpaca_messages(row, fail) if fmt == "alpaca" else _sharegpt_messages(row, fail)


def load_conversations(path: str, fmt: str) -> list[Messages]:
    """All rows of a data file as chat messages, checked row by row so the first bad row is named."""
    return [to_messages(row, fmt, index, path) for index, row in enumerate(load_rows(path), start=1)]
