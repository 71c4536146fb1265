"""LLaMA-Factory data read as it is: column and tag mappings, tool-call sharegpt rows, per-row drops, and the masks of
tool conversations under a template with tool support and under the plain rendering, checked token by token."""
from __future__ import annotations

import json

import pytest

from launcher.data.formats import IGNORE_INDEX, Conversation, Drops, load_conversations, read_conversations
from launcher.data.tokenization import load_tokenizer, tokenize_examples
from launcher.data.tools import template_supports_tools
from launcher.errors import LauncherError

# A ChatML template in the style of Qwen2.5's: tools listed in the system block, calls as <tool_call> JSON, tool
# outputs as a user turn of <tool_response> blocks.
TOOL_TEMPLATE = (
    "{%- if tools -%}{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0].role == 'system' -%}{{- messages[0].content + '\\n\\n' -}}{%- endif -%}"
    "{{- '# Tools\\n<tools>' -}}{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools><|im_end|>\\n' -}}"
    "{%- elif messages[0].role == 'system' -%}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'assistant' -%}{{- '<|im_start|>assistant' -}}"
    "{%- if message.content -%}{{- '\\n' + message.content -}}{%- endif -%}"
    "{%- for call in message.tool_calls -%}{%- if call.function is defined -%}{%- set call = call.function -%}"
    "{%- endif -%}{{- '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' + (call.arguments | tojson)"
    " + '}\\n</tool_call>' -}}{%- endfor -%}{{- '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
WEATHER_JSON = ('{"name": "get_weather", "description": "Weather of a city", '
                '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}')
TOOL_ROW = {  # as LLaMA-Factory's glaive_toolcall data holds it: tools and the call's arguments as JSON strings
    "conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": '{"city": "Paris"}'})},
        {"from": "observation", "value": '{"temperature": 21}'},
        {"from": "gpt", "value": "It is 21 degrees in Paris."},
    ],
    "tools": json.dumps([WEATHER]),
}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL_CONVERSATION = Conversation(
    [{"role": "user", "content": "What is the weather in Paris?"},
     {"role": "assistant", "content": "", "tool_calls": [CALL]},
     {"role": "tool", "content": '{"temperature": 21}'},
     {"role": "assistant", "content": "It is 21 degrees in Paris."}],
    [{"type": "function", "function": WEATHER}],
)


@pytest.fixture(scope="module")
def plain_tokenizer():
    return load_tokenizer("")


@pytest.fixture(scope="module")
def tool_tokenizer():
    tokenizer = load_tokenizer("")
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def _expected(tokenizer, *pieces: tuple[str, bool]) -> tuple[list[int], list[int]]:
    """input_ids and labels built from the rendered text by hand: each piece tokenized alone, trained or not."""
    input_ids: list[int] = []
    labels: list[int] = []
    for text, trained in pieces:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def _tokenized(tokenizer, conversation) -> tuple[list[int], list[int]]:
    example = tokenize_examples(tokenizer, [conversation], seq_len=1024)[0]
    return example.input_ids, example.labels


def _read(rows, formatting="sharegpt", columns=None, tags=None):
    return read_conversations(rows, formatting, columns, tags, "d.jsonl")


# --- reading -------------------------------------------------------------------------------------------------------

def test_tool_call_sharegpt_row_becomes_tool_calls_a_tool_turn_and_wrapped_tools():
    conversations, drops = _read([TOOL_ROW])
    assert conversations == [TOOL_CONVERSATION] and drops.dropped == 0


def test_openai_messages_with_tool_calls_and_tool_turns_read_like_sharegpt_tool_rows():
    row = {"messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ], "tools": [{"type": "function", "function": WEATHER}]}
    assert _read([row])[0] == [TOOL_CONVERSATION]


def test_registry_style_columns_and_tags_map_every_part_and_a_system_turn_overrides_the_system_column():
    columns = {"messages": "dialog", "system": "sys", "tools": "funcs"}
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "q", "assistant_tag": "a",
            "observation_tag": "result", "function_tag": "call", "system_tag": "instructions"}
    two_calls = [{"name": "get_weather", "arguments": {"city": "Paris"}},
                 {"name": "get_weather", "arguments": {"city": "Rome"}}]
    rows = [
        {"dialog": [{"speaker": "q", "text": "Paris and Rome?"}, {"speaker": "call", "text": json.dumps(two_calls)},
                    {"speaker": "result", "text": "21 and 25"}, {"speaker": "a", "text": "21 and 25 degrees."}],
         "sys": "Be terse.", "funcs": [{"type": "function", "function": WEATHER}]},
        {"dialog": [{"speaker": "instructions", "text": "Be kind."}, {"speaker": "q", "text": "Hi"},
                    {"speaker": "a", "text": "Hello"}], "sys": "Be terse."},
        {"dialog": [{"speaker": "human", "text": "Hi"}, {"speaker": "a", "text": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    conversations, drops = _read(rows, columns=columns, tags=tags)
    calls = [{"type": "function", "function": call} for call in two_calls]
    assert conversations == [
        Conversation([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Paris and Rome?"},
                      {"role": "assistant", "content": "", "tool_calls": calls},
                      {"role": "tool", "content": "21 and 25"}, {"role": "assistant", "content": "21 and 25 degrees."}],
                     [{"type": "function", "function": WEATHER}]),
        Conversation([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]),
    ]
    assert drops.message("d.jsonl") == (
        "data: dropped 2 of 4 rows of d.jsonl: 1 unknown role 'human' (row 3), 1 missing 'dialog' (row 4)")


def test_alpaca_custom_columns_read_history_system_and_tools():
    columns = {"prompt": "question", "query": "context", "response": "answer", "history": "earlier",
               "system": "persona", "tools": "functions"}
    row = {"question": "Sum them.", "context": "2 3", "answer": "5", "persona": "Be brief.",
           "earlier": [["Hi", "Hello"]], "functions": json.dumps([WEATHER])}
    assert _read([row], "alpaca", columns)[0] == [Conversation(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Sum them.\n\n2 3"},
         {"role": "assistant", "content": "5"}],
        [{"type": "function", "function": WEATHER}])]


def _with(conversations: list, value: str) -> dict:
    return {**TOOL_ROW, "conversations": [TOOL_ROW["conversations"][0], {"from": "function_call", "value": value},
                                          *conversations]}


def test_unusable_rows_are_counted_by_reason_with_their_first_three_row_numbers(caplog, tmp_path):
    ok = TOOL_ROW
    rows = [ok, {"conversations": []}, 7, ok, {**ok, "tools": "[{"}, _with([], "get_weather(Paris)"),
            {"conversations": TOOL_ROW["conversations"][:3]}, _with([], '{"name": "get_weather", "arguments": "x"}'),
            _with([], '{"arguments": {}}'), {**ok, "tools": '["get_weather"]'}, "row", [], None]
    conversations, drops = _read(rows)
    assert conversations == [TOOL_CONVERSATION] * 2
    assert (drops.total, drops.dropped) == (13, 11)
    assert drops.counts == {"no turns": 1, "not a JSON object": 4, "tools is not valid JSON": 1,
                            "function call is not valid JSON": 1, "ends with an observation turn": 1,
                            "function arguments are not a JSON object": 1, "function call is not {name, arguments}": 1,
                            "tools is not a list of functions": 1}
    assert drops.rows["not a JSON object"] == [3, 11, 12]
    assert drops.message("d.jsonl") == (
        "data: dropped 11 of 13 rows of d.jsonl: 4 not a JSON object (rows 3, 11, 12, ...), 1 no turns (row 2), "
        "1 tools is not valid JSON (row 5), 1 function call is not valid JSON (row 6), "
        "1 ends with an observation turn (row 7), 1 function arguments are not a JSON object (row 8), "
        "1 function call is not {name, arguments} (row 9), 1 tools is not a list of functions (row 10)")
    assert Drops(total=5).message("d.jsonl") == ""


def test_a_conversation_ending_on_a_function_call_is_kept():
    row = {"conversations": TOOL_ROW["conversations"][:2]}
    assert _read([row])[0] == [Conversation(TOOL_CONVERSATION.messages[:2])]


def test_a_file_with_no_usable_row_is_refused_with_the_reasons_and_the_shape(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [
        {"instruction": "Q"}, {"instruction": "Q", "output": ""}, {"instruction": "Q"}]))
    with pytest.raises(LauncherError) as err:
        load_conversations(str(path), "alpaca", columns={"response": "answer"})
    assert str(err.value) == (
        f"error: data='{path}' cannot be used. none of its 3 rows is usable: 3 missing 'answer' (rows 1, 2, 3). "
        'with data.format=alpaca, each alpaca row needs {"instruction": "...", "input": "..." (may be empty or '
        'absent), "answer": "..."}, optionally "system": "...", "history": [["earlier question", "earlier answer"], '
        '...] and "tools": "[function specs as JSON]".')


@pytest.mark.parametrize("formatting, columns, tags, expected", [
    ("sharegpt", {"prompt": "q"}, None,
     "error: data.columns='prompt' cannot be used. 'prompt' is not a key LLaMA-Factory's columns know. "
     "use messages, system, tools with data.format=sharegpt."),
    ("alpaca", {"messages": "m"}, None,
     "error: data.columns='messages' cannot be used. 'messages' is not a key LLaMA-Factory's columns know. "
     "use prompt, query, response, history, system, tools with data.format=alpaca."),
    ("sharegpt", None, {"role": "speaker"},
     "error: data.tags='role' cannot be used. 'role' is not a key LLaMA-Factory's tags know. use role_tag, "
     "content_tag, user_tag, assistant_tag, observation_tag, function_tag, system_tag."),
    ("alpaca", None, {"role_tag": "speaker"},
     "error: data.tags={'role_tag': 'speaker'} cannot be used. tags describe sharegpt turns; alpaca rows have none. "
     "leave data.tags out for alpaca data."),
])
def test_unknown_column_or_tag_keys_are_refused_by_name(formatting, columns, tags, expected):
    with pytest.raises(LauncherError) as err:
        _read([TOOL_ROW], formatting, columns, tags)
    assert str(err.value) == expected


def test_columns_of_kinds_not_trained_here_are_left_to_the_module_that_refuses_them():
    assert _read([TOOL_ROW], columns={"images": "images"})[0] == [TOOL_CONVERSATION]


# --- rendering and masks -------------------------------------------------------------------------------------------

def test_shipped_template_has_no_tool_support_and_the_test_template_has(plain_tokenizer, tool_tokenizer):
    assert not template_supports_tools(plain_tokenizer)
    assert template_supports_tools(tool_tokenizer)


def test_tool_conversation_under_a_tool_template_trains_the_call_and_the_answer_only(tool_tokenizer):
    assert _tokenized(tool_tokenizer, TOOL_CONVERSATION) == _expected(
        tool_tokenizer,
        (f'<|im_start|>system\n# Tools\n<tools>\n{{"type": "function", "function": {WEATHER_JSON}}}\n</tools>'
         "<|im_end|>\n<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n", False),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n', True),
        ('<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response><|im_end|>\n'
         "<|im_start|>assistant\n", False),
        ("It is 21 degrees in Paris.<|im_end|>\n", True),
    )


def test_tool_conversation_under_a_template_without_tools_takes_the_plain_rendering(plain_tokenizer):
    assert _tokenized(plain_tokenizer, TOOL_CONVERSATION) == _expected(
        plain_tokenizer,
        (f"<|bos|><|system|>Tools you can call (JSON):\n[{WEATHER_JSON}]<|end|>"
         "<|user|>What is the weather in Paris?<|end|><|assistant|>", False),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}<|end|>', True),
        ('<|user|>Tool result:\n{"temperature": 21}<|end|><|assistant|>', False),
        ("It is 21 degrees in Paris.<|end|>", True),
    )


def test_registry_mapped_row_with_a_system_prompt_and_two_calls_renders_plainly(plain_tokenizer):
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "q", "assistant_tag": "a",
            "observation_tag": "result", "function_tag": "call"}
    row = {"dialog": [{"speaker": "q", "text": "Paris and Rome?"},
                      {"speaker": "call", "text": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                              {"name": "get_weather", "arguments": {"city": "Rome"}}])},
                      {"speaker": "result", "text": "21 and 25"}, {"speaker": "a", "text": "21 and 25 degrees."}],
           "sys": "Be terse.", "funcs": json.dumps([WEATHER])}
    conversations, _ = _read([row], columns={"messages": "dialog", "system": "sys", "tools": "funcs"}, tags=tags)
    assert _tokenized(plain_tokenizer, conversations[0]) == _expected(
        plain_tokenizer,
        (f"<|bos|><|system|>Be terse.\n\nTools you can call (JSON):\n[{WEATHER_JSON}]<|end|>"
         "<|user|>Paris and Rome?<|end|><|assistant|>", False),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
         '{"name": "get_weather", "arguments": {"city": "Rome"}}<|end|>', True),
        ("<|user|>Tool result:\n21 and 25<|end|><|assistant|>", False),
        ("21 and 25 degrees.<|end|>", True),
    )


def test_alpaca_history_answers_are_trained_with_the_final_answer(plain_tokenizer):
    row = {"question": "Sum them.", "context": "2 3", "answer": "5", "persona": "Be brief.",
           "earlier": [["Hi", "Hello"]]}
    columns = {"prompt": "question", "query": "context", "response": "answer", "history": "earlier",
               "system": "persona"}
    conversations, _ = _read([row], "alpaca", columns)
    assert _tokenized(plain_tokenizer, conversations[0]) == _expected(
        plain_tokenizer,
        ("<|bos|><|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>", False), ("Hello<|end|>", True),
        ("<|user|>Sum them.\n\n2 3<|end|><|assistant|>", False), ("5<|end|>", True),
    )


def test_a_batch_mixing_tools_is_rendered_per_tools_group_in_order(tool_tokenizer):
    other = Conversation(TOOL_CONVERSATION.messages, [{"type": "function", "function": {**WEATHER, "name": "w"}}])
    no_tools = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    batch = [TOOL_CONVERSATION, no_tools, other, TOOL_CONVERSATION]
    alone = [tokenize_examples(tool_tokenizer, [c], 1024)[0] for c in batch]
    assert tokenize_examples(tool_tokenizer, batch, 1024) == alone
    assert alone[0] != alone[2]
    assert _tokenized(tool_tokenizer, no_tools) == _expected(
        tool_tokenizer, ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False), ("Hello<|im_end|>\n", True))
