"""The start-of-run summary says what will run: the built-in job trains train.max_steps, a user script its own steps."""
from __future__ import annotations

import pytest

from launcher.config.compose import compose
from launcher.plan.hardware import Hardware
from launcher.plan.types import Plan
from launcher.plan.resolve import resolve
from launcher.render.launch import LaunchSpec
from launcher.script.launch import Script
from launcher.launch.summary import summary_lines

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
SPEC = LaunchSpec(argv=("python", "-m", "torch.distributed.run"))


@pytest.fixture(scope="module")
def plan() -> Plan:
    cfg, _ = compose(["train.max_steps=40"])
    return resolve(cfg, CPU, run_dir="/runs/x", run_name="x")


def batch_line(plan: Plan, script: Script | None) -> str:
    lines = [line for line in summary_lines(plan, SPEC, None, script) if line.startswith("batch ")]
    assert len(lines) == 1
    return lines[0]


def test_the_built_in_job_shows_train_max_steps(plan):
    assert batch_line(plan, None) == "batch      global 8 = micro 2 x dp 2 x accum 2; seq 256; 40 steps"


@pytest.mark.parametrize("args, shown", [
    (("--max_steps", "20", "--save_every", "10"), "20 steps (the script's --max_steps)"),
    (("--seq_len", "128", "--max_steps=7"), "7 steps (the script's --max_steps)"),
    (("--num_train_epochs", "3"), "steps: decided by the script (train.max_steps is not passed to it)"),
    (("--max_steps", "-1"), "steps: decided by the script (train.max_steps is not passed to it)"),  # Trainer: epochs
])
def test_a_script_run_shows_the_scripts_own_steps_not_train_max_steps(plan, args, shown):
    line = batch_line(plan, Script(path="/work/train.py", args=args))
    assert line == f"batch      global 8 = micro 2 x dp 2 x accum 2; seq: the script's; {shown}"


def test_a_script_run_says_its_model_and_sequence_are_its_own(plan):
    """The batch arithmetic and the DeepSpeed config are handed to the script; its model and sequence length are
    its own, so those lines say so instead of showing the launcher's tiny model as if the script trained it."""
    builtin = summary_lines(plan, SPEC, None)
    script = summary_lines(plan, SPEC, None, Script(path="/work/train.py", args=("--max_steps", "20")))
    changed = [b for a, b in zip(builtin, script) if a != b]
    assert [line.split()[0] for line in changed] == ["model", "batch"]
    assert changed[0].startswith("model      the script's own (the memory estimate is for the launcher's model "
                                 "config: tiny (built from config), method full,")
