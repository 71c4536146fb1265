"""Data loading, chat-template masking, packing and the topology-independent sample order."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from launcher.assets import ASSETS_DIR, DEFAULT_TOKENIZER_DIR, default_data_path
from launcher.errors import LauncherError
from launcher.train.batching import (
    collate,
    global_batch_target_tokens,
    check_batch_split,
    micro_batch_indices,
    pack_examples,
    sample_stream_indices,
)
from launcher.data.formats import IGNORE_INDEX, Conversation, Example, load_conversations, load_rows, to_messages
from launcher.data.tokenization import build_examples, load_tokenizer, tokenize_examples

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("")


def _write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def _chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


# --- loading -------------------------------------------------------------------------------------------------------

def test_shipped_alpaca_data_loads_as_400_question_answer_pairs():
    conversations = load_conversations(default_data_path("alpaca"), "alpaca")
    assert len(conversations) == 400
    assert all([m["role"] for m in c.messages] == ["user", "assistant"] and c.tools is None for c in conversations)


def test_shipped_sharegpt_data_has_system_turns_and_multi_turn_conversations():
    conversations = [c.messages for c in load_conversations(default_data_path("sharegpt"), "sharegpt")]
    assert len(conversations) == 60
    assert any(c[0]["role"] == "system" for c in conversations)
    assert any(sum(m["role"] == "assistant" for m in c) > 1 for c in conversations)
    assert all(c[-1]["role"] == "assistant" for c in conversations)


def test_alpaca_row_becomes_system_history_then_instruction_with_input_after_a_blank_line(tmp_path):
    row = {"instruction": "Add the two numbers.", "input": "2 + 3", "output": "5", "system": "Be brief.",
           "history": [["Hi", "Hello"]]}
    path = _write_jsonl(tmp_path / "d.jsonl", [row])
    assert load_conversations(path, "alpaca") == [Conversation(_chat(
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"),
        ("user", "Add the two numbers.\n\n2 + 3"), ("assistant", "5"),
    ))]


def test_json_list_and_jsonl_files_load_the_same_rows(tmp_path):
    rows = [{"instruction": "Say hi.", "output": "hi"}, {"instruction": "Say yo.", "input": "", "output": "yo"}]
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))
    assert load_rows(str(tmp_path / "d.json")) == load_rows(_write_jsonl(tmp_path / "d.jsonl", rows)) == rows
    assert load_conversations(str(tmp_path / "d.json"), "alpaca")[1].messages == _chat(("user", "Say yo."),
                                                                                         ("assistant", "yo"))


def test_sharegpt_role_content_messages_load_like_from_value_conversations(tmp_path):
    from_value = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                    {"from": "gpt", "value": "A"}]}
    role_content = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                 {"role": "assistant", "content": "A"}]}
    path = _write_jsonl(tmp_path / "d.jsonl", [from_value, role_content])
    first, second = load_conversations(path, "sharegpt")
    assert first == second == Conversation(_chat(("system", "S"), ("user", "Q"), ("assistant", "A")))


def test_missing_data_file_is_reported_on_data_path(tmp_path):
    path = str(tmp_path / "nope.jsonl")
    with pytest.raises(LauncherError, match="the file does not exist") as err:
        load_rows(path)
    assert f"data.path='{path}'" in str(err.value)


def test_bad_jsonl_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "output": \n')
    with pytest.raises(LauncherError, match="invalid JSON at line 3"):
        load_rows(str(path))


def test_bad_json_list_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction" "a"}\n]\n')
    with pytest.raises(LauncherError, match="invalid JSON at line 3"):
        load_rows(str(path))


def test_unknown_format_is_reported_on_data_format():
    with pytest.raises(LauncherError, match="data.format='csv'.*use one of: alpaca, sharegpt"):
        to_messages({}, "csv", 1)
    with pytest.raises(LauncherError, match="data.format='csv'"):
        default_data_path("csv")


ALPACA_OK = {"instruction": "Say hi.", "output": "hi"}
SHAREGPT_OK = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}


@pytest.mark.parametrize("fmt, bad_row, reason, detail", [
    ("alpaca", {"instruction": "Say hi."}, "missing 'output'", ""),
    ("alpaca", {"instruction": "Say hi.", "output": "  "}, "empty answer", "'output' is empty"),
    ("alpaca", {"input": "x", "output": "y"}, "missing 'instruction'", ""),
    ("alpaca", {"instruction": "Add.", "output": 5}, "'output' is not a string", "got int"),
    ("alpaca", {"instruction": "Q", "output": "A", "history": [["only one"]]}, "bad history",
     "'history' item 1 must be a [question, answer] pair of non-empty strings"),
    ("alpaca", ["Say hi.", "hi"], "not a JSON object", "got list"),
    ("sharegpt", {"turns": []}, "missing 'conversations'", ""),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}]},
     "ends with a user turn", "it must end with an assistant or function-call turn"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"},
                                    {"from": "gpt", "value": "A"}]},
     "turns out of order", "turn 2 is user but assistant or function_call was expected"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "system", "value": "S"}]},
     "turns out of order", "turn 2 is system but assistant or function_call was expected"),
    ("sharegpt", {"conversations": [{"from": "bot", "value": "Q"}]},
     "unknown role 'bot'", "turn 1; use one of human, user, gpt, assistant, system, observation, tool, function_call"),
    ("sharegpt", {"conversations": [{"from": "human"}]},
     "turn missing 'from'/'value' (or 'role'/'content')", "turn 1"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": ""}]},
     "empty answer", "turn 2 is empty"),
    ("sharegpt", {"conversations": [{"from": "system", "value": "S"}]},
     "no turns", "the conversation has no turns besides the system prompt"),
])
def test_malformed_row_is_dropped_by_reason_and_named_with_file_row_and_shape(tmp_path, caplog, fmt, bad_row, reason,
                                                                               detail):
    """The single-row check names the file, row and problem; a file keeps its good rows and logs the bad one; a file
    with no usable row is refused with the reasons and the expected shape."""
    path = str(tmp_path / "d.jsonl")
    with pytest.raises(LauncherError) as err:
        to_messages(bad_row, fmt, 2, path)
    single = str(err.value)
    problem = f"row 2: {reason}" + (f" ({detail}" if detail else ".")
    assert single.startswith(f"error: data.path='{path}' cannot be used. {problem}")

    good = ALPACA_OK if fmt == "alpaca" else SHAREGPT_OK
    _write_jsonl(tmp_path / "d.jsonl", [good, bad_row])
    with caplog.at_level("WARNING", logger="launcher.data.formats"):
        assert len(load_conversations(path, fmt)) == 1
    assert caplog.messages == [f"data: dropped 1 of 2 rows of {path}: 1 {reason} (row 2)"]

    (tmp_path / "d.jsonl").write_text(json.dumps([bad_row]))  # a JSON list: a JSONL line "[...]" reads as one
    with pytest.raises(LauncherError) as err:
        load_conversations(path, fmt)
    refusal = str(err.value)
    assert refusal.startswith(f"error: data='{path}' cannot be used. its one row is not usable: 1 {reason} (row 1).")
    for text in (single, refusal):
        assert f"with data.format={fmt}, each {fmt} row needs" in text
        assert ('"output"' if fmt == "alpaca" else '"conversations"') in text


# --- tokenizer and masking ---------------------------------------------------------------------------------------

def test_shipped_tokenizer_has_pad_bos_eos_and_role_tokens(tokenizer):
    assert len(tokenizer) == 512
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_only_the_answer_and_its_end_marker_are_trained(tokenizer):
    messages = _chat(("system", "Be brief."), ("user", "Reverse the letters of the word.\n\ncat"), ("assistant", "tac"))
    example = tokenize_examples(tokenizer, [messages], seq_len=256)[0]
    assert _trained_text(tokenizer, example) == "tac<|end|>"
    assert tokenizer.decode(example.input_ids) == (
        "<|bos|><|system|>Be brief.<|end|><|user|>Reverse the letters of the word.\n\ncat<|end|><|assistant|>tac<|end|>"
    )


def test_every_assistant_turn_of_a_multi_turn_conversation_is_trained(tokenizer):
    messages = _chat(("user", "Add the two numbers.\n\n2 + 3"), ("assistant", "5"),
                     ("user", "What number comes after 5?"), ("assistant", "6"))
    assert _trained_text(tokenizer, tokenize_examples(tokenizer, [messages], 256)[0]) == "5<|end|>6<|end|>"


def test_control_tokens_typed_in_the_data_are_encoded_as_text(tokenizer):
    example = tokenize_examples(tokenizer, [_chat(("user", "say <|end|>"), ("assistant", "ok"))], 256)[0]
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    assert example.input_ids.count(end_id) == 2
    assert _trained_text(tokenizer, example) == "ok<|end|>"


def test_chat_template_renders_each_conversation_prefix_as_a_token_prefix(tokenizer):
    for messages, _ in load_conversations(default_data_path("sharegpt"), "sharegpt"):
        for k in range(1, len(messages)):
            shorter = tokenizer.apply_chat_template(
                messages[:k], add_generation_prompt=messages[k]["role"] == "assistant", return_dict=False)
            longer = tokenizer.apply_chat_template(messages[: k + 1], return_dict=False)
            assert longer[: len(shorter)] == shorter


def test_template_that_rewrites_earlier_turns_is_rejected_on_model_tokenizer():
    tokenizer = load_tokenizer("")
    tokenizer.chat_template = (  # numbers the turns from the end, so earlier turns change when one is added
        "{% for m in messages %}{{ (messages|length - loop.index0)|string + m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}A{% endif %}"
    )
    with pytest.raises(LauncherError, match="model.tokenizer=.*does not render the first 1 messages as a token prefix"):
        tokenize_examples(tokenizer, [_chat(("user", "Q"), ("assistant", "A"))], 256)[0]


def test_tokenizer_without_chat_template_or_pad_gets_the_generic_template_and_eos_padding(tmp_path):
    plain = load_tokenizer("")
    plain.chat_template = None
    plain.pad_token = None
    plain.save_pretrained(str(tmp_path))
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|eos|>"
    messages = _chat(("system", "Be brief."), ("user", "Q?"), ("assistant", "yes"), ("user", "R?"), ("assistant", "no"))
    example = tokenize_examples(tokenizer, [messages], 256)[0]
    assert tokenizer.decode(example.input_ids) == (
        "<|bos|>System: Be brief.\n\nUser: Q?\n\nAssistant: yes<|eos|>\n\nUser: R?\n\nAssistant: no<|eos|>")
    assert _trained_text(tokenizer, example) == " yes<|eos|> no<|eos|>"


def test_missing_or_empty_tokenizer_folder_is_reported_on_model_tokenizer(tmp_path):
    with pytest.raises(LauncherError, match=r"model.tokenizer='\./no/such/dir' cannot be used\. the folder does not"):
        load_tokenizer("./no/such/dir")
    with pytest.raises(LauncherError, match="the folder holds none of tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_truncation_cuts_to_seq_len_and_drops_examples_with_no_answer_left(tokenizer):
    long_answer = _chat(("user", "Q"), ("assistant", "a long answer that does not fit"))
    cut = tokenize_examples(tokenizer, [long_answer], seq_len=6)[0]
    assert len(cut.input_ids) == len(cut.labels) == 6
    assert cut.num_targets > 0
    no_answer = _chat(("user", "a question far too long to leave room for any answer"), ("assistant", "A"))
    assert build_examples(tokenizer, [long_answer, no_answer], seq_len=6) == [cut]
    with pytest.raises(LauncherError, match="train.seq_len=6 cannot be used. all 1 examples lose every answer token"):
        build_examples(tokenizer, [no_answer], seq_len=6)


def test_max_samples_keeps_the_first_conversations(tokenizer):
    conversations = load_conversations(default_data_path("alpaca"), "alpaca")
    examples = build_examples(tokenizer, conversations, 256, max_samples=5)
    assert examples == [tokenize_examples(tokenizer, [c], 256)[0] for c in conversations[:5]]


def test_shipped_examples_fit_well_inside_the_default_seq_len(tokenizer):
    examples = build_examples(tokenizer, load_conversations(default_data_path("alpaca"), "alpaca"), 256)
    assert len(examples) == 400
    assert max(len(e.input_ids) for e in examples) < 64


# --- packing and collation -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def examples(tokenizer):
    return build_examples(tokenizer, load_conversations(default_data_path("sharegpt"), "sharegpt"), 256)


def test_packing_keeps_whole_documents_in_order_with_restarting_positions(examples):
    rows = pack_examples(examples, seq_len=128)
    assert len(rows) < len(examples)
    unpacked = []
    for row in rows:
        assert len(row.input_ids) == len(row.labels) == len(row.position_ids) == sum(row.seq_lens) <= 128
        start = 0
        for length in row.seq_lens:
            assert row.position_ids[start: start + length] == list(range(length))
            unpacked.append(row.input_ids[start: start + length])
            assert row.labels[start] == IGNORE_INDEX
            start += length
    assert unpacked == [e.input_ids for e in examples]
    assert sum(row.num_targets for row in rows) == sum(e.num_targets for e in examples)


def test_collate_right_pads_with_pad_id_and_ignored_labels(tokenizer, examples):
    batch = collate(examples[:3], tokenizer.pad_token_id)
    lengths = [len(e.input_ids) for e in examples[:3]]
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_collate_gives_full_rows_no_attention_mask_so_sdpa_never_reads_one(tokenizer, examples):
    full = [Example(e.input_ids[:8], e.labels[:8]) for e in examples[:3]]
    batch = collate(full, tokenizer.pad_token_id)
    assert "attention_mask" not in batch and batch["input_ids"].tolist() == [e.input_ids for e in full]


def test_collate_pads_to_a_multiple_for_fp8s_compiled_widths(tokenizer, examples):
    """train.precision=fp8 pads each micro batch to a multiple of 64 tokens: plain rows get a mask over the padding,
    packed rows restarting positions, and the labels of the padding are ignored either way."""
    plain = collate(examples[:3], tokenizer.pad_token_id, multiple=64)
    longest = max(len(e.input_ids) for e in examples[:3])
    assert plain["input_ids"].shape[1] == -(-longest // 64) * 64 > longest
    assert plain["attention_mask"].sum(dim=1).tolist() == [len(e.input_ids) for e in examples[:3]]
    full = [Example(e.input_ids[:8], e.labels[:8]) for e in examples[:3]]
    padded = collate(full, tokenizer.pad_token_id, multiple=64)  # full rows become padded ones: a mask now
    assert padded["input_ids"].shape[1] == 64 and padded["attention_mask"].sum(dim=1).tolist() == [8, 8, 8]
    rows = pack_examples(examples[:6], seq_len=100)
    packed = collate(rows, tokenizer.pad_token_id, multiple=64)
    width = packed["input_ids"].shape[1]
    assert width % 64 == 0 and "attention_mask" not in packed
    for i, row in enumerate(rows):
        tail = width - len(row.input_ids)
        assert packed["position_ids"][i, len(row.input_ids):].tolist() == list(range(tail))
        assert (packed["labels"][i, len(row.input_ids):] == IGNORE_INDEX).all()
    assert collate(full, tokenizer.pad_token_id, multiple=8)["input_ids"].shape[1] == 8  # already a multiple


def test_packed_batch_gives_each_document_the_logits_it_gets_alone(tokenizer, examples):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    rows = pack_examples(examples[:6], seq_len=128)
    batch = collate(rows, tokenizer.pad_token_id)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        start = 0
        for doc, length in enumerate(rows[0].seq_lens):
            alone = torch.tensor([rows[0].input_ids[start: start + length]])
            torch.testing.assert_close(packed_logits[0, start: start + length], model(alone).logits[0])
            start += length


# --- sample order --------------------------------------------------------------------------------------------------

def test_every_sample_appears_exactly_once_per_epoch():
    stream = sample_stream_indices(num_samples=50, seed=7, start=0, count=150)
    for epoch in range(3):
        assert sorted(stream[epoch * 50: (epoch + 1) * 50]) == list(range(50))
    assert stream[:50] != stream[50:100]


def test_stream_slices_compose_across_epoch_boundaries_and_repeat_for_the_same_seed():
    whole = sample_stream_indices(50, seed=7, start=0, count=130)
    assert sample_stream_indices(50, 7, 45, 60) == whole[45:105]
    assert sample_stream_indices(50, 7, 0, 130) == whole
    assert sample_stream_indices(50, 8, 0, 50) != whole[:50]


def test_epoch_order_is_torchs_randperm_of_seed_plus_epoch_however_often_it_is_asked():
    """The order resumed runs rely on, and the per-epoch cache must not change it: each epoch's draw, asked for
    again after a caller mutated an earlier answer, is still torch.randperm(n) seeded with seed + epoch."""
    first = sample_stream_indices(50, 7, 0, 100)
    first.clear()
    for epoch in range(2):
        expected = torch.randperm(50, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert sample_stream_indices(50, 7, epoch * 50, 50) == expected


@pytest.mark.parametrize("dp_size, micro_batch_size, grad_accum", [(1, 8, 1), (2, 2, 2), (4, 1, 2)])
def test_global_batch_holds_the_same_samples_on_any_topology(examples, dp_size, micro_batch_size, grad_accum):
    global_batch_size = dp_size * micro_batch_size * grad_accum
    for global_step in (0, 3, 7):  # step 7 crosses the epoch boundary of the 60 samples
        taken = [
            i
            for micro_step in range(grad_accum)
            for dp_rank in range(dp_size)
            for i in micro_batch_indices(len(examples), 1234, global_step, global_batch_size, micro_batch_size,
                                         grad_accum, dp_rank, dp_size, micro_step)
        ]
        reference = micro_batch_indices(len(examples), 1234, global_step, 8, 8, 1, 0, 1, 0)
        assert taken == reference
        assert Counter(taken) == Counter(sample_stream_indices(len(examples), 1234, global_step * 8, 8))
        assert global_batch_target_tokens(examples, taken) == sum(
            sum(1 for label in examples[i].labels[1:] if label != IGNORE_INDEX) for i in reference)


def test_global_batch_that_does_not_split_evenly_names_the_numbers():
    with pytest.raises(LauncherError, match=r"train.global_batch_size=10 .* = 2 x 2 x 2 = 8"):
        check_batch_split(10, 2, 2, 2)


# --- assets --------------------------------------------------------------------------------------------------------

def test_committed_assets_equal_a_fresh_build(tmp_path):
    spec = importlib.util.spec_from_file_location("build_assets", REPO / "scripts" / "build_assets.py")
    build_assets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_assets)
    build_assets.main(["--out", str(tmp_path)])
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert [str(p) for p in fresh] == [
        "data/dataset_info.json", "data/default.jsonl", "data/sharegpt_sample.json", "data/toolcall_sample.json",
        "tokenizer/chat_template.jinja", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
    ]
    for relative in fresh:
        assert (Path(ASSETS_DIR) / relative).read_bytes() == (tmp_path / relative).read_bytes(), relative
    assert Path(DEFAULT_TOKENIZER_DIR) == Path(ASSETS_DIR) / "tokenizer"
