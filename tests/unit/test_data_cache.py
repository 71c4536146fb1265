"""The tokenized data cache: a relaunch reads what the first launch tokenized, and anything that changes the tokens
changes the file it reads."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from launcher.assets import default_data_path
from launcher.data.formats import load_conversations
from launcher.data.tokenization import build_examples, load_tokenizer
from launcher.data.cache import cache_key, cache_path, cache_root, cached_examples, read


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("")


@pytest.fixture
def data(tmp_path: Path) -> str:
    path = tmp_path / "alpaca.json"
    shutil.copy(default_data_path("alpaca"), path)
    return str(path)


def builder(tokenizer, data: str, seq_len: int, calls: list[int]):
    def build():
        calls.append(1)
        conversations = load_conversations(data, "alpaca")
        return build_examples(tokenizer, conversations, seq_len), len(conversations)
    return build


def test_a_relaunch_reads_the_tokenized_set_instead_of_tokenizing_again(tokenizer, data, tmp_path):
    path = cache_path({"LAUNCHER_CACHE_DIR": str(tmp_path / "cache")}, data, "alpaca", 256, 0, tokenizer)
    calls: list[int] = []
    first = cached_examples(path, builder(tokenizer, data, 256, calls), write=True, seq_len=256)
    again = cached_examples(path, builder(tokenizer, data, 256, calls), write=True, seq_len=256)
    assert calls == [1] and path.is_file()
    assert again == first and len(first) == 400
    assert [e.num_targets for e in again] == [e.num_targets for e in first]


def test_a_rank_that_does_not_write_leaves_no_file(tokenizer, data, tmp_path):
    path = tmp_path / "cache" / "x.pt"
    calls: list[int] = []
    cached_examples(path, builder(tokenizer, data, 256, calls), write=False, seq_len=256)
    assert calls == [1] and not path.exists()


def test_what_changes_the_tokens_changes_the_key(tokenizer, data):
    base = cache_key(data, "alpaca", 256, 0, tokenizer)
    assert cache_key(data, "alpaca", 256, 0, tokenizer) == base
    assert cache_key(data, "alpaca", 128, 0, tokenizer) != base
    assert cache_key(data, "alpaca", 256, 10, tokenizer) != base
    assert cache_key(data, "sharegpt", 256, 0, tokenizer) != base
    other = load_tokenizer("")
    other.chat_template = other.chat_template + " "
    assert cache_key(data, "alpaca", 256, 0, other) != base
    before = os.stat(data).st_mtime_ns
    Path(data).write_text(Path(data).read_text().replace("a", "b", 1))  # an edit: same size, a later mtime
    os.utime(data, ns=(before + 10**9, before + 10**9))  # a second later, whatever the clock's tick
    assert cache_key(data, "alpaca", 256, 0, tokenizer) != base


def test_a_damaged_cache_file_is_tokenized_again_and_replaced(tokenizer, data, tmp_path, caplog):
    path = tmp_path / "cache" / "x.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a torch file")
    calls: list[int] = []
    with caplog.at_level(logging.WARNING):
        examples = cached_examples(path, builder(tokenizer, data, 256, calls), write=True, seq_len=256)
    assert calls == [1] and "ignoring the unreadable cache file" in caplog.text
    assert read(path) == (examples, 400)


def test_an_unwritable_cache_costs_only_the_tokenization(tokenizer, data, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    calls: list[int] = []
    with caplog.at_level(logging.WARNING):
        examples = cached_examples(blocker / "tokenized" / "x.pt", builder(tokenizer, data, 256, calls), write=True,
                                   seq_len=256)
    assert calls == [1] and len(examples) == 400
    assert "could not write the tokenized data cache" in caplog.text


def test_examples_dropped_for_seq_len_are_reported_again_from_the_cache(tokenizer, tmp_path, caplog):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "short", "output": "ok"}\n'
                    '{"instruction": "' + "word " * 200 + '", "output": "late"}\n')
    path = tmp_path / "cache" / "x.pt"
    calls: list[int] = []
    cached_examples(path, builder(tokenizer, str(data), 64, calls), write=True, seq_len=64)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        examples = cached_examples(path, builder(tokenizer, str(data), 64, calls), write=True, seq_len=64)
    assert calls == [1] and len(examples) == 1
    assert "from the cache" in caplog.text and "dropped 1 of 2 examples" in caplog.text


def test_a_data_file_missing_on_this_host_is_left_to_the_loader_s_error(tokenizer, tmp_path):
    assert cache_path({}, str(tmp_path / "gone.jsonl"), "alpaca", 256, 0, tokenizer) is None


def test_the_cache_lives_where_the_environment_says():
    assert cache_root({"LAUNCHER_CACHE_DIR": "/data/c"}) == Path("/data/c")
    assert cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/launcher")
    assert cache_root({}) == Path.home() / ".cache" / "launcher"
