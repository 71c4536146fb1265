"""Tool-call conversations for chat templates with and without tool support.

A conversation with tools, function calls or observations is rendered one of two ways:

- Through the tokenizer's chat template, when it supports tools: its source mentions both `tools` and `tool_calls`
  (transformers' names, used by e.g. Qwen2.5, Llama 3.1 and Mistral templates). apply_chat_template gets the
  structured messages and `tools=`; conversations with different tools are rendered in separate calls.
- Otherwise as plain system/user/assistant messages that any template renders (JSON written with
  json.dumps(..., ensure_ascii=False), default separators):

    part            plain rendering
    --------------  ---------------------------------------------------------------------------------------------
    tools           appended to the system message (one is created first when there is none), after a blank
                    line when it holds text: "Tools you can call (JSON):\n" + the list of function specs as JSON,
                    each bare: {"name": ..., "description": ..., "parameters": {...}} (no "type" wrapper)
    function call   an assistant message whose content is each call as JSON {"name": ..., "arguments": {...}},
                    one call per line (after the turn's text, if it has any)
    observation     a user message: "Tool result:\n" + the tool's output
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from launcher.data.formats import Conversation
from launcher.data.rows import Messages

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOOLS_HEADER = "Tools you can call (JSON):\n"
TOOL_RESULT = "Tool result:\n"


def template_supports_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template renders tools and tool calls itself: its source names both `tools` and `tool_calls`,
    the variables transformers passes them in (a template without them would drop the calls silently)."""
    template = tokenizer.chat_template
    source = " ".join(template.values()) if isinstance(template, dict) else template or ""
    return "tools" in source and "tool_calls" in source


def has_tool_parts(conversation: Conversation) -> bool:
    return bool(conversation.tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in conversation.messages)


def plain_messages(conversation: Conversation) -> Messages:
    """A tool conversation as system/user/assistant messages, for templates without tool support (module docstring)."""
    messages = [_plain_message(message) for message in conversation.messages]
    if conversation.tools:
        listing = TOOLS_HEADER + json.dumps([tool["function"] for tool in conversation.tools], ensure_ascii=False)
        if messages and messages[0]["role"] == "system":
            system = messages[0]["content"]
            messages[0] = {"role": "system", "content": f"{system}\n\n{listing}" if system else listing}
        else:
            messages.insert(0, {"role": "system", "content": listing})
    return messages


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    if message["role"] == "tool":
        return {"role": "user", "content": TOOL_RESULT + message["content"]}
    if message.get("tool_calls"):
        calls = [json.dumps({"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
                            ensure_ascii=False) for call in message["tool_calls"]]
        text = [message["content"]] if message.get("content") else []
        return {"role": "assistant", "content": "\n".join(text + calls)}
    return message
