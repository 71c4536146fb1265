"""What this host has, read once at the entry and passed down as a value (never re-read deep in the code)."""
from __future__ import annotations

import glob
import os
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    accelerator: str  # "cuda" or "cpu"
    gpu_count: int
    gpu_name: str
    gpu_memory_gb: float
    gpu_arch: str  # compute capability, e.g. "9.0"; "" without a GPU
    bf16: bool
    cpu_count: int
    host_memory_gb: float
    machine: str
    mem_available_gb: float = 0.0  # MemAvailable at launch: on unified memory, what the job can have (0: unknown)

    @property
    def unified_memory(self) -> bool:
        """GB10 (DGX Spark / ThinkStation PGX) shares one LPDDR5x pool between CPU and GPU."""
        return "GB10" in self.gpu_name.upper()


def meminfo_gb(key: str, path: str = "/proc/meminfo") -> float:
    """One /proc/meminfo field in GiB (0 when unreadable). MemTotal is also a GB10's GPU memory (nvidia-smi says
    'Not Supported'); MemAvailable is what a desktop session and the page cache leave of it."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def host_memory_gb() -> float:
    return meminfo_gb("MemTotal")


def detect() -> Hardware:
    """GPUs from nvidia-smi (no CUDA context here: it costs the launch seconds), else from torch; a host without an
    NVIDIA device node gets CPU ranks and no torch import."""
    cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mem, available = host_memory_gb(), meminfo_gb("MemAvailable")
    cpu = Hardware("cpu", 0, "", 0.0, "", False, cpu_count, mem, platform.machine(), available)
    if not glob.glob("/dev/nvidia[0-9]*"):
        return cpu
    gpus = _from_nvidia_smi(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpus is None:
        gpus = _from_torch()
    if not gpus:
        return cpu
    name, gpu_mem, arch = gpus[0]
    if "GB10" in name.upper() or gpu_mem <= 0:
        gpu_mem = mem  # unified memory: nvidia-smi says "Not Supported"
    return Hardware(accelerator="cuda", gpu_count=len(gpus), gpu_name=name, gpu_memory_gb=gpu_mem, gpu_arch=arch,
                    bf16=float(arch or 0) >= 8.0, cpu_count=cpu_count, host_memory_gb=mem, machine=platform.machine(),
                    mem_available_gb=available)


Gpu = tuple[str, float, str]  # name, memory GiB (0 when not reported), compute capability


def parse_nvidia_smi(text: str, visible: str | None) -> list[Gpu] | None:
    """`nvidia-smi --query-gpu=index,name,memory.total,compute_cap --format=csv,noheader,nounits` lines, restricted
    to CUDA_VISIBLE_DEVICES when it lists indices; None when it cannot be read (UUIDs, odd output): ask torch."""
    gpus: dict[int, Gpu] = {}
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            return None
        total = float(parts[2]) / 1024 if parts[2].replace(".", "", 1).isdigit() else 0.0  # MiB; GB10: [N/A]
        gpus[int(parts[0])] = (parts[1], total, parts[3] if parts[3][:1].isdigit() else "")
    if visible is None:
        return list(gpus.values())
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    if not all(v.isdigit() for v in wanted):
        return None
    return [gpus[int(v)] for v in wanted if int(v) in gpus]


def _from_nvidia_smi(visible: str | None) -> list[Gpu] | None:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(out.stdout, visible) if out.returncode == 0 else None


def _from_torch() -> list[Gpu]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append((props.name, props.total_memory / 1024**3, f"{props.major}.{props.minor}"))
    return out
