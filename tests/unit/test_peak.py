"""MFU rests on a named peak: a peak measured on this GPU model (`python -m launcher.preflight --peak`, recorded in the
cache dir) wins over the table, and every MFU says which it is: measured, datasheet or estimated (GB10's table value).
The measurement itself runs on a GPU: tests/gpu/test_gpu.py."""
from __future__ import annotations

import io
import json
import subprocess
import sys

from rich.console import Console

from launcher.peaks import peak_path, read_peaks, record_peak
from launcher.train.metrics import MetricsWriter, StepMetrics, find_peak, peak_flops
from launcher.train.progress import Progress
from tests.conftest import REPO, launcher_env

STEP = StepMetrics(step=3, loss=1.25, lr=1e-4, grad_norm=0.5, tokens=4096, tokens_per_s=2048.0, step_time_s=2.0,
                   time=0.0, mfu=0.4123, memory_gb=60.0)


def test_a_recorded_peak_is_kept_per_device_name_next_to_the_others(tmp_path):
    path = peak_path({"LAUNCHER_CACHE_DIR": str(tmp_path)})
    assert path == tmp_path / "peak.json" and read_peaks(path) == {}
    record_peak(path, "NVIDIA GB10", {"tflops": 92.5, "gpus": 1})
    record_peak(path, "NVIDIA H100 80GB HBM3", {"tflops": 700.0})
    record_peak(path, "NVIDIA GB10", {"tflops": 93.0})
    assert read_peaks(path) == {"NVIDIA GB10": 93.0, "NVIDIA H100 80GB HBM3": 700.0}
    path.write_text("{not json")
    assert read_peaks(path) == {}  # a damaged file costs the measured label, never the run


def test_the_peak_is_measured_when_recorded_else_the_tables_labelled_datasheet_or_estimated():
    measured = find_peak("NVIDIA GB10", {"NVIDIA GB10": 92.5})
    assert measured is not None and (measured.flops, measured.label) == (92.5e12, "of measured peak")
    gb10 = find_peak("NVIDIA GB10", {"NVIDIA H100 80GB HBM3": 700.0})
    assert gb10 is not None and (gb10.flops, gb10.label) == (125e12, "of estimated peak")
    h100 = find_peak("NVIDIA H100 80GB HBM3", {})
    assert h100 is not None and h100.label == "of datasheet peak"
    assert peak_flops("NVIDIA GB200") == 2500e12  # the longest name that matches, not B200's
    assert find_peak("Some Other GPU", {}) is None and peak_flops("NVIDIA H200") == 989e12


def test_console_line_bar_and_metrics_row_name_what_mfu_is_taken_against(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", 10, find_peak("NVIDIA GB10", {"NVIDIA GB10": 92.5}))
    assert "| MFU 41.2% of measured peak |" in writer.line(STEP)
    writer.write(STEP)
    writer.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["mfu_peak"] == "measured"
    estimated = MetricsWriter(tmp_path / "b.jsonl", 10, find_peak("NVIDIA GB10", {}))
    assert "| MFU 41.2% of estimated peak |" in estimated.line(STEP)
    estimated.close()
    terminal = io.StringIO()
    bar = Progress(10, 0, 1, writer.line, tty=True, console=Console(file=terminal, force_terminal=True, width=160),
                   peak=find_peak("NVIDIA GB10", {}))
    bar.update(STEP)
    bar.bar.refresh()
    bar.close()
    assert "MFU 41% (estimated)" in terminal.getvalue()


def test_peak_on_a_host_without_a_gpu_is_one_paragraph_exit_2():
    result = subprocess.run([sys.executable, "-m", "launcher.preflight", "--peak"], cwd=REPO, env=launcher_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --peak='this host' cannot be used. torch sees no CUDA GPU here.")
    assert "Traceback" not in result.stderr
