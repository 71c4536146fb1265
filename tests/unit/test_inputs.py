"""The entry's checks of run dirs, resume points and data file encodings, and the rank-side reader they share."""
from __future__ import annotations

import codecs
import json
import logging
import os
from pathlib import Path

import pytest

from launcher.assets import default_data_path
from launcher.checkpoint.store import COMPLETE, TRAINER_STATE, commit_save, prepare_save
from launcher.errors import LauncherError
from launcher.config.inputs import check_resume, check_run_dir
from launcher.data.formats import load_conversations, load_rows


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(LauncherError) as caught:
        call(*args, **kwargs)
    return caught.value.paragraph()


def save(run_dir: Path, step: int) -> Path:
    root = run_dir / "checkpoints"
    tmp = root / prepare_save(root, step)
    tmp.mkdir(parents=True)
    (tmp / "model.pt").write_bytes(b"x" * 10)
    return commit_save(root, step, {"world_size": 1}, keep_last=0).path


def trainer_checkpoint(run_dir: Path, step: int) -> Path:
    path = run_dir / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    return path


# --- run dir -------------------------------------------------------------------------------------------------------

def test_a_new_run_dir_under_a_writable_directory_passes_and_is_not_created(tmp_path):
    check_run_dir(tmp_path / "a" / "b" / "run")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_run_dir_passes(tmp_path):
    check_run_dir(tmp_path)


def test_a_run_dir_that_is_a_file_names_the_file(tmp_path):
    (tmp_path / "run").write_text("")
    paragraph = refusal(check_run_dir, tmp_path / "run")
    assert f"run.dir='{tmp_path}/run' cannot be used. {tmp_path}/run is a regular file" in paragraph


def test_a_run_dir_below_a_file_names_the_file_and_the_field_it_came_from(tmp_path):
    (tmp_path / "runs").write_text("")
    paragraph = refusal(check_run_dir, tmp_path / "runs" / "mine", "run.output_dir", "runs")
    assert f"run.output_dir='runs' cannot be used. {tmp_path}/runs is a regular file, so {tmp_path}/runs/mine" \
        in paragraph and "choose another run.output_dir" in paragraph


def test_a_run_dir_that_is_a_dangling_link_is_named(tmp_path):
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    assert f"is a link to {tmp_path}/gone, which does not exist" in refusal(check_run_dir, tmp_path / "run")


# --- run.resume ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resume", ["auto", "never"])
def test_auto_and_never_pass_on_a_fresh_run_dir(tmp_path, resume):
    check_resume(resume, tmp_path / "run")


def test_a_step_with_a_complete_checkpoint_passes(tmp_path):
    save(tmp_path, 4)
    check_resume("4", tmp_path)


def test_a_step_never_saved_lists_the_steps_there_are(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 4)
    paragraph = refusal(check_resume, "6", tmp_path)
    assert "run.resume='6' cannot be used" in paragraph and "global_step6: it does not exist" in paragraph
    assert f"complete checkpoints in {tmp_path}/checkpoints: global step 2, 4" in paragraph


def test_a_step_whose_save_was_interrupted_is_refused(tmp_path):
    (save(tmp_path, 4) / COMPLETE).unlink()
    paragraph = refusal(check_resume, "4", tmp_path)
    assert "global_step4: no completion marker (the save was interrupted)" in paragraph
    assert "holds no complete checkpoint" in paragraph


def test_a_relative_path_is_resolved_against_the_launch_directory(tmp_path):
    save(tmp_path / "old", 3)
    check_resume("old/checkpoints/global_step3", tmp_path / "run", cwd=str(tmp_path))
    assert "does not exist" in refusal(check_resume, "old/checkpoints/global_step3", tmp_path / "run", cwd="/")


def test_a_word_that_is_not_a_choice_names_the_choices(tmp_path):
    paragraph = refusal(check_resume, "latest", tmp_path, cwd=str(tmp_path))
    assert "run.resume='latest' cannot be used. it is not auto, never or a global step number" in paragraph
    assert "use auto, never, a global step number or the path of a checkpoint directory" in paragraph


def test_a_path_to_a_file_is_refused(tmp_path):
    (tmp_path / "ckpt").write_text("")
    assert f"{tmp_path}/ckpt is not a directory" in refusal(check_resume, str(tmp_path / "ckpt"), tmp_path)


def test_a_script_may_resume_from_a_whole_trainer_checkpoint_but_the_built_in_worker_may_not(tmp_path):
    path = trainer_checkpoint(tmp_path, 10)
    check_resume(str(path), tmp_path, script=True)
    check_resume("10", tmp_path, script=True)
    assert "which only a script= run resumes from" in refusal(check_resume, str(path), tmp_path)


def test_a_trainer_checkpoint_cut_short_is_refused_for_a_script(tmp_path):
    path = trainer_checkpoint(tmp_path, 10)
    (path / TRAINER_STATE).unlink()
    paragraph = refusal(check_resume, str(path), tmp_path, script=True)
    assert f"{path}: no {TRAINER_STATE} (the save was interrupted)" in paragraph


# --- data file encodings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
                                      "utf-32-be"])
def test_a_data_file_with_a_byte_order_mark_reads_as_the_same_rows_as_utf8(tmp_path, encoding):
    original = Path(default_data_path("alpaca"))
    copy = tmp_path / "data.json"
    text = original.read_text(encoding="utf-8")
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE, "utf-32-le": codecs.BOM_UTF32_LE,
           "utf-32-be": codecs.BOM_UTF32_BE}.get(encoding, b"")
    copy.write_bytes(bom + text.encode(encoding))
    assert load_conversations(str(copy), "alpaca") == load_conversations(str(original), "alpaca")


def test_a_latin1_file_names_the_first_undecodable_byte_and_how_to_convert_it(tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "café", "output": "ok"}]
    data.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
    offset = data.read_bytes().index(b"\xe9")
    paragraph = refusal(load_rows, str(data))
    assert f"it is not UTF-8 text: byte {offset} (0xe9, on line 2) cannot be decoded" in paragraph
    assert f"iconv -f <its encoding, e.g. latin1 or cp1252> -t utf-8 {data} > {tmp_path}/data.utf8.jsonl" in paragraph


def test_utf16_without_a_byte_order_mark_is_named_as_such(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(json.dumps({"instruction": "a", "output": "b"}).encode("utf-16-le"))
    paragraph = refusal(load_rows, str(data))
    assert "byte 1 (0x00, on line 1) is a NUL" in paragraph and "iconv -f utf-16le -t utf-8" in paragraph


def test_a_bad_utf16_sequence_is_located_after_the_byte_order_mark(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(codecs.BOM_UTF16_LE + '{"a": 1}\n'.encode("utf-16-le") + b"\x00\xd8\x41\x00")  # lone surrogate
    assert "it is not UTF-16-LE text: byte 20 (0x00, on line 2) cannot be decoded" in refusal(load_rows, str(data))


def test_a_line_separator_inside_a_string_does_not_split_a_jsonl_row(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"instruction": "one\u2028two", "output": "b"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert load_conversations(str(data), "alpaca")[0].messages[0]["content"] == "one\u2028two"


def test_malformed_rows_in_a_utf16_file_are_still_named_by_row(tmp_path, caplog):
    data = tmp_path / "data.jsonl"
    text = json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c"}) + "\n"
    data.write_bytes(text.encode("utf-16"))
    with caplog.at_level(logging.WARNING):
        assert len(load_conversations(str(data), "alpaca")) == 1
    assert f"data: dropped 1 of 2 rows of {data}: 1 missing 'output' (row 2)" in caplog.text


def test_an_empty_or_blank_file_is_named_empty(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(codecs.BOM_UTF8 + b"\n \n")
    assert "the file is empty" in refusal(load_rows, str(data))
    assert os.path.getsize(data) > 0
