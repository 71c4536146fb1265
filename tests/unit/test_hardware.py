"""GPU detection from nvidia-smi's CSV: no CUDA context in the launcher process."""
from __future__ import annotations

from launcher.plan.hardware import parse_nvidia_smi

H200x2 = "0, NVIDIA H200, 143771, 9.0\n1, NVIDIA H200, 143771, 9.0\n"
GB10 = "0, NVIDIA GB10, [N/A], 12.1\n"


def test_nvidia_smi_lines_give_name_memory_and_compute_capability():
    assert parse_nvidia_smi(H200x2, None) == [("NVIDIA H200", 143771 / 1024, "9.0")] * 2


def test_gb10_reports_no_memory_so_the_unified_pool_is_used_instead():
    assert parse_nvidia_smi(GB10, None) == [("NVIDIA GB10", 0.0, "12.1")]


def test_cuda_visible_devices_restricts_the_count_and_uuids_defer_to_torch():
    assert len(parse_nvidia_smi(H200x2, "1")) == 1
    assert parse_nvidia_smi(H200x2, "") == []
    assert parse_nvidia_smi(H200x2, "GPU-cede08a2-8c40") is None
    assert parse_nvidia_smi("No devices were found", None) is None
