"""Instruction data: rows on disk -> chat messages -> token ids with labels that train only the answers.

Both formats become one list of {role, content} messages per row, so everything after loading (the chat template,
label masking, truncation) is shared. Batching, packing and sampling live in `batching.py`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from jinja2.exceptions import TemplateError

from launcher.assets import DEFAULT_TOKENIZER_DIR
from launcher.errors import LauncherError

if TYPE_CHECKING:  # transformers costs seconds to import; the launcher entry only needs the row checks
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
TOKENIZE_BATCH = 1024  # conversations per tokenizer call: all cores busy, the rendered text of one batch in memory
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
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

# For tokenizers that ship without a template (base models). Turns are separated before, not after, so an answer's
# trained tokens end with eos; the generation prompt stops before the space so it stays a token prefix of the answer.
GENERIC_CHAT_TEMPLATE = (
    "{{- bos_token if bos_token else '' -}}"
    "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{- '\\n\\n' -}}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- 'System: ' + message['content'] -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'User: ' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'Assistant: ' + message['content'] + (eos_token if eos_token else '') -}}"
    "{%- else -%}{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '\\n\\nAssistant:' -}}{%- endif -%}"
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


def load_rows(path: str) -> list[dict[str, Any]]:
    """Read a JSON list or JSON Lines file (told apart by the first character, not the file name)."""
    if not os.path.isfile(path):
        raise _bad_file(path, "the file does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise _bad_file(path, f"invalid JSON at line {err.lineno}: {err.msg}") from err
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
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


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer ready for chat fine-tuning: "" is the shipped one; a missing pad or chat template gets a default."""
    source = os.path.expanduser(name_or_path) if name_or_path else DEFAULT_TOKENIZER_DIR
    hint = ("give a folder with tokenizer files, a hub id such as Qwen/Qwen2.5-0.5B, "
            "or leave it empty for the shipped tokenizer")
    if _looks_local(source) and not os.path.isdir(source):
        raise LauncherError("model.tokenizer", name_or_path, hint, problem="the folder does not exist")
    if os.path.isdir(source) and not any(os.path.isfile(os.path.join(source, f)) for f in TOKENIZER_FILES):
        raise LauncherError("model.tokenizer", name_or_path, hint,
                            problem=f"the folder holds none of {', '.join(TOKENIZER_FILES)}")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise LauncherError("model.tokenizer", name_or_path, hint, problem=str(err).splitlines()[0]) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LauncherError("model.tokenizer", name_or_path, "use a tokenizer that defines a pad or eos token",
                                problem="the tokenizer has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        log.info("tokenizer %s has no chat template; using the generic System/User/Assistant one", source)
        tokenizer.chat_template = GENERIC_CHAT_TEMPLATE
    return tokenizer


def _render(tokenizer: PreTrainedTokenizerBase, conversations: list[Messages], add_generation_prompt: bool
            ) -> list[list[int]]:
    """Token ids of the chat template for a batch of conversations; control tokens typed inside the data are
    encoded as plain text. One call for the batch: the fast tokenizer encodes a batch on every core."""
    if not conversations:
        return []
    try:
        return tokenizer.apply_chat_template(
            conversations, tokenize=True, add_generation_prompt=add_generation_prompt,
            return_dict=False, sanitize_control_tokens=True,
        )
    except TemplateError as err:
        raise LauncherError(
            "model.tokenizer", tokenizer.name_or_path,
            "use data without the turns it rejects, or a tokenizer whose template accepts them",
            problem=f"its chat template rejected a conversation: {err}",
        ) from err


def _check_prefix(tokenizer: PreTrainedTokenizerBase, prefix: list[int], full: list[int], k: int) -> int:
    """Length of the rendering of a conversation's first k messages, checked to be a token prefix of the whole."""
    if full[: len(prefix)] != prefix:
        raise LauncherError(
            "model.tokenizer", tokenizer.name_or_path,
            "use a tokenizer whose chat template renders earlier turns unchanged when a turn is added "
            "(templates that rewrite or drop earlier assistant turns cannot be masked this way)",
            problem=f"its chat template does not render the first {k} messages as a token prefix of the whole "
                    "conversation, so the answer tokens cannot be located",
        )
    return len(prefix)


def tokenize_examples(tokenizer: PreTrainedTokenizerBase, conversations: list[Messages], seq_len: int
                      ) -> list[Example]:
    """Render with the chat template and label each assistant turn (its closing marker included), cut to seq_len.

    Each answer's span is found by rendering the conversation up to it (with the generation prompt) and up to its
    end: the difference is exactly what the model must produce, whatever the template's markers look like.
    """
    examples: list[Example] = []
    for i in range(0, len(conversations), TOKENIZE_BATCH):
        examples += _tokenize_batch(tokenizer, conversations[i:i + TOKENIZE_BATCH], seq_len)
    return examples


def _tokenize_batch(tokenizer: PreTrainedTokenizerBase, conversations: list[Messages], seq_len: int
                    ) -> list[Example]:
    fulls = _render(tokenizer, conversations, add_generation_prompt=False)
    turns = [(c, k) for c, messages in enumerate(conversations) for k, message in enumerate(messages)
             if message["role"] == "assistant" and k > 0]
    starts = iter(_render(tokenizer, [conversations[c][:k] for c, k in turns], add_generation_prompt=True))
    inner = [(c, k) for c, k in turns if k + 1 < len(conversations[c])]  # the last turn ends where the whole does
    inner_ends = dict(zip(inner, _render(tokenizer, [conversations[c][:k + 1] for c, k in inner], False)))
    labels = [[IGNORE_INDEX] * len(full) for full in fulls]
    for c, k in turns:
        full = fulls[c]
        start = _check_prefix(tokenizer, next(starts), full, k)
        end = _check_prefix(tokenizer, inner_ends.get((c, k), full), full, k + 1)
        labels[c][start:end] = full[start:end]
    return [Example(input_ids=full[:seq_len], labels=label[:seq_len]) for full, label in zip(fulls, labels)]


def tokenize_example(tokenizer: PreTrainedTokenizerBase, messages: Messages, seq_len: int) -> Example:
    """One conversation (see tokenize_examples)."""
    return tokenize_examples(tokenizer, [messages], seq_len)[0]


def build_examples(tokenizer: PreTrainedTokenizerBase, conversations: list[Messages], seq_len: int,
                   max_samples: int = 0) -> list[Example]:
    """Tokenize the first `max_samples` conversations (0: all), dropping those cut before any answer token."""
    if max_samples:
        conversations = conversations[:max_samples]
    examples = tokenize_examples(tokenizer, conversations, seq_len)
    kept = [example for example in examples if example.num_targets > 0]
    if not kept:
        raise LauncherError(
            "train.seq_len", seq_len, "raise train.seq_len so at least the first answer fits",
            problem=f"all {len(examples)} examples lose every answer token when cut to {seq_len} tokens",
        )
    warn_dropped(len(examples) - len(kept), len(examples), seq_len)
    return kept


def warn_dropped(dropped: int, total: int, seq_len: int) -> None:
    if dropped:
        log.warning("dropped %d of %d examples: no answer token within train.seq_len=%d", dropped, total, seq_len)
