"""A clean console on a terminal: one interactive run with wandb on, a checkpoint saved mid-run and data longer than
train.seq_len (and than the tokenizer's own maximum)."""
from __future__ import annotations

import json
import re

import pytest

from launcher.assets import default_data_path
from tests.conftest import launcher_env
from tests.integration.test_ux import run_in_pty

pytestmark = pytest.mark.integration
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_terminal_shows_bar_log_lines_and_counts_without_wandb_or_tokenizer_noise(tmp_path):
    run_dir, data = tmp_path / "run", tmp_path / "data.jsonl"
    long = " ".join(f"word{i}" for i in range(3000))  # more tokens than the tokenizer's model_max_length (2048)
    rows = [{"instruction": "Summarize.", "input": "", "output": long}, {"instruction": long, "input": "", "output": "ok"}]
    data.write_text(open(default_data_path("alpaca")).read() + "".join(json.dumps(r) + "\n" for r in rows))
    env = {**launcher_env(), "COLUMNS": "160", "WANDB_MODE": "offline", "LAUNCHER_CACHE_DIR": str(tmp_path / "cache")}
    screen = run_in_pty(f"run.dir={run_dir}", "train.max_steps=6", "train.save_every=3", "train.seq_len=32",
                        f"data.path={data}", "logging.wandb.mode=offline", env=env)
    lines = [line for line in re.split(r"[\r\n]", ANSI.sub("", screen)) if line.strip()]
    assert "run tiny-full-zero2 finished with exit code 0" in screen and "Traceback" not in screen

    saved = [line for line in lines if "saved checkpoint" in line]  # above the bar, not glued to its end
    assert [line.split(" in ")[0] for line in saved] == [f"saved checkpoint {run_dir}/checkpoints/global_step{s}"
                                                         for s in (3, 6)]

    for shown in (screen, *(p.read_text(errors="replace") for p in (run_dir / "logs").rglob("*") if p.is_file())):
        assert "Token indices sequence length" not in shown and "longer than the specified maximum" not in shown
    count = [line for line in lines if "examples were longer than train.seq_len=32" in line]
    assert len(count) == 1 and re.fullmatch(
        re.escape(str(data)) + r": (\d+) of 402 examples were longer than train.seq_len=32: (\d+) truncated, 1 dropped \(no answer token left\)",
        count[0])

    assert not [line for line in lines if "wandb:" in line]  # wandb's banner and history stay in its files
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert any(line.startswith(f"Weights & Biases: offline run in {offline[0]} ") for line in lines)
    assert b"tokens_per_s" in next(offline[0].glob("run-*.wandb")).read_bytes()  # the history is in the record
