"""One data row -> chat messages and tools, read with LLaMA-Factory's column and tag names and defaults
(its data/README.md), so a data set described for LLaMA-Factory is read here as it is.

A row that cannot be used raises RowDrop with a short reason that stays the same from row to row (formats.py counts
rows by it); nothing here knows about files. The message shapes are transformers' chat-template ones:
a function call is {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {...}}]},
a tool's output is {"role": "tool", "content": ...}, tools are [{"type": "function", "function": spec}, ...].
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from launcher.errors import LauncherError

Messages = list[dict[str, Any]]
Tools = list[dict[str, Any]]

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "tools": "tools"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
# Columns of kinds this launcher does not train; another module refuses them before rows are read.
NOT_TRAINED = ("images", "videos", "audios", "chosen", "rejected", "kto_tag")
# Without tags, a turn is {"from", "value"} or {"role", "content"} and any of these speakers is understood.
AUTO_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
              "observation": "observation", "tool": "observation", "function_call": "function_call"}
TAG_KINDS = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "observation",
             "function_tag": "function_call", "system_tag": "system"}


class RowDrop(Exception):
    """A row that cannot be used: `reason` is short and stable (rows are counted by it), `detail` says where."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RowMapping:
    """Where a row keeps each part: column names, and for sharegpt the turn keys and speakers (tags None: auto)."""

    formatting: str
    columns: dict[str, str]
    tags: dict[str, str] | None
    messages_given: bool = False


def row_mapping(formatting: str, columns: dict[str, str] | None, tags: dict[str, str] | None) -> RowMapping:
    """LLaMA-Factory's defaults with the user's names on top; a key it does not know is refused by name."""
    known = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    given = {k: v for k, v in (columns or {}).items() if k not in NOT_TRAINED}
    _check_keys("data.columns", given, known, f"with data.format={formatting}")
    if tags and formatting == "alpaca":
        raise LauncherError("data.tags", tags, "leave data.tags out for alpaca data",
                            problem="tags describe sharegpt turns; alpaca rows have none")
    _check_keys("data.tags", tags or {}, TAGS, "")
    return RowMapping(formatting, {**known, **given}, {**TAGS, **tags} if tags else None, "messages" in given)


def _check_keys(field: str, given: dict[str, Any], known: dict[str, str], where: str) -> None:
    for key, value in given.items():
        if key not in known:
            raise LauncherError(field, key, f"use {', '.join(known)}{' ' + where if where else ''}",
                                problem=f"'{key}' is not a key LLaMA-Factory's {field.split('.')[1]} know")
        if not isinstance(value, str) or not value:
            raise LauncherError(f"{field}.{key}", value, "give the name as a non-empty string")


def read_row(row: dict[str, Any], mapping: RowMapping) -> tuple[Messages, Tools | None]:
    """One row's messages (roles system|user|assistant|tool) and tools; raises RowDrop when it cannot be used."""
    if mapping.formatting == "alpaca":
        messages = alpaca_messages(row, mapping.columns)
    else:
        messages = sharegpt_messages(row, mapping)
    return messages, parse_tools(row.get(mapping.columns["tools"]))


def _text(row: dict[str, Any], column: str, required: bool) -> str:
    value = row.get(column)
    if value is None:
        if required:
            raise RowDrop(f"missing '{column}'")
        return ""
    if not isinstance(value, str):
        raise RowDrop(f"'{column}' is not a string", f"got {type(value).__name__}")
    return value


def _system(text: str) -> Messages:
    return [{"role": "system", "content": text}] if text else []


def alpaca_messages(row: dict[str, Any], columns: dict[str, str]) -> Messages:
    """System, history pairs (answers trained, as in LLaMA-Factory), then prompt and query joined by a blank line."""
    prompt = _text(row, columns["prompt"], True)
    query = _text(row, columns["query"], False)
    response = _text(row, columns["response"], True)
    system = _text(row, columns["system"], False)
    user = "\n\n".join(part for part in (prompt, query) if part)
    if not user.strip():
        raise RowDrop("empty question", f"'{columns['prompt']}' is empty")
    if not response.strip():
        raise RowDrop("empty answer", f"'{columns['response']}' is empty")
    return _system(system) + _history(row.get(columns["history"]), columns["history"]) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": response}]


def _history(history: Any, column: str) -> Messages:
    if not history:
        return []
    if not isinstance(history, list):
        raise RowDrop("bad history", f"'{column}' must be a list of [question, answer] pairs, "
                                     f"got {type(history).__name__}")
    messages: Messages = []
    for number, pair in enumerate(history, start=1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) and p.strip() for p in pair)):
            raise RowDrop("bad history", f"'{column}' item {number} must be a [question, answer] pair of "
                                         "non-empty strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def _turns(row: dict[str, Any], mapping: RowMapping) -> list[Any]:
    column = mapping.columns["messages"]
    if column not in row and not mapping.messages_given and "messages" in row:
        column = "messages"  # the OpenAI shape, read without a mapping as before
    turns = row.get(column)
    if turns is None:
        raise RowDrop(f"missing '{column}'")
    if not isinstance(turns, list):
        raise RowDrop(f"'{column}' is not a list", f"got {type(turns).__name__}")
    return turns


def _speakers(tags: dict[str, str] | None) -> dict[str, str]:
    """Speaker as written -> kind (user, assistant, observation, function_call, system)."""
    return AUTO_ROLES if tags is None else {tags[tag]: kind for tag, kind in TAG_KINDS.items()}


def _turn(turn: Any, number: int, tags: dict[str, str] | None) -> tuple[int, str, Any, dict[str, Any]]:
    """(its 1-based number, kind, content, the turn) of one sharegpt turn; content is None for an OpenAI
    assistant turn that holds tool_calls."""
    if tags is not None:
        keys = (tags["role_tag"], tags["content_tag"])
    else:
        keys = ("from", "value") if isinstance(turn, dict) and "from" in turn else ("role", "content")
    openai_call = isinstance(turn, dict) and bool(turn.get("tool_calls"))  # an OpenAI-shaped call, as LLaMA-Factory
    if not isinstance(turn, dict) or keys[0] not in turn or (keys[1] not in turn and not openai_call):
        missing = f"'{keys[0]}' or '{keys[1]}'" if tags else "'from'/'value' (or 'role'/'content')"
        raise RowDrop(f"turn missing {missing}", f"turn {number}")
    speaker = turn[keys[0]]
    kind = _speakers(tags).get(speaker) if isinstance(speaker, str) else None
    if kind is None:
        raise RowDrop(f"unknown role {speaker!r}", f"turn {number}; use one of {', '.join(_speakers(tags))}")
    if openai_call and kind in ("assistant", "function_call"):
        return number, "function_call", None, turn
    content = turn.get(keys[1])
    if not isinstance(content, str):
        raise RowDrop("turn content is not a string", f"turn {number} '{keys[1]}' is {type(content).__name__}")
    return number, kind, content, turn


def sharegpt_messages(row: dict[str, Any], mapping: RowMapping) -> Messages:
    """LLaMA-Factory's rule: an optional system turn first (it overrides the system column), then user or
    observation turns at odd positions and assistant or function-call turns at even ones, an even number of them."""
    turns = [_turn(turn, n, mapping.tags) for n, turn in enumerate(_turns(row, mapping), start=1)]
    system = _text(row, mapping.columns["system"], False)
    if turns and turns[0][1] == "system":
        system, turns = turns[0][2], turns[1:]
    if not turns:
        raise RowDrop("no turns", "the conversation has no turns besides the system prompt")
    messages = _system(system)
    for position, (number, kind, content, turn) in enumerate(turns):
        expected = ("user", "observation") if position % 2 == 0 else ("assistant", "function_call")
        if kind not in expected:
            raise RowDrop("turns out of order", f"turn {number} is {kind} but {' or '.join(expected)} was "
                                                "expected: after an optional system turn, user or observation "
                                                "turns alternate with assistant or function-call turns")
        messages.append(_message(kind, content, turn, number))
    if len(turns) % 2:
        raise RowDrop(f"ends with {'a user' if turns[-1][1] == 'user' else 'an observation'} turn",
                      "it must end with an assistant or function-call turn")
    return messages


def _message(kind: str, content: Any, turn: dict[str, Any], number: int) -> dict[str, Any]:
    if kind == "function_call":
        calls = turn["tool_calls"] if content is None else parse_json(content, "function call is not valid JSON")
        return {"role": "assistant", "content": "", "tool_calls": function_calls(calls)}
    if kind == "observation":
        return {"role": "tool", "content": content}
    if not content.strip():
        raise RowDrop("empty answer" if kind == "assistant" else "empty question", f"turn {number} is empty")
    return {"role": kind, "content": content}


def parse_json(text: str, reason: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RowDrop(reason, f"{err.msg} at character {err.pos}") from err


def function_calls(value: Any) -> list[dict[str, Any]]:
    """A function_call turn's calls ({"name", "arguments"}, one or a list, or OpenAI's wrapped form) as
    transformers' tool_calls; arguments given as a JSON string are parsed to the object they hold."""
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise RowDrop("function call is not {name, arguments}", "the list of calls is empty")
    result = []
    for call in calls:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = call["function"]
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]):
            raise RowDrop("function call is not {name, arguments}")
        arguments = call.get("arguments") or {}
        if isinstance(arguments, str):
            arguments = parse_json(arguments, "function arguments are not a JSON object")
        if not isinstance(arguments, dict):
            raise RowDrop("function arguments are not a JSON object")
        result.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return result


def parse_tools(value: Any) -> Tools | None:
    """The tools column (a JSON string, or already a list) as [{"type": "function", "function": spec}, ...]:
    bare specs are wrapped, wrapped ones kept; empty means none."""
    if isinstance(value, str):
        value = parse_json(value, "tools is not valid JSON") if value.strip() else None
    if not value:
        return None
    specs = value if isinstance(value, list) else [value]
    tools = []
    for spec in specs:
        if isinstance(spec, dict) and spec.get("type") == "function" and isinstance(spec.get("function"), dict):
            tools.append(spec)
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            tools.append({"type": "function", "function": spec})
        else:
            raise RowDrop("tools is not a list of functions")
    return tools
