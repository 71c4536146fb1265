"""Which checkpoint a run resumes from: only complete and intact ones, the newest first, partial ones named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.checkpoint.store import COMPLETE, commit_save, latest_complete, prepare_save, prune, resolve_resume
from launcher.errors import LauncherError


def save(root: Path, step: int, payload: bytes = b"x" * 100, keep_last: int = 0) -> Path:
    tmp = root / prepare_save(root, step)
    tmp.mkdir(parents=True)
    (tmp / "model.pt").write_bytes(payload)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "optim.pt").write_bytes(payload * 2)
    return commit_save(root, step, {"world_size": 2}, keep_last).path


def test_commit_renames_marks_complete_and_updates_latest_last(tmp_path):
    path = save(tmp_path, 4)
    assert path.name == "global_step4" and not (tmp_path / ".tmp-global_step4").exists()
    meta = json.loads((path / COMPLETE).read_text())
    assert meta["global_step"] == 4 and meta["files"] == {"model.pt": 100, "sub/optim.pt": 200}
    assert (tmp_path / "latest").read_text() == "global_step4"


def test_interrupted_save_is_invisible_and_previous_checkpoint_is_used(tmp_path):
    save(tmp_path, 4)
    (tmp_path / ".tmp-global_step6").mkdir()
    (tmp_path / ".tmp-global_step6" / "model.pt").write_bytes(b"half")
    assert latest_complete(tmp_path).global_step == 4


def test_partial_truncated_or_missing_files_are_skipped_with_a_warning_naming_them(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 4)
    six = save(tmp_path, 6)
    eight = save(tmp_path, 8)
    (eight / COMPLETE).unlink()  # renamed but never marked complete
    (six / "sub" / "optim.pt").write_bytes(b"x" * 10)  # truncated shard
    (tmp_path / "global_step4" / "model.pt").unlink()  # deleted shard
    warnings: list[str] = []
    assert latest_complete(tmp_path, warn=warnings.append).global_step == 2
    assert "global_step8: no completion marker" in warnings[0]
    assert "global_step6: file sub/optim.pt is truncated (10 of 200 bytes)" in warnings[1]
    assert "global_step4: file model.pt is missing" in warnings[2]


def test_retention_keeps_the_last_k_and_never_the_latest(tmp_path):
    for step in (2, 4, 6, 8):
        save(tmp_path, step, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("global_step*")) == ["global_step6", "global_step8"]
    prune(tmp_path, 1, keep=tmp_path / "global_step8")
    assert [p.name for p in tmp_path.glob("global_step*")] == ["global_step8"]


def test_resave_of_a_step_replaces_an_unmarked_directory(tmp_path):
    path = save(tmp_path, 4)
    (path / COMPLETE).unlink()
    assert save(tmp_path, 4, payload=b"y" * 50) == path and latest_complete(tmp_path).global_step == 4


def test_resume_modes(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 4)
    assert resolve_resume(tmp_path, "never") is None
    assert resolve_resume(tmp_path, "auto").global_step == 4
    assert resolve_resume(tmp_path, "2").global_step == 2
    assert resolve_resume(tmp_path, str(tmp_path / "global_step2")).global_step == 2


@pytest.mark.parametrize("value", ["7", "/no/such/global_step3"])
def test_resume_from_a_missing_checkpoint_names_it(tmp_path, value):
    save(tmp_path, 2)
    with pytest.raises(LauncherError) as err:
        resolve_resume(tmp_path, value)
    assert err.value.field == "run.resume" and "does not exist" in err.value.paragraph()
