"""What every baseline script shares with the others (not with the launcher): the model built from its config, the
random-token batches, and one way of timing steps and writing the result that bench/perf.py reads.

Each script runs under torchrun; rank 0 writes `--out` as JSON: wall time at the start of step 1, the end time of every
step (after a host sync on the loss, as the launcher's loop does), the peak memory and what ran.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

STARTED = time.time()  # imports of this module come first in every script


@dataclass(frozen=True)
class Spec:
    """The benchmark's job, passed by bench/perf.py as JSON (--spec)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    seq_len: int
    micro_batch_size: int
    steps: int
    precision: str  # bf16 | fp32
    lr: float = 3e-4
    grad_clip: float = 1.0
    seed: int = 1234


def parse(extra: list[tuple[str, dict[str, Any]]] = ()) -> tuple[Spec, argparse.Namespace]:
    p = argparse.ArgumentParser()
    p.add_argument("--spec", required=True, help="the job as JSON (bench/perf.py writes it)")
    p.add_argument("--out", required=True, help="result JSON, written by rank 0")
    for name, kwargs in extra:
        p.add_argument(name, **kwargs)
    args = p.parse_args()
    return Spec(**json.loads(args.spec)), args


def dist_env() -> tuple[int, int, int, torch.device, str]:
    """rank, local rank, world size, device, and the process-group backend (nccl on GPUs, gloo on CPU)."""
    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        return rank, local, world, torch.device("cuda", local), "nccl"
    return rank, local, world, torch.device("cpu"), "gloo"


def dtype(spec: Spec) -> torch.dtype:
    return torch.bfloat16 if spec.precision == "bf16" else torch.float32


def llama_config(spec: Spec) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads, vocab_size=spec.vocab_size,
        max_position_embeddings=max(2048, spec.seq_len), tie_word_embeddings=False, use_cache=False,
        attn_implementation="sdpa",
    )


def build_model(spec: Spec, param_dtype: torch.dtype, device: torch.device | None = None) -> torch.nn.Module:
    """Random init from the config, seeded, on `device` (the launcher builds on the GPU too: on the CPU, with the
    one thread torchrun gives each rank, a 1B model takes a minute); None: wherever the framework decides (the HF
    Trainer's ZeRO-3 builds it partitioned)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    if device is None:
        return AutoModelForCausalLM.from_config(llama_config(spec), dtype=param_dtype)
    with device:
        return AutoModelForCausalLM.from_config(llama_config(spec), dtype=param_dtype)


def tokens(spec: Spec, rank: int, step: int) -> torch.Tensor:
    """Micro batch of random token ids, a function of (seed, rank, step): every row full, no padding."""
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + rank * 10_007 + step)
    return torch.randint(0, spec.vocab_size, (spec.micro_batch_size, spec.seq_len), generator=g)


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class StepTimer:
    """Wall time at the start of step 1 and at the end of every step; the caller syncs (loss.item()) before end()."""

    def __init__(self) -> None:
        self.first_step_start: float | None = None
        self.ends: list[float] = []
        self.losses: list[float] = []
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def begin(self) -> None:
        if self.first_step_start is None:
            self.first_step_start = time.time()

    def end(self, loss: float) -> None:
        self.ends.append(time.time())
        self.losses.append(loss)

    def write(self, path: str, spec: Spec, device: torch.device, world: int, **info: Any) -> None:
        """tokens_per_step is per GPU, what this rank trained each step: bench/perf.py's rate for the row."""
        result = {"started": STARTED, "first_step_start": self.first_step_start, "step_ends": self.ends,
                  "losses": self.losses, "marks": self.marks, "peak_gib": peak_gib(device), "world_size": world,
                  "micro_batch_size": spec.micro_batch_size, "tokens_per_step": spec.micro_batch_size * spec.seq_len,
                  "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", **info}
        Path(path).write_text(json.dumps(result, indent=1))


def write_skipped(path: str, why: str) -> None:
    """What rank 0 writes when this machine cannot run the baseline (bench/perf.py shows the row as skipped)."""
    Path(path).write_text(json.dumps({"skipped": why}))
