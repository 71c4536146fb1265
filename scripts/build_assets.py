"""Generate the small data sets and tokenizer the launcher ships, so a first run needs no download.

Run once and commit the outputs; `tests/unit/test_data.py` rebuilds into a temporary folder and checks the
committed files are identical, so the generator and the files cannot drift apart. Every choice is seeded.

    python3 scripts/build_assets.py            # writes launcher/assets/{data,tokenizer}
    python3 scripts/build_assets.py --out DIR  # writes DIR/{data,tokenizer}
"""
from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "launcher" / "assets"
NUM_ALPACA_ROWS = 400
NUM_SHAREGPT_ROWS = 60
NUM_TOOLCALL_ROWS = 80
VOCAB_SIZE = 512
MODEL_MAX_LENGTH = 2048

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]

# Role markers are written as literals (not '<|' + role + '|>') so transformers can tell template tokens from
# user text; every turn ends with <|end|>, so a prefix of the conversation renders to a token prefix.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- '<|system|>' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<|user|>' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<|assistant|>' -}}"
    "{%- else -%}{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- message['content'] + '<|end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

# Few words, so each (task, word) pair recurs and a tiny model's loss falls visibly within ~40 steps of batch 8.
WORDS = [
    "cat", "dog", "sun", "map", "red", "box", "cup", "hat",
    "tree", "bird", "fish", "star", "apple", "river", "stone", "green",
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant. Answer briefly.",
    "You are a careful assistant. Give only the answer.",
    "Answer each question with as few words as possible.",
]
Task = Callable[[random.Random], tuple[str, str, str]]


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return "Reverse the letters of the word.", word, word[::-1]


def _uppercase(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return "Write the word in capital letters.", word, word.upper()


def _add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return "Add the two numbers.", f"{a} + {b}", str(a + b)


def _sort(rng: random.Random) -> tuple[str, str, str]:
    numbers = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
    return (
        "Sort the numbers from smallest to largest.",
        ", ".join(map(str, numbers)),
        ", ".join(map(str, sorted(numbers))),
    )


def _next_letter(rng: random.Random) -> tuple[str, str, str]:
    i = rng.randrange(25)
    return f"Which letter comes after {string.ascii_lowercase[i]}?", "", string.ascii_lowercase[i + 1]


def _next_number(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(0, 19)
    return f"What number comes after {n}?", "", str(n + 1)


def _repeat(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return "Repeat the word three times.", word, " ".join([word] * 3)


def _first_letter(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return "What is the first letter of the word?", word, word[0]


def _count_letters(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return "How many letters are in the word?", word, str(len(word))


TASKS: list[Task] = [
    _reverse, _uppercase, _add, _sort, _next_letter, _next_number, _repeat, _first_letter, _count_letters,
]


def alpaca_rows(rng: random.Random, count: int) -> list[dict[str, str]]:
    """Rows of {instruction, input, output}; `input` is empty for the tasks that need none."""
    rows = []
    for _ in range(count):
        instruction, input_text, output = rng.choice(TASKS)(rng)
        rows.append({"instruction": instruction, "input": input_text, "output": output})
    return rows


def _user_text(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def sharegpt_rows(rng: random.Random, count: int) -> list[dict[str, list[dict[str, str]]]]:
    """Conversations of one to three exchanges, a third of them opened by a system turn."""
    rows = []
    for _ in range(count):
        turns = []
        if rng.random() < 1 / 3:
            turns.append({"from": "system", "value": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(rng.choice([1, 1, 2, 3])):
            instruction, input_text, output = rng.choice(TASKS)(rng)
            turns.append({"from": "human", "value": _user_text(instruction, input_text)})
            turns.append({"from": "gpt", "value": output})
        rows.append({"conversations": turns})
    return rows


TOOLS = [  # short, so a conversation with its tools stays well inside the default train.seq_len
    {"name": "count_letters", "description": "Count letters.",
     "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}},
    {"name": "add", "description": "Add numbers.",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}},
]


def _tool_exchange(rng: random.Random) -> list[dict[str, str]]:
    """human -> function_call -> observation -> gpt, as LLaMA-Factory's tool-call sharegpt data holds it."""
    if rng.random() < 0.5:
        word = rng.choice(WORDS)
        call, result = {"name": "count_letters", "arguments": {"word": word}}, len(word)
        question, answer = f"How many letters has {word}?", f"{word} has {result} letters."
    else:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        call, result = {"name": "add", "arguments": {"a": a, "b": b}}, a + b
        question, answer = f"What is {a} plus {b}?", f"It is {result}."
    return [{"from": "human", "value": question},
            {"from": "function_call", "value": json.dumps(call)},
            {"from": "observation", "value": json.dumps({"result": result})},
            {"from": "gpt", "value": answer}]


def toolcall_rows(rng: random.Random, count: int) -> list[dict]:
    """Tool-call conversations with a `tools` column (a JSON string, as in LLaMA-Factory's glaive_toolcall demo)
    offering the tool the row calls; a quarter answer a plain question without calling the tool offered."""
    rows = []
    for _ in range(count):
        if rng.random() < 0.25:
            instruction, input_text, output = rng.choice(TASKS)(rng)
            turns = [{"from": "human", "value": _user_text(instruction, input_text)}, {"from": "gpt", "value": output}]
            tool = TOOLS[0]  # the shorter spec: a plain task's long input and a tool list still fit seq_len 256
        else:
            turns = _tool_exchange(rng)
            tool = next(t for t in TOOLS if t["name"] in turns[1]["value"])
        rows.append({"conversations": turns, "tools": json.dumps([tool], separators=(",", ":"))})
    return rows


# LLaMA-Factory's registry of the shipped sets: data.registry=launcher/assets/data/dataset_info.json
REGISTRY = {
    "alpaca_sample": {"file_name": "default.jsonl"},
    "sharegpt_sample": {"file_name": "sharegpt_sample.json", "formatting": "sharegpt"},
    "toolcall_sample": {"file_name": "toolcall_sample.json", "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "tools": "tools"}},
}


def _texts(alpaca: list[dict[str, str]], sharegpt: list[dict]) -> list[str]:
    texts = [text for row in alpaca for text in row.values() if text]
    return texts + [turn["value"] for row in sharegpt for turn in row["conversations"]]


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text encodes (no unknown token), and the special tokens take ids 0..6."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
    )


def build(out: Path) -> None:
    """Write out/data/{default.jsonl, sharegpt_sample.json, toolcall_sample.json, dataset_info.json} and
    out/tokenizer/."""
    rng = random.Random(0)
    alpaca = alpaca_rows(rng, NUM_ALPACA_ROWS)
    sharegpt = sharegpt_rows(rng, NUM_SHAREGPT_ROWS)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "default.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in alpaca)
    with open(data_dir / "sharegpt_sample.json", "w", encoding="utf-8") as f:
        json.dump(sharegpt, f, ensure_ascii=False, indent=1)
        f.write("\n")
    build_tokenizer(_texts(alpaca, sharegpt)).save_pretrained(str(out / "tokenizer"))
    # Drawn after the rest and not fed to the tokenizer, so the files above stay as they were before it existed.
    _write_json(data_dir / "toolcall_sample.json", toolcall_rows(random.Random(1), NUM_TOOLCALL_ROWS))
    _write_json(data_dir / "dataset_info.json", REGISTRY)


def _write_json(path: Path, value: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder that receives data/ and tokenizer/")
    build(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
