"""Conversations -> token ids with labels that train only the answers: the tokenizer (shipped, local or hub) with a
default chat template and pad token, and the masking of each assistant turn through the template itself.

What is trained (labels hold the token ids there, IGNORE_INDEX everywhere else):

    part of a conversation                trained
    ------------------------------------  ---------------------------------------------
    system prompt                         no
    tools (function specs)                no
    user turn                             no
    assistant answer                      yes, with the template's end-of-turn marker
    function call (assistant tool_calls)  yes, with the template's end-of-turn marker
    observation (tool output)             no

A conversation with tools, function calls or observations is rendered as tools.py says.
Either way only assistant messages (answers, function calls) are labelled; tool outputs never are.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from jinja2.exceptions import TemplateError

from launcher.assets import DEFAULT_TOKENIZER_DIR
from launcher.errors import LauncherError
from launcher.data.formats import IGNORE_INDEX, Conversation, Example
from launcher.data.rows import Messages, Tools
from launcher.data.tools import has_tool_parts, plain_messages, template_supports_tools

if TYPE_CHECKING:  # transformers costs seconds to import: load_tokenizer imports it when called
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TOKENIZE_BATCH = 1024  # conversations per tokenizer call: all cores busy, the rendered text of one batch in memory
TOO_LONG_WARNING = "sequence-length-is-longer-than-the-specified-maximum"  # transformers' key for it
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

Conversations = Sequence["Messages | Conversation"]
Rendered = tuple[Messages, "Tools | None"]  # what apply_chat_template gets: messages, and tools= (None: none)

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


def _prepare(tokenizer: PreTrainedTokenizerBase, conversations: Conversations) -> list[Rendered]:
    """What each conversation is rendered from: as it is, with its tools when the template takes them, or the plain
    rendering when it does not."""
    structured = template_supports_tools(tokenizer)
    prepared: list[Rendered] = []
    for item in conversations:
        conversation = item if isinstance(item, Conversation) else Conversation(list(item))
        if not has_tool_parts(conversation):
            prepared.append((conversation.messages, None))
        elif structured:
            prepared.append((conversation.messages, conversation.tools or None))
        else:
            prepared.append((plain_messages(conversation), None))
    return prepared


def _render(tokenizer: PreTrainedTokenizerBase, items: list[Rendered], add_generation_prompt: bool
            ) -> list[list[int]]:
    """Token ids of each (messages, tools), in order: apply_chat_template takes one `tools` for a whole batch, so
    conversations are grouped by their tools and each group is one call."""
    groups: dict[str, list[int]] = {}
    for i, (_, tools) in enumerate(items):
        groups.setdefault(json.dumps(tools, sort_keys=True), []).append(i)
    ids: list[list[int]] = [[] for _ in items]
    for indices in groups.values():
        batch = [items[i][0] for i in indices]
        for i, rendered in zip(indices, _apply(tokenizer, batch, items[indices[0]][1], add_generation_prompt)):
            ids[i] = rendered
    return ids


def _apply(tokenizer: PreTrainedTokenizerBase, conversations: list[Messages], tools: Tools | None,
           add_generation_prompt: bool) -> list[list[int]]:
    """Token ids of the chat template for a batch of conversations; control tokens typed inside the data are
    encoded as plain text. One call for the batch: the fast tokenizer encodes a batch on every core."""
    try:
        return tokenizer.apply_chat_template(
            conversations, tools=tools, tokenize=True, add_generation_prompt=add_generation_prompt,
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


def tokenize_examples(tokenizer: PreTrainedTokenizerBase, conversations: Conversations, seq_len: int
                      ) -> list[Example]:
    """Render with the chat template and label each assistant turn (its closing marker included), cut to seq_len;
    a plain list of messages is a Conversation without tools.

    Each answer's span is found by rendering the conversation up to it (with the generation prompt) and up to its
    end: the difference is exactly what the model must produce, whatever the template's markers look like.
    """
    return _tokenize(tokenizer, conversations, seq_len)[0]


def _tokenize(tokenizer: PreTrainedTokenizerBase, conversations: Conversations, seq_len: int
              ) -> tuple[list[Example], int]:
    """The examples cut to seq_len, and how many were longer. The tokenizer's own warning about texts longer than
    its model_max_length is turned off: the launcher cuts every example to seq_len and counts what it cut."""
    tokenizer.deprecation_warnings[TOO_LONG_WARNING] = True  # what transformers sets once it has warned
    examples: list[Example] = []
    too_long = 0
    for i in range(0, len(conversations), TOKENIZE_BATCH):
        batch, longer = _tokenize_batch(tokenizer, conversations[i:i + TOKENIZE_BATCH], seq_len)
        examples += batch
        too_long += longer
    return examples, too_long


def _tokenize_batch(tokenizer: PreTrainedTokenizerBase, conversations: Conversations, seq_len: int
                    ) -> tuple[list[Example], int]:
    """Only assistant messages (answers and function calls) are labelled: tool and user turns never are."""
    items = _prepare(tokenizer, conversations)
    fulls = _render(tokenizer, items, add_generation_prompt=False)
    turns = [(c, k) for c, (messages, _) in enumerate(items) for k, message in enumerate(messages)
             if message["role"] == "assistant" and k > 0]
    starts = iter(_render(tokenizer, [(items[c][0][:k], items[c][1]) for c, k in turns], add_generation_prompt=True))
    inner = [(c, k) for c, k in turns if k + 1 < len(items[c][0])]  # the last turn ends where the whole does
    inner_ends = dict(zip(inner, _render(tokenizer, [(items[c][0][:k + 1], items[c][1]) for c, k in inner], False)))
    labels = [[IGNORE_INDEX] * len(full) for full in fulls]
    for c, k in turns:
        full = fulls[c]
        start = _check_prefix(tokenizer, next(starts), full, k)
        end = _check_prefix(tokenizer, inner_ends.get((c, k), full), full, k + 1)
        labels[c][start:end] = full[start:end]
    examples = [Example(input_ids=full[:seq_len], labels=label[:seq_len]) for full, label in zip(fulls, labels)]
    return examples, sum(len(full) > seq_len for full in fulls)


@dataclass(frozen=True)
class LengthCut:
    """What train.seq_len did to the data: examples longer than it keep their first seq_len tokens (truncated), or
    are dropped when no answer token is left (every uncut example has one: data.py requires an answer turn)."""

    total: int
    too_long: int
    dropped: int
    seq_len: int
    where: str = ""  # which data set (and part), for a run that reads several

    @property
    def truncated(self) -> int:
        return self.too_long - self.dropped

    def message(self) -> str:
        return (f"{self.where + ': ' if self.where else ''}{self.too_long} of {self.total} examples were longer than train.seq_len={self.seq_len}: "
                f"{self.truncated} truncated, {self.dropped} dropped (no answer token left)")


def build_examples(tokenizer: PreTrainedTokenizerBase, conversations: Conversations, seq_len: int,
                   max_samples: int = 0, where: str = "") -> list[Example]:
    """Tokenize the first `max_samples` conversations (0: all), dropping those cut before any answer token; logs how
    many train.seq_len cut (naming `where`, the data set, when given)."""
    if max_samples:
        conversations = conversations[:max_samples]
    examples, too_long = _tokenize(tokenizer, conversations, seq_len)
    kept = [example for example in examples if example.num_targets > 0]
    if not kept:
        raise LauncherError(
            "train.seq_len", seq_len, "raise train.seq_len so at least the first answer fits",
            problem=f"all {len(examples)} examples{' of ' + where if where else ''} lose every answer token when cut "
                    f"to {seq_len} tokens",
        )
    log_cut(LengthCut(len(examples), too_long, len(examples) - len(kept), seq_len, where))
    return kept


def log_cut(cut: LengthCut) -> None:
    if cut.dropped:
        log.warning(cut.message())
    elif cut.too_long:
        log.info(cut.message())


def warn_dropped(dropped: int, total: int, seq_len: int) -> None:
    """For examples read back from the cache, which keeps how many were dropped but not how many were truncated."""
    if dropped:
        log.warning("dropped %d of %d examples: no answer token within train.seq_len=%d", dropped, total, seq_len)
