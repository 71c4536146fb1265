"""A clean console: log lines print above the live bar, the launcher counts what train.seq_len cuts instead of the
tokenizer's warning, the summary and plan.json say what runs, and --help says how many processes run here."""
from __future__ import annotations

import io
import logging
import re

import pytest
from rich.console import Console

from launcher.config.catalog import help_text
from launcher.config.compose import compose
from launcher.plan.hardware import Hardware
from launcher.plan.types import Plan
from launcher.plan.resolve import resolve
from launcher.render.launch import LaunchSpec
from launcher.launch.summary import plan_table, summary_lines
from launcher.train.metrics import StepMetrics
from launcher.train.progress import Progress
from launcher.data.tokenization import build_examples, load_tokenizer

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
H200x2 = Hardware("cuda", 2, "NVIDIA H200", 139.8, "9.0", True, 32, 256.0, "x86_64")
SPEC = LaunchSpec(argv=("python", "-m", "torch.distributed.run"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen_lines(text: str) -> list[str]:
    """What a terminal shows line by line: escape sequences removed, carriage returns start a line again."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", text)) if line.strip()]


def plan_for(*overrides: str, hw: Hardware = CPU) -> Plan:
    cfg, _ = compose(list(overrides))
    return resolve(cfg, hw, run_dir="/runs/x", run_name="x")


@pytest.fixture
def console_handler():
    """Rank 0's console handler as worker.setup_logging installs it, on a terminal that records what it shows."""
    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)
    launcher_log = logging.getLogger("launcher")
    launcher_log.addHandler(handler)
    launcher_log.setLevel(logging.INFO)
    yield handler, terminal
    launcher_log.removeHandler(handler)


def test_a_log_line_during_the_live_bar_prints_on_its_own_line_above_it(console_handler):
    handler, terminal = console_handler
    console = Console(file=terminal, force_terminal=True, width=100)
    progress = Progress(max_steps=4, start_step=0, log_every=1, line=lambda m: f"step {m.step}", tty=True,
                        console=console)
    progress.update(StepMetrics(step=2, loss=1.5, lr=1e-3, grad_norm=1.0, tokens=64, tokens_per_s=100.0,
                                step_time_s=0.1, time=0.0))
    progress.bar.refresh()  # the bar is drawn: the cursor sits at the end of its line
    logging.getLogger("launcher").info("saved checkpoint /runs/x/checkpoints/global_step2 in 0.1 s")
    progress.update(StepMetrics(step=4, loss=1.2, lr=1e-3, grad_norm=1.0, tokens=64, tokens_per_s=100.0,
                                step_time_s=0.1, time=0.0))
    progress.close()
    shown = screen_lines(terminal.getvalue())
    saved = [line for line in shown if "saved checkpoint" in line]
    assert saved == ["saved checkpoint /runs/x/checkpoints/global_step2 in 0.1 s"]
    assert any("4/4" in line for line in shown[shown.index(saved[0]):])  # the bar goes on below it
    assert handler.stream is terminal  # once the bar is gone, the handler writes to the terminal again
    logging.getLogger("launcher").info("done")
    assert terminal.getvalue().endswith("done\n")


def test_without_a_terminal_the_console_handler_is_left_as_it_is(console_handler):
    handler, terminal = console_handler
    progress = Progress(max_steps=4, start_step=0, log_every=2, line=lambda m: f"step {m.step}/4", tty=False)
    progress.update(StepMetrics(step=2, loss=1.5, lr=1e-3, grad_norm=1.0, tokens=64, tokens_per_s=100.0,
                                step_time_s=0.1, time=0.0))
    progress.close()
    assert handler.stream is terminal and terminal.getvalue() == "step 2/4\n"


def _chat(user: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_over_long_examples_are_counted_by_the_launcher_not_warned_about_by_the_tokenizer(caplog, capfd):
    tokenizer = load_tokenizer("")  # a fresh one: transformers warns once per tokenizer
    long = " ".join(f"word{i}" for i in range(3000))
    conversations = [_chat("Q", "short"), _chat("Q", long), _chat(long, "A"), _chat("Hi", "there")]
    assert len(tokenizer(long, verbose=False)["input_ids"]) > tokenizer.model_max_length  # what makes transformers warn
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="launcher"):
        examples = build_examples(tokenizer, conversations, seq_len=32)
    assert len(examples) == 3
    assert [r.getMessage() for r in caplog.records] == [
        "2 of 4 examples were longer than train.seq_len=32: 1 truncated, 1 dropped (no answer token left)"]
    out, err = capfd.readouterr()
    assert "longer than the specified maximum" not in out + err and "Token indices" not in out + err


def test_examples_within_seq_len_log_no_count(caplog):
    with caplog.at_level(logging.INFO, logger="launcher"):
        build_examples(load_tokenizer(""), [_chat("Q", "A")], seq_len=32)
    assert "examples were longer" not in caplog.text


def test_plan_records_no_liger_kernels_on_a_cpu_and_liger_kernels_on_a_gpu():
    on_cpu = plan_for()
    assert not on_cpu.model.liger_kernel and not on_cpu.model.liger_fused_loss
    assert '"liger_kernel": false' in on_cpu.to_json()
    assert "liger" not in summary_lines(on_cpu, SPEC, None)[3]
    on_gpu = plan_for("model=llama3_2_3b", hw=H200x2)
    assert on_gpu.model.liger_kernel and on_gpu.model.liger_fused_loss
    assert summary_lines(on_gpu, SPEC, None)[3].endswith(", liger-kernel kernels and fused loss if installed")
    assert not plan_for("model=llama3_2_3b", "method=qlora", hw=H200x2).model.liger_kernel  # qlora keeps its own


def test_a_model_given_by_model_path_is_named_by_its_path():
    plan = plan_for("model.path=/models/my-llama")
    assert summary_lines(plan, SPEC, None)[3].startswith("model      /models/my-llama, method full, ")
    assert any(line.startswith("  model              /models/my-llama: 0.00B parameters") for line in plan_table(plan))
    assert summary_lines(plan_for(), SPEC, None)[3].startswith("model      tiny (built from config), method full")


def test_help_says_how_to_choose_the_number_of_gpus_or_cpu_processes():
    text = help_text()
    assert "topo.gpus_per_host=N uses N of them" in text
    assert "topo.cpu_procs_per_host=N CPU processes (default 2)" in text
