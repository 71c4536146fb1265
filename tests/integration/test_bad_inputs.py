"""Bad run dirs, data files and resume points, as a user types them: refused by the entry process before any rank
starts or anything is written (exit 2, one paragraph naming the field and the value, no traceback), leaving the run
dir exactly as it was, or not there at all."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from launcher.assets import default_data_path
from launcher.checkpoint.store import commit_save, prepare_save
from tests.conftest import REPO, launcher_env, read_metrics, run_launcher
from tests.integration.test_errors import assert_user_error

pytestmark = pytest.mark.integration

ENTRY_TIMEOUT_S = 120  # a refusal comes from the entry process in seconds; this only bounds a hang
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@dataclass
class Bad:
    """One bad input: the overrides, the run dir it must leave as it was, and what the paragraph must say."""

    overrides: list[str]
    run_dir: Path
    says: list[str]
    as_nobody: bool = False  # root may write anywhere: an unwritable directory needs another user


@dataclass
class Places:
    """Where a case builds its inputs: tmp_path, real tmpfs mounts, and a directory another user can enter."""

    tmp_path: Path
    mounts: list[Path] = field(default_factory=list)
    public: list[Path] = field(default_factory=list)

    def tmpfs(self, name: str, options: str) -> Path:
        where = self.tmp_path / name
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounts.append(where)
        return where

    def public_dir(self) -> Path:
        """Owned by root, mode 0755, outside pytest's 0700 tmp dirs: another user may enter it but not write."""
        where = Path(tempfile.mkdtemp(prefix="launcher-test-"))
        where.chmod(0o755)
        self.public.append(where)
        return where


@pytest.fixture
def places(tmp_path):
    made = Places(tmp_path)
    yield made
    for where in reversed(made.mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)
    for where in made.public:
        shutil.rmtree(where, ignore_errors=True)


def fill(disk: Path) -> None:
    """Write zeros until the filesystem says it is full."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def fake_checkpoint(run_dir: Path, step: int) -> None:
    """A complete checkpoint as the ranks commit one (the commit protocol, tiny files): enough to resume from."""
    root = run_dir / "checkpoints"
    tmp = root / prepare_save(root, step)
    tmp.mkdir(parents=True)
    (tmp / "mp_rank_00_model_states.pt").write_bytes(b"x" * 64)
    commit_save(root, step, {"world_size": 2}, keep_last=0)


def run_dir_is_a_file(places: Places) -> Bad:
    run_dir = places.tmp_path / "run"
    run_dir.write_text("notes, not a run\n")
    return Bad([f"run.dir={run_dir}"], run_dir, [f"run.dir='{run_dir}'", "is a regular file", "choose another run.dir"])


def run_dir_under_a_file(places: Places) -> Bad:
    (places.tmp_path / "runs").write_text("")
    run_dir = places.tmp_path / "runs" / "mine"
    return Bad([f"run.dir={run_dir}"], run_dir, [f"run.dir='{run_dir}'", "runs is a regular file"])


def run_dir_on_a_read_only_filesystem(places: Places) -> Bad:
    run_dir = places.tmpfs("ro", "ro,size=1m") / "run"
    return Bad([f"run.dir={run_dir}"], run_dir, [f"run.dir='{run_dir}'", "is on a read-only filesystem"])


def run_dir_on_a_full_disk(places: Places) -> Bad:
    disk = places.tmpfs("disk", "size=1m")
    run_dir = disk / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("an earlier launch's file\n")
    fill(disk)
    return Bad([f"run.dir={run_dir}"], run_dir, [f"run.dir='{run_dir}'", "is full: 0.0 MB free", "free disk space"])


def run_dir_not_writable_by_this_user(places: Places) -> Bad:
    started = subprocess.run([*AS_NOBODY, sys.executable, "-c", "pass"], capture_output=True, text=True) \
        if shutil.which("setpriv") else None
    if started is None or started.returncode != 0:
        pytest.skip(f"cannot run the launcher as another user here (setpriv): {started and started.stderr.strip()}")
    run_dir = places.public_dir() / "run"
    return Bad([f"run.dir={run_dir}"], run_dir, [f"run.dir='{run_dir}'", "is not writable by this user"],
               as_nobody=True)


def output_dir_is_a_file(places: Places) -> Bad:
    runs = places.tmp_path / "runs"
    runs.write_text("")
    return Bad([f"run.output_dir={runs}", "run.name=mine"], runs,
               [f"run.output_dir='{runs}'", f"so {runs}/mine cannot be created"])


def data_path_is_a_directory_of_notes(places: Places) -> Bad:
    data = places.tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("not rows\n")
    run_dir = places.tmp_path / "run"
    return Bad(["data=alpaca", f"data.path={data}", f"run.dir={run_dir}"], run_dir,
               [f"data.path='{data}'", "notes.txt has the extension '.txt', which is not a data file kind",
                ".json .jsonl .parquet .csv .arrow"])


def registry(places: Places, entries: dict) -> Path:
    """A dataset_info.json beside a copy of the shipped alpaca rows (data.jsonl)."""
    shutil.copy(default_data_path("alpaca"), places.tmp_path / "data.jsonl")
    path = places.tmp_path / "dataset_info.json"
    path.write_text(json.dumps(entries))
    return path


def registry_name_that_is_not_there(places: Places) -> Bad:
    info = registry(places, {"mine": {"file_name": "data.jsonl"}, "theirs": {"file_name": "data.jsonl"}})
    run_dir = places.tmp_path / "run"
    return Bad([f"data.registry={info}", "data.datasets=[mien]", f"run.dir={run_dir}"], run_dir,
               ["data.datasets='mien'", "the registry holds: mine, theirs"])


def registry_columns_naming_a_missing_key(places: Places) -> Bad:
    info = registry(places, {"mine": {"file_name": "data.jsonl", "columns": {"prompt": "question"}}})
    run_dir = places.tmp_path / "run"
    return Bad([f"data.registry={info}", "data.datasets=[mine]", f"run.dir={run_dir}"], run_dir,
               ["data.datasets='mine'", "none of its 400 rows is usable: 400 missing 'question' (rows 1, 2, 3, ...)"])


def registry_entry_of_a_kind_not_trained(places: Places) -> Bad:
    info = registry(places, {"pairs": {"file_name": "data.jsonl", "ranking": True}})
    run_dir = places.tmp_path / "run"
    return Bad([f"data.registry={info}", "data.datasets=[pairs]", f"run.dir={run_dir}"], run_dir,
               ["data.datasets='pairs'", "preference"])


def weights_that_do_not_match_the_sets(places: Places) -> Bad:
    info = registry(places, {"a": {"file_name": "data.jsonl"}, "b": {"file_name": "data.jsonl"}})
    run_dir = places.tmp_path / "run"
    return Bad([f"data.registry={info}", "data.datasets=[a,b]", "data.weights=[1.0]", f"run.dir={run_dir}"], run_dir,
               ["data.weights=[1.0]", "there are 1 weights for 2 data sets"])


def val_size_larger_than_the_set(places: Places) -> Bad:
    run_dir = places.tmp_path / "run"
    return Bad(["data.val_size=500", f"run.dir={run_dir}"], run_dir,
               ["data.val_size=500.0", "it asks for 500 validation rows but the training sets hold 400 rows"])


def eval_every_without_a_validation_set(places: Places) -> Bad:
    run_dir = places.tmp_path / "run"
    return Bad(["train.eval_every=5", f"run.dir={run_dir}"], run_dir,
               ["train.eval_every=5", "there is no validation set to score", "data.val_size"])


def data_path_is_empty(places: Places) -> Bad:
    data = places.tmp_path / "train.jsonl"
    data.write_bytes(b"")
    run_dir = places.tmp_path / "run"
    return Bad(["data=alpaca", f"data.path={data}", f"run.dir={run_dir}"], run_dir,
               [f"data.path='{data}'", "is empty (0 bytes)"])


def data_path_is_binary(places: Places) -> Bad:
    data = places.tmp_path / "train.jsonl"
    data.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8)  # a gzip header, then every byte value
    run_dir = places.tmp_path / "run"
    return Bad(["data=alpaca", f"data.path={data}", f"run.dir={run_dir}"], run_dir,
               [f"data.path='{data}'", "it is not UTF-8 text: byte 1 (0x8b, on line 1) cannot be decoded",
                "iconv -f"])


def data_path_is_latin1(places: Places) -> Bad:
    data = places.tmp_path / "train.jsonl"
    data.write_bytes('{"instruction": "Say hello", "output": "Grüß Gott"}\n'.encode("latin-1"))
    run_dir = places.tmp_path / "run"
    return Bad(["data=alpaca", f"data.path={data}", f"run.dir={run_dir}"], run_dir,
               [f"data.path='{data}'", "byte 42 (0xfc, on line 1) cannot be decoded",
                f"iconv -f <its encoding, e.g. latin1 or cp1252> -t utf-8 {data} > {data.with_suffix('.utf8.jsonl')}"])


def resume_step_on_a_fresh_run_dir(places: Places) -> Bad:
    run_dir = places.tmp_path / "run"
    return Bad(["run.resume=12345", f"run.dir={run_dir}"], run_dir,
               ["run.resume='12345'", "global_step12345: it does not exist", "holds no complete checkpoint"])


def resume_step_that_was_never_saved(places: Places) -> Bad:
    run_dir = places.tmp_path / "run"
    assert run_launcher(f"run.dir={run_dir}", "run.dry_run=true").returncode == 0
    fake_checkpoint(run_dir, 4)
    return Bad(["run.resume=12345", f"run.dir={run_dir}"], run_dir,
               ["run.resume='12345'", "global_step12345: it does not exist",
                f"complete checkpoints in {run_dir}/checkpoints: global step 4"])


def resume_path_that_does_not_exist(places: Places) -> Bad:
    run_dir = places.tmp_path / "run"
    return Bad(["run.resume=/no/such/path", f"run.dir={run_dir}"], run_dir,
               ["run.resume='/no/such/path'", "/no/such/path does not exist", "use auto, never, a global step number"])


def resume_word_that_is_not_a_choice(places: Places) -> Bad:
    run_dir = places.tmp_path / "run"
    return Bad(["run.resume=latest", f"run.dir={run_dir}"], run_dir,
               ["run.resume='latest'", "it is not auto, never or a global step number",
                "use auto, never, a global step number or the path of a checkpoint directory"])


def fp8_on_a_machine_without_a_gpu(places: Places) -> Bad:
    run_dir = places.tmp_path / "run"
    assert run_launcher(f"run.dir={run_dir}", "run.dry_run=true").returncode == 0
    fake_checkpoint(run_dir, 4)
    return Bad(["train.precision=fp8", f"run.dir={run_dir}"], run_dir,
               ["train.precision='fp8'", "FP8 matmuls need a CUDA GPU", "use train.precision=bf16 or fp32"])


CASES: dict[str, Callable[[Places], Bad]] = {case.__name__: case for case in (
    run_dir_is_a_file, run_dir_under_a_file, run_dir_on_a_read_only_filesystem, run_dir_on_a_full_disk,
    run_dir_not_writable_by_this_user, output_dir_is_a_file, data_path_is_a_directory_of_notes, data_path_is_empty,
    data_path_is_binary, data_path_is_latin1, registry_name_that_is_not_there, registry_columns_naming_a_missing_key,
    registry_entry_of_a_kind_not_trained, weights_that_do_not_match_the_sets, val_size_larger_than_the_set,
    eval_every_without_a_validation_set, resume_step_on_a_fresh_run_dir, resume_step_that_was_never_saved,
    resume_path_that_does_not_exist, resume_word_that_is_not_a_choice, fp8_on_a_machine_without_a_gpu,
)}


def snapshot(path: Path) -> object:
    """A path's whole state: None when absent, a file's bytes, or every entry under a directory with its bytes."""
    if not os.path.lexists(path):
        return None
    if not path.is_dir():
        return path.read_bytes()
    return {str(p.relative_to(path)): None if p.is_dir() else p.read_bytes() for p in sorted(path.rglob("*"))}


def run_as_nobody(*overrides: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AS_NOBODY, sys.executable, "-m", "launcher", *overrides], cwd=REPO,
                          env={**launcher_env(), "HOME": str(home)}, capture_output=True, text=True,
                          timeout=ENTRY_TIMEOUT_S)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_refused_before_any_rank_starts_and_leaves_the_run_dir_as_it_was(case, places):
    bad = case(places)
    before = snapshot(bad.run_dir)
    if bad.as_nobody:
        result = run_as_nobody(*bad.overrides, home=bad.run_dir.parent)
    else:
        result = run_launcher(*bad.overrides, timeout=ENTRY_TIMEOUT_S)
    assert_user_error(result, *bad.says)
    assert snapshot(bad.run_dir) == before
    assert "fresh start" not in result.stdout and "torch.distributed" not in result.stdout + result.stderr
    assert not (bad.run_dir / "logs").exists()


def test_utf16_copy_of_the_shipped_data_trains(tmp_path):
    """The entry's check and the ranks read it alike (the rows themselves: tests/unit/test_inputs.py)."""
    utf16 = tmp_path / "alpaca-utf16.json"
    utf16.write_bytes(Path(default_data_path("alpaca")).read_text(encoding="utf-8").encode("utf-16"))  # BOM first
    run_dir = tmp_path / "run"
    result = run_launcher("data=alpaca", f"data.path={utf16}", f"run.dir={run_dir}", "train.max_steps=2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2]
