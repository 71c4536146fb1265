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

    @property
    def unified_memory(self) -> bool:
        """GB10 (DGX Spark / ThinkStation PGX) shares one LPDDR5x pool between CPU and GPU."""
        return "GB10" in self.gpu_name.upper()


CPU_ONLY = Hardware("cpu", 0, "", 0.0, "", False, 1, 0.0, "x86_64")


def host_memory_gb() -> float:
    """MemTotal from the OS: on GB10 this is also the GPU's memory (nvidia-smi says 'Not Supported')."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def detect() -> Hardware:
    """Probe torch for GPUs; a host without CUDA gets CPU ranks (and, without an NVIDIA device node, no torch import)."""
    cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mem = host_memory_gb()
    if not glob.glob("/dev/nvidia[0-9]*"):
        return Hardware("cpu", 0, "", 0.0, "", False, cpu_count, mem, platform.machine())
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return Hardware("cpu", 0, "", 0.0, "", False, cpu_count, mem, platform.machine())
    props = torch.cuda.get_device_properties(0)
    gpu_mem = props.total_memory / 1024**3
    if "GB10" in props.name.upper():
        gpu_mem = mem
    return Hardware(
        accelerator="cuda",
        gpu_count=torch.cuda.device_count(),
        gpu_name=props.name,
        gpu_memory_gb=gpu_mem,
        gpu_arch=f"{props.major}.{props.minor}",
        bf16=torch.cuda.is_bf16_supported(),
        cpu_count=cpu_count,
        host_memory_gb=mem,
        machine=platform.machine(),
    )
