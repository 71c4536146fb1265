"""The tokenized data cache: a relaunch reads what the first launch tokenized, and anything that changes the tokens
changes the file it reads."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.assets import default_data_path
from launcher.data.formats import load_conversations
from launcher.errors import LauncherError
from launcher.data.tokenization import build_examples, load_tokenizer
from launcher.data.cache import cache_key, cache_path, cache_root, cached_examples, read
from launcher.data.selection import plan_sets
from launcher.plan.resolve import resolve
from launcher.train.examples import cache_inputs
from tests.unit.test_plan import CPU, compose


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


def plan_with(data: str, *overrides: str):
    cfg, _ = compose([f"data.path={data}", *overrides])
    return resolve(cfg, CPU, run_dir="/runs/x", run_name="x", data_sets=plan_sets(cfg.data, cfg.train.seed, "/"))


def key(plan, tokenizer, part: str = "train", index: int = 0) -> str:
    return cache_key(cache_inputs(plan, part, index), plan.train.seq_len, tokenizer)


def test_a_relaunch_reads_the_tokenized_set_instead_of_tokenizing_again(tokenizer, data, tmp_path):
    path = cache_path({"LAUNCHER_CACHE_DIR": str(tmp_path / "cache")}, cache_inputs(plan_with(data), "train", 0), 256,
                      tokenizer)
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
    plan = plan_with(data)
    base = key(plan, tokenizer)
    assert key(plan_with(data), tokenizer) == base
    assert key(plan_with(data, "train.seq_len=128"), tokenizer) != base
    assert key(plan_with(data, "data.max_samples=10"), tokenizer) != base
    split = plan_with(data, "data.val_size=0.1")
    assert len({key(split, tokenizer), key(split, tokenizer, "val"), base}) == 3
    assert key(plan_with(data, "data.val_size=0.1", "train.seed=7"), tokenizer, "val") != key(split, tokenizer, "val")
    source = plan.train_sets[0].source
    for changed in (replace(source, columns={"prompt": "instruction"}), replace(source, formatting="sharegpt"),
                    replace(source, tags={"role_tag": "from"})):
        assert key(replace(plan, train_sets=(replace(plan.train_sets[0], source=changed),)), tokenizer) != base
    other = load_tokenizer("")
    other.chat_template = other.chat_template + " "
    assert key(plan, other) != base
    before = os.stat(data).st_mtime_ns
    Path(data).write_text(Path(data).read_text().replace("a", "b", 1))  # an edit: same size, a later mtime
    os.utime(data, ns=(before + 10**9, before + 10**9))  # a second later, whatever the clock's tick
    assert key(plan, tokenizer) != base


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


def test_a_data_file_missing_on_this_host_is_refused_by_name(tokenizer, data):
    plan = plan_with(data)
    os.unlink(data)
    with pytest.raises(LauncherError) as err:
        cache_inputs(plan, "train", 0)
    assert err.value.field == "data.path" and "No such file or directory" in err.value.problem
    assert cache_path({}, {"files": []}, 256, tokenizer).parent == cache_root({}) / "tokenized"


def test_the_cache_lives_where_the_environment_says():
    assert cache_root({"LAUNCHER_CACHE_DIR": "/data/c"}) == Path("/data/c")
    assert cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/launcher")
    assert cache_root({}) == Path.home() / ".cache" / "launcher"
