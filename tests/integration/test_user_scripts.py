"""Bring your own script, for real: the examples in examples/ run as 2 CPU processes (gloo) through
`python -m launcher script=...`, and their DeepSpeed engines report the settings they actually run with, which must
be the rendered ds_config.json. Each training launch is shared by the tests that only read its outputs."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from launcher.checkpoint.store import latest_complete_any
from tests.conftest import REPO, kill_tree, run_launcher, start_launcher, wait_for
from tests.integration.test_errors import assert_user_error

pytestmark = pytest.mark.integration
SMALL = ("--seq_len", "128")
TRAINER_ARGS = ("--max_steps", "4", "--save_steps", "2", "--logging_steps", "1", *SMALL)
ACCELERATE_ARGS = ("--max_steps", "4", "--save_every", "2", *SMALL)


def engine_settings(run_dir: Path) -> dict:
    """The last `engine settings:` line the example printed on rank 0 (read from the engine, see launcher.tiny)."""
    lines = [line for line in (run_dir / "logs" / "rank0.log").read_text().splitlines() if "engine settings: " in line]
    assert lines, f"no engine settings in {run_dir}/logs/rank0.log"
    return json.loads(lines[-1].split("engine settings: ", 1)[1])


def assert_engine_ran_the_rendered_config(run_dir: Path, stage: int) -> dict:
    ds = json.loads((run_dir / "ds_config.json").read_text())
    engine = engine_settings(run_dir)
    assert engine["world_size"] == 2 and engine["zero_stage"] == ds["zero_optimization"]["stage"] == stage
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert engine[key] == ds[key], key
    assert '"auto"' not in (run_dir / "ds_config.json").read_text()
    return ds


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def trainer_zero3(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("trainer") / "run"
    result = run_launcher(f"run.dir={run_dir}", "+plan=zero3", "script=examples/train_trainer.py", "--", *TRAINER_ARGS)
    return result, run_dir


@pytest.fixture(scope="module")
def accelerate_zero3(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("accelerate") / "run"
    result = run_launcher(f"run.dir={run_dir}", "+plan=zero3", "script=examples/train_accelerate.py", "--",
                          *ACCELERATE_ARGS)
    return result, run_dir


@pytest.fixture(scope="module")
def plain_zero3(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    result = run_launcher(f"run.dir={run_dir}", "+plan=zero3", "script=examples/train_deepspeed.py", "--",
                          "--max_steps", "4", "--save_every", "2", *SMALL)
    return result, run_dir


def test_trainer_script_under_zero3_runs_the_rendered_config_and_saves_checkpoints(trainer_zero3):
    result, run_dir = trainer_zero3
    assert_ok(result)
    assert "script_api=hf_trainer (auto: line" in result.stdout
    ds = assert_engine_ran_the_rendered_config(run_dir, stage=3)
    assert "optimizer" not in ds and engine_settings(run_dir)["base_optimizer"] == "AdamW"  # the Trainer's own
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    launch = (run_dir / "launch.sh").read_text()
    for fragment in ("launcher.script.entry", "examples/train_trainer.py", f"{run_dir}/ds_config.json", "--use_cpu"):
        assert fragment in launch


def trainer_steps(run_dir: Path) -> list[tuple[float, float]]:
    """(loss, grad_norm) of each step the Trainer logged on rank 0."""
    log = (run_dir / "logs" / "rank0.log").read_text()
    return [(float(m[1]), float(m[2])) for m in re.finditer(r"\{'loss': '([\d.]+)', 'grad_norm': '([\d.]+)'", log)]


def test_trainer_script_under_sp_splits_each_sequence_over_two_ranks_and_trains_like_sp1(trainer_zero3, tmp_path):
    """+plan=sp plan.sp=2 on 2 CPU processes: the unchanged example gets accelerate's parallelism config from the
    launcher, the Trainer runs DeepSpeed's Ulysses (every batch split over both ranks, dp=1, the plan's global batch
    of 8 in 4 micro batches), saves, and its steps see the same batches as the sp=1 run: the losses and gradient norms
    agree up to the weighting (per micro batch under sp, per token over the step without). --pad_to_seq_len: gloo
    gathers only equal shapes."""
    run_dir = tmp_path / "run"
    result = run_launcher(f"run.dir={run_dir}", "+plan=sp", "plan.sp=2", "script=examples/train_trainer.py", "--",
                          *TRAINER_ARGS, "--pad_to_seq_len")
    assert_ok(result)
    assert "sequence parallel size 2" in result.stdout
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["sequence_parallel_size"] == 2 and "train_batch_size" not in ds
    engine = engine_settings(run_dir)
    assert (engine["world_size"], engine["zero_stage"], engine["train_batch_size"]) == (2, 3, 8)
    assert engine["gradient_accumulation_steps"] == ds["gradient_accumulation_steps"] == 4
    assert "PARALLELISM_CONFIG_SP_SIZE=2" in (run_dir / "launch.sh").read_text()
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    sp1, sp2 = trainer_steps(trainer_zero3[1]), trainer_steps(run_dir)
    assert len(sp1) == len(sp2) == 4, (sp1, sp2)
    for (loss1, norm1), (loss2, norm2) in zip(sp1, sp2):
        assert abs(loss1 - loss2) < 0.03 and abs(norm1 - norm2) < 0.15 * norm1, (sp1, sp2)


def accelerate_steps(run_dir: Path) -> list[tuple[float, float]]:
    """(loss, grad_norm) of each step the accelerate example printed on rank 0."""
    log = (run_dir / "logs" / "rank0.log").read_text()
    return [(float(m[1]), float(m[2])) for m in re.finditer(r"^step \d+ loss ([\d.]+) grad_norm ([\d.]+)$", log, re.M)]


def test_accelerate_script_under_zero3_runs_the_rendered_config_and_saves_checkpoints(accelerate_zero3):
    result, run_dir = accelerate_zero3
    assert_ok(result)
    assert "script_api=accelerate (auto: line" in result.stdout and "sequence parallel size 1" in result.stdout
    ds = assert_engine_ran_the_rendered_config(run_dir, stage=3)
    assert "optimizer" not in ds and engine_settings(run_dir)["base_optimizer"] == "AdamW"  # the script's own
    assert "parallelism_config" not in (run_dir / "accelerate_config.yaml").read_text()
    assert latest_complete_any(run_dir / "checkpoints").path.name == "global_step4"
    assert (run_dir / "checkpoints" / "global_step2" / "complete.json").exists()
    assert len(accelerate_steps(run_dir)) == 4


def test_accelerate_script_under_sp_splits_each_sequence_over_two_ranks_and_trains_like_sp1(accelerate_zero3,
                                                                                             tmp_path):
    """+plan=sp plan.sp=2 on 2 CPU processes: accelerate reads the yaml's parallelism_config and sets up Ulysses (dp=1,
    the plan's global batch of 8 in 4 micro batches, each split over both ranks), and each step's loss and gradient
    norm equal the zero3 run's (dp=2, 2 micro batches). On CPU accelerate counts one process per rank and does not
    shard the loader (ENGINE_NOTES.md), so both runs train each step on the same 4 rows, each seen twice. Printed to 4
    decimals, they agree to ~1e-8 before rounding: 2e-4 leaves room for the rounding and catches a wrong gradient
    scale over the sp group (it halves the norm; clipping then hides it from the loss) or a missed accumulation
    (the second step's loss moves by 0.4)."""
    run_dir = tmp_path / "run"
    result = run_launcher(f"run.dir={run_dir}", "+plan=sp", "plan.sp=2", "script=examples/train_accelerate.py", "--",
                          *ACCELERATE_ARGS)
    assert_ok(result)
    assert "sequence parallel size 2" in result.stdout
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["sequence_parallel_size"] == 2 and ds["train_batch_size"] == 8  # accelerate keeps it (dp from the yaml)
    engine = engine_settings(run_dir)
    assert (engine["world_size"], engine["zero_stage"], engine["train_batch_size"]) == (2, 3, 8)
    assert engine["gradient_accumulation_steps"] == ds["gradient_accumulation_steps"] == 4
    assert "parallelism_config_sp_size: 2" in (run_dir / "accelerate_config.yaml").read_text()
    assert latest_complete_any(run_dir / "checkpoints").path.name == "global_step4"
    sp1, sp2 = accelerate_steps(accelerate_zero3[1]), accelerate_steps(run_dir)
    assert len(sp1) == len(sp2) == 4, (sp1, sp2)
    for (loss1, norm1), (loss2, norm2) in zip(sp1, sp2):
        assert abs(loss1 - loss2) <= 2e-4 and abs(norm1 - norm2) <= 2e-4, (sp1, sp2)


def test_a_plain_deepspeed_script_under_sp_is_refused_before_anything_starts(tmp_path):
    run_dir = tmp_path / "run"
    result = run_launcher(f"run.dir={run_dir}", "+plan=sp", "plan.sp=2", "script=examples/train_deepspeed.py", "--",
                          "--max_steps", "2")
    assert_user_error(result, "plan.sp=2 cannot be used", "a plain DeepSpeed script cannot get Ulysses sequence "
                      "parallel from ds_config.json", "the built-in job (no script=) with +plan=sp",
                      "script_api=hf_trainer|accelerate")
    assert not run_dir.exists()


def test_plain_deepspeed_script_under_zero3_reads_the_launcher_environment(plain_zero3):
    result, run_dir = plain_zero3
    assert_ok(result)
    assert "script_api=plain" in result.stdout
    ds = assert_engine_ran_the_rendered_config(run_dir, stage=3)
    assert ds["optimizer"]["type"] == "AdamW" and engine_settings(run_dir)["base_optimizer"] == "AdamW"
    latest = latest_complete_any(run_dir / "checkpoints")
    assert latest is not None and latest.path.name == "global_step4"
    assert (run_dir / "checkpoints" / "global_step2" / "complete.json").exists()


def test_trainer_killed_mid_run_resumes_from_the_newest_complete_checkpoint_skipping_a_truncated_one(tmp_path):
    run_dir = tmp_path / "run"
    command = (f"run.dir={run_dir}", "+plan=zero2", "script=examples/train_trainer.py", "--", "--max_steps", "12",
               "--save_steps", "2", "--logging_steps", "1", *SMALL)
    first = start_launcher(*command, log=tmp_path / "first.out")
    ckpts = run_dir / "checkpoints"
    try:
        assert wait_for(lambda: (ckpts / "checkpoint-4" / "trainer_state.json").exists(), first, timeout=300), \
            (tmp_path / "first.out").read_text()[-4000:]
    finally:
        kill_tree(first)
    complete = sorted((c.global_step, c.path) for c in [latest_complete_any(ckpts, warn=lambda _m: None)] if c)
    newest_step, newest = complete[-1]
    assert 4 <= newest_step < 12, "the run was not killed mid-run"
    weights = newest / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)

    again = run_launcher(*command)
    assert_ok(again)
    assert f"warning: skipping checkpoint {newest}: file model.safetensors is truncated" in again.stderr
    resumed = ckpts / f"checkpoint-{newest_step - 2}"
    assert f"the script resumes from {resumed}" in again.stdout
    assert f"training from global step {newest_step - 2}" in again.stdout
    assert json.loads((ckpts / "checkpoint-12" / "trainer_state.json").read_text())["global_step"] == 12
    assert_engine_ran_the_rendered_config(run_dir, stage=2)


CRASH_ONCE = """
import os, runpy, sys
from pathlib import Path

marker = Path(os.environ["LAUNCHER_RUN_DIR"]) / "crashed-once"
first = not marker.exists()
if first:
    sys.argv += ["--max_steps", "2"]  # the first attempt trains and saves 2 steps, then crashes
runpy.run_path({example!r}, run_name="__main__")
if first:
    if os.environ["RANK"] == "0":
        marker.touch()
    sys.exit(9)
"""


def test_plain_script_under_zero2_crashes_restarts_and_resumes_from_its_newest_checkpoint(tmp_path):
    """run.max_restarts applies to a script: the same command starts again and the script gets
    LAUNCHER_RESUME_FROM with the checkpoint its crashed attempt left."""
    script = tmp_path / "crash_once.py"
    script.write_text(CRASH_ONCE.format(example=str(REPO / "examples" / "train_deepspeed.py")))
    run_dir = tmp_path / "run"
    result = run_launcher(f"run.dir={run_dir}", "+plan=zero2", f"script={script}", "run.max_restarts=1",
                          "run.restart_backoff_s=0", "--", "--max_steps", "4", "--save_every", "2", *SMALL)
    assert_ok(result)
    out = result.stdout + result.stderr
    assert "script_api=plain" in out and "restart 1/1" in out and "exited with code 9" in out
    assert f"the script resumes from {run_dir}/checkpoints/global_step2 (LAUNCHER_RESUME_FROM)" in out
    assert "training from global step 2" in result.stdout
    assert latest_complete_any(run_dir / "checkpoints").path.name == "global_step4"
    assert_engine_ran_the_rendered_config(run_dir, stage=2)


def test_a_script_failing_on_one_rank_is_reported_with_its_rank_and_last_lines(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(
        "import os, sys, time\n"
        "rank = int(os.environ['RANK'])\n"
        "e = os.environ\n"
        "print('rank', rank, 'of', e['WORLD_SIZE'], 'at', e['MASTER_ADDR'], e['MASTER_PORT'], 'run',"
        " e['LAUNCHER_RUN_DIR'], 'resume', repr(e['LAUNCHER_RESUME_FROM']), flush=True)\n"
        "log = os.path.join(e['LAUNCHER_RUN_DIR'], 'logs', 'rank0.log')\n"
        "while rank == 1 and not (os.path.exists(log) and 'rank 0 of' in open(log).read()):\n"
        "    time.sleep(0.1)  # rank 0's line is in its log before rank 1 fails and the job is torn down\n"
        "if rank == 1:\n"
        "    print('loading shard 7 failed: boom from rank 1', file=sys.stderr)\n"
        "    sys.exit(3)\n"
        "time.sleep(60)\n")
    run_dir = tmp_path / "run"
    result = run_launcher(f"run.dir={run_dir}", f"script={script}", "preflight=skip")
    assert result.returncode == 1, result.stderr[-3000:]
    err = result.stderr
    assert "rank 1 (on" in err and "exited with code 3" in err and "boom from rank 1" in err
    assert f"The last lines of {run_dir}/logs/rank1.log" in err
    rank0 = (run_dir / "logs" / "rank0.log").read_text()
    assert "rank 0 of 2 at" in rank0 and f"run {run_dir} resume ''" in rank0


def test_dry_run_shows_the_command_and_a_conflicting_argument_stops_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    dry = run_launcher(f"run.dir={run_dir}", "script=examples/train_trainer.py", "run.dry_run=true", "--",
                       "--max_steps", "3")
    assert_ok(dry)
    assert "nothing launched" in dry.stdout and "--per_device_train_batch_size 2" in dry.stdout
    assert "; 3 steps (the script's --max_steps)" in dry.stdout  # not train.max_steps: the script decides
    assert "optimizer" not in json.loads((run_dir / "ds_config.json").read_text())
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    bad = run_launcher(f"run.dir={run_dir}", "script=examples/train_trainer.py", "--",
                       "--max_steps", "3", "--per_device_train_batch_size", "4")
    assert_user_error(bad, "train.micro_batch_size=2", "the script argument --per_device_train_batch_size 4",
                      "plan's --per_device_train_batch_size 2", "set train.micro_batch_size=4")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
