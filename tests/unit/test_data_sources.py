"""Data sources: LLaMA-Factory registries, file kinds read through `datasets`, weighted mixing, the validation split."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from launcher.assets import default_data_path
from launcher.data.formats import load_rows
from launcher.data.mixing import check_mix, mix_counts, mixed_order, split_validation
from launcher.data.registry import load_registry
from launcher.data.registry import resolve_sources
from launcher.data.sources import DataSource, fingerprint, read_rows
from launcher.errors import LauncherError

ALPACA_FIELDS = ("instruction", "input", "output")


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """`datasets` reads its cache folder and offline switch at import: set them in the environment and its config,
    so the suite writes its cache under tmp_path and never waits on a network."""
    import datasets
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    for var, value in (("HF_DATASETS_CACHE", str(cache)), ("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return datasets


def _registry(folder: Path, entries: dict) -> str:
    path = folder / "dataset_info.json"
    path.write_text(json.dumps(entries))
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _refusal(registry_entries: dict, name: str, tmp_path: Path) -> str:
    with pytest.raises(LauncherError) as err:
        resolve_sources([name], _registry(tmp_path, registry_entries), "alpaca", str(tmp_path), "data.datasets")
    assert err.value.field == "data.datasets" and err.value.value == name
    return err.value.paragraph()


def test_registry_alpaca_entry_with_custom_columns_keeps_them_and_reads_its_file(tmp_path):
    _jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}])
    registry = _registry(tmp_path, {"qa": {"file_name": "qa.jsonl", "columns": {"prompt": "question",
                                                                                "response": "answer"}}})
    [source] = resolve_sources(["qa"], registry, "sharegpt", "/", "data.datasets")
    assert (source.path, source.formatting, source.kind()) == (str(tmp_path / "qa.jsonl"), "alpaca", "json")
    assert source.columns == {"prompt": "question", "response": "answer"} and source.tags == {}
    assert read_rows(source) == [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]


def test_registry_sharegpt_and_openai_entries_keep_formatting_and_tags(tmp_path):
    (tmp_path / "chat.json").write_text(Path(default_data_path("sharegpt")).read_text())
    entries = {
        "chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
        "oai": {"file_name": "chat.json", "formatting": "openai", "tags": {"system_tag": "developer"}},
    }
    chat, oai = resolve_sources(["chat", "oai"], _registry(tmp_path, entries), "alpaca", str(tmp_path),
                                "data.datasets")
    assert (chat.formatting, chat.columns, chat.tags) == ("sharegpt", {"messages": "conversations"}, {})
    assert oai.formatting == "sharegpt"
    assert oai.tags == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                        "assistant_tag": "assistant", "observation_tag": "tool", "system_tag": "developer"}
    assert read_rows(chat) == load_rows(default_data_path("sharegpt"))


def test_registry_folder_entry_reads_its_files_in_name_order_and_num_samples_takes_the_first(tmp_path):
    _jsonl(tmp_path / "parts" / "b.jsonl", [{"instruction": "b", "output": "2"}])
    _jsonl(tmp_path / "parts" / "a.jsonl", [{"instruction": "a", "output": "1"}, {"instruction": "a2", "output": "3"}])
    registry = _registry(tmp_path, {"parts": {"file_name": "parts"}, "two": {"file_name": "parts", "num_samples": 2}})
    parts, two = resolve_sources(["parts", "two"], registry, "alpaca", str(tmp_path), "data.datasets")
    assert [row["instruction"] for row in read_rows(parts)] == ["a", "a2", "b"]
    assert [row["instruction"] for row in read_rows(two)] == ["a", "a2"]


def test_hf_hub_url_entry_is_a_hub_source_and_reading_it_offline_says_so(tmp_path, hf):
    registry = _registry(tmp_path, {"remote": {"hf_hub_url": "someone/instructions", "subset": "en",
                                               "split": "validation", "folder": "v2", "file_name": "ignored.json"}})
    [source] = resolve_sources(["remote"], registry, "alpaca", str(tmp_path), "data.eval_datasets")
    assert (source.hub_id, source.path, source.kind()) == ("someone/instructions", "", "hub")
    assert (source.subset, source.split, source.folder) == ("en", "validation", "v2")
    with pytest.raises(LauncherError) as err:
        read_rows(source)
    text = err.value.paragraph()
    assert text.startswith("error: data.eval_datasets='remote' cannot be used.")
    assert "the hub data set someone/instructions (split validation, subset en, folder v2) could not be read" in text
    assert "Couldn't reach 'someone/instructions' on the Hub" in text and "Hugging Face cache" in text


@pytest.mark.parametrize("entry, reason", [
    ({"file_name": "d.json", "ranking": True}, "ranking: true marks preference pairs"),
    ({"file_name": "d.json", "columns": {"prompt": "q", "images": "images"}}, "multimodal (images)"),
    ({"file_name": "d.json", "columns": {"videos": "v"}}, "multimodal (videos)"),
    ({"file_name": "d.json", "columns": {"audios": "a"}}, "multimodal (audios)"),
    ({"file_name": "d.json", "columns": {"kto_tag": "label"}}, "KTO data set"),
    ({"file_name": "d.json", "columns": {"chosen": "c", "rejected": "r"}}, "preference pairs (chosen/rejected)"),
    ({"ms_hub_url": "AI-ModelScope/alpaca"}, "ms_hub_url loads from the ModelScope hub, which this launcher does not"),
    ({"script_url": "my_script"}, "script_url loads from a dataset loading script"),
    ({"cloud_file_name": "s3://bucket/d.json"}, "cloud_file_name loads from a cloud file"),
    ({"formatting": "sharegpt"}, "it has none of file_name, hf_hub_url"),
    ({"file_name": "d.json", "formatting": "pretrain"}, "formatting='pretrain' is not a data format"),
    ({"file_name": "d.json", "columns": {"answer": "a"}}, "columns has 'answer', which LLaMA-Factory does not define"),
    ({"file_name": "d.json", "tags": {"bot_tag": "bot"}}, "the known tags are: role_tag, content_tag"),
    ({"file_name": "d.json", "formating": "sharegpt"}, "LLaMA-Factory defines no key 'formating'"),
    ({"file_name": "missing.json"}, "file_name 'missing.json' does not exist"),
    ({"file_name": "d.json", "num_samples": -3}, "num_samples=-3 must be a positive whole number"),
])
def test_registry_entries_the_launcher_cannot_train_on_are_refused_with_the_reason(tmp_path, entry, reason):
    _jsonl(tmp_path / "d.json", [{"instruction": "a", "output": "b"}])
    text = _refusal({"entry": entry}, "entry", tmp_path)
    assert text.startswith("error: data.datasets='entry' cannot be used. registry entry 'entry':")
    assert reason in text and "\n" not in text


def test_an_unknown_name_lists_the_registry_entries(tmp_path):
    entries = {f"set{i:02d}": {"file_name": "d.json"} for i in range(25)}
    text = _refusal(entries, "set99", tmp_path)
    assert f"not an entry of the registry {tmp_path / 'dataset_info.json'}" in text
    assert "the registry holds: set00, set01," in text and "set19 and 5 more" in text and "set20" not in text


def test_registry_path_may_be_its_folder_and_bad_registries_are_refused_on_data_registry(tmp_path):
    _registry(tmp_path, {"a": {"file_name": "a.json"}})
    assert load_registry(".", str(tmp_path)) == ({"a": {"file_name": "a.json"}}, str(tmp_path))
    (tmp_path / "broken.json").write_text('{"a": {"file_name": }')
    (tmp_path / "list.json").write_text("[]")
    for path, problem in (("nope.json", "does not exist"),
                          ("broken.json", "is not valid JSON: line 1 column 21: Expecting value"),
                          ("list.json", "holds a JSON list, not an object")):
        with pytest.raises(LauncherError, match=problem) as err:
            load_registry(path, str(tmp_path))
        assert (err.value.field, err.value.value) == ("data.registry", path)


def test_plain_paths_take_the_default_format_and_owner_name_is_a_hub_id(tmp_path):
    _jsonl(tmp_path / "data" / "train.jsonl", [{"instruction": "a", "output": "b"}])
    local, hub = resolve_sources(["data/train.jsonl", "tatsu-lab/alpaca"], "", "sharegpt", str(tmp_path), "data.path")
    assert (local.path, local.formatting) == (str(tmp_path / "data/train.jsonl"), "sharegpt")
    assert local.config_field == "data.path"
    assert (hub.hub_id, hub.path, hub.formatting, hub.split) == ("tatsu-lab/alpaca", "", "sharegpt", "train")


@pytest.mark.parametrize("name", ["data/missing.json", "./owner/name", "just_a_word"])
def test_a_name_that_is_no_file_and_no_hub_id_is_refused(tmp_path, name):
    with pytest.raises(LauncherError, match="not a file or folder .* and not a hub id") as err:
        resolve_sources([name], "", "alpaca", str(tmp_path), "data.eval_path")
    assert (err.value.field, err.value.value) == ("data.eval_path", name)


def test_a_file_of_unknown_kind_or_a_folder_of_mixed_kinds_is_refused_naming_the_kinds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LauncherError, match=r"extension '\.txt'.*\.json \.jsonl \.parquet \.csv \.arrow"):
        resolve_sources(["notes.txt"], "", "alpaca", str(tmp_path), "data.datasets")
    _jsonl(tmp_path / "mixed" / "a.jsonl", [{"instruction": "a", "output": "1"}])
    (tmp_path / "mixed" / "b.csv").write_text("instruction,output\nb,2\n")
    with pytest.raises(LauncherError, match="several kinds: csv, json"):
        resolve_sources(["mixed"], "", "alpaca", str(tmp_path), "data.datasets")


def test_parquet_csv_and_arrow_files_give_the_json_files_rows(tmp_path, hf):
    rows = load_rows(default_data_path("alpaca"))
    data = hf.Dataset.from_list(rows)
    data.to_parquet(str(tmp_path / "alpaca.parquet"))
    data.to_csv(str(tmp_path / "alpaca.csv"), index=False)
    data.save_to_disk(str(tmp_path / "saved"))  # what LLaMA-Factory's "arrow" kind reads: the shards it writes
    os.rename(tmp_path / "saved" / "data-00000-of-00001.arrow", tmp_path / "alpaca.arrow")
    names = ["alpaca.parquet", "alpaca.csv", "alpaca.arrow"]
    parquet, csv, arrow = resolve_sources(names, "", "alpaca", str(tmp_path), "data.datasets")
    assert [s.kind() for s in (parquet, csv, arrow)] == ["parquet", "csv", "arrow"]
    assert read_rows(parquet) == rows and read_rows(arrow) == rows
    # CSV has no "absent": an empty input reads back as None, which the alpaca reader takes as no input
    assert [{k: row[k] or "" for k in ALPACA_FIELDS} for row in read_rows(csv)] == rows
    from launcher.data.selection import load_set
    from launcher.data.tokenization import build_examples, load_tokenizer

    tokenizer = load_tokenizer("")
    (from_json,) = resolve_sources([default_data_path("alpaca")], "", "alpaca", str(tmp_path), "data.path")
    expected = build_examples(tokenizer, load_set(from_json, 0)[0], 256)
    for source in (parquet, csv, arrow):  # the same tokens and labels, example by example
        assert build_examples(tokenizer, load_set(source, 0)[0], 256) == expected, source.kind()


def test_a_save_to_disk_folder_reads_as_its_arrow_shards(tmp_path, hf):
    rows = load_rows(default_data_path("alpaca"))[:50]
    hf.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    [source] = resolve_sources(["saved"], "", "alpaca", str(tmp_path), "data.datasets")
    assert source.kind() == "arrow" and len(source.files()) == 2
    assert read_rows(source) == rows


def test_a_corrupt_parquet_file_is_one_paragraph_naming_the_file(tmp_path, hf):
    (tmp_path / "bad.parquet").write_text("not parquet at all")
    [source] = resolve_sources(["bad.parquet"], "", "alpaca", str(tmp_path), "data.datasets")
    with pytest.raises(LauncherError) as err:
        read_rows(source)
    text = err.value.paragraph()
    assert f"{tmp_path / 'bad.parquet'} could not be read:" in text and "valid parquet file" in text
    assert "\n" not in text


def test_a_bad_json_row_in_a_registry_entry_names_the_entry_and_keeps_the_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    [source] = resolve_sources(["d"], _registry(tmp_path, {"d": {"file_name": "d.jsonl"}}), "alpaca",
                               str(tmp_path), "data.datasets")
    with pytest.raises(LauncherError, match=r"d\.jsonl: invalid JSON at line 2") as err:
        read_rows(source)
    assert (err.value.field, err.value.value) == ("data.datasets", "d")


def test_a_source_survives_plan_json_and_its_fingerprint_follows_the_file(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}])
    registry = _registry(tmp_path, {"d": {"file_name": "d.jsonl", "columns": {"prompt": "instruction"}}})
    [source] = resolve_sources(["d"], registry, "alpaca", str(tmp_path), "data.datasets")
    assert DataSource.from_dict(json.loads(json.dumps(source.to_dict()))) == source
    before = fingerprint(source)
    assert before["files"][0]["path"] == os.path.realpath(path) and before["kind"] == "json"
    _jsonl(path, [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}])
    assert fingerprint(source) != before
    hub = DataSource("o/n", hub_id="o/n", subset="en")
    assert fingerprint(hub) == {"kind": "hub", "hub_id": "o/n", "split": "train", "subset": "en", "folder": "",
                                "num_samples": 0}


def test_resolving_and_planning_do_not_import_datasets():
    code = ("import sys, launcher.data.sources, launcher.data.registry, launcher.data.mixing; "
            "print(sorted(m for m in ('datasets', 'pyarrow', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # `datasets` costs about a second: only reading such a source imports it


def test_no_weights_concatenate_in_file_order_and_weights_share_the_total_with_at_least_one_each():
    assert mix_counts([3, 2], []) == [3, 2]
    assert mixed_order([3, 2], [], seed=1) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert mix_counts([100, 300], [3, 1]) == [300, 100]
    assert mix_counts([5, 5], [1, 1]) == [5, 5]
    assert mix_counts([1, 1, 1], [1, 1, 1]) == [1, 1, 1]
    counts = mix_counts([10, 10, 10], [1, 1, 1000])
    assert counts == [1, 1, 28] and sum(counts) == 30
    assert mix_counts([7, 6], [0.5, 0.5]) == [7, 6]  # 6.5 each: the tie goes to the earlier set


def test_mixed_order_oversamples_with_whole_passes_and_undersamples_distinct_rows():
    pool = mixed_order([10, 40], [1, 1], seed=7)  # 25 samples from each
    assert pool == mixed_order([10, 40], [1, 1], seed=7) and pool != mixed_order([10, 40], [1, 1], seed=8)
    small = Counter(row for i, row in pool if i == 0)
    large = [row for i, row in pool if i == 1]
    assert sum(small.values()) == 25 and set(small) == set(range(10)) and set(small.values()) == {2, 3}
    assert len(large) == 25 and len(set(large)) == 25 and set(large) <= set(range(40))


def test_check_mix_wants_one_positive_weight_per_set():
    check_mix(["a", "b"], [])
    check_mix(["a", "b"], [0.7, 0.3])
    with pytest.raises(LauncherError, match="there are 3 weights for 2 data sets"):
        check_mix(["a", "b"], [1, 1, 1])
    with pytest.raises(LauncherError, match="0 is not") as err:
        check_mix(["a", "b"], [1, 0])
    assert err.value.field == "data.weights"


def test_a_fraction_holds_out_of_each_set_and_at_least_one_row_of_two():
    split = split_validation([100, 3, 1], 0.1, seed=3)
    assert [len(val) for _, val in split] == [10, 1, 0]
    for (train, val), size in zip(split, [100, 3, 1]):
        assert train == sorted(train) and val == sorted(val) and sorted(train + val) == list(range(size))
    assert split == split_validation([100, 3, 1], 0.1, seed=3) and split != split_validation([100, 3, 1], 0.1, seed=4)


def test_a_row_count_is_spread_in_proportion_to_the_sets():
    split = split_validation([300, 100], 40, seed=0)
    assert [len(val) for _, val in split] == [30, 10] and [len(train) for train, _ in split] == [270, 90]
    assert [len(val) for _, val in split_validation([5, 5, 5], 4.0, seed=0)] == [2, 1, 1]


@pytest.mark.parametrize("sizes, val_size, message", [
    ([300, 100], 500, "data.val_size=500 cannot be used. it asks for 500 validation rows but the training sets "
                      "hold 400 rows"),
    ([300, 100], 2.5, "a value of 1 or more is a row count and must be a whole number"),
    ([300, 100], 0, "it must be > 0"),
    ([300, 2], 0.9, "it leaves data set #2 (2 rows) with no training row"),
    ([1, 1000], 999, "it leaves data set #1 (1 rows) with no training row"),
])
def test_impossible_validation_splits_are_refused(sizes, val_size, message):
    with pytest.raises(LauncherError) as err:
        split_validation(sizes, val_size, seed=0)
    assert err.value.field == "data.val_size" and message in err.value.paragraph()


def test_the_launching_host_counts_usable_rows_logs_drops_once_and_names_a_separate_validation_set(tmp_path, caplog):
    from launcher.config.compose import compose
    from launcher.data.selection import describe, plan_sets

    good = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)]
    _jsonl(tmp_path / "train.jsonl", good[:8] + [{"instruction": "no answer"}, "not an object"])
    _jsonl(tmp_path / "held.jsonl", good[8:])
    info = _registry(tmp_path, {"train": {"file_name": "train.jsonl"}, "held": {"file_name": "held.jsonl"}})
    cfg, _ = compose([f"data.registry={info}", "data.datasets=[train]", "data.eval_datasets=[held]"])
    with caplog.at_level(logging.WARNING, logger="launcher"):
        train, evals = plan_sets(cfg.data, cfg.train.seed, str(tmp_path))
    assert [(s.source.name, s.rows, s.dropped, s.val_rows, s.samples) for s in train] == [("train", 8, 2, 0, 8)]
    assert [(s.source.name, s.rows) for s in evals] == [("held", 2)]
    assert caplog.text.count("data: dropped 2 of 10 rows of train: ") == 1
    assert describe(train, evals, []) == ["train: 8 rows (2 dropped)", "validation: held (2 rows)"]
