"""Communication sizes chosen from the model when the plan leaves them at 0 (the default).

All sizes are in units of 2**20 elements, as the plan's `*_mb` fields and DeepSpeed's bucket sizes count elements.
Measured on 2x H200 with a 1.1B Llama (bench/results/perf.md, 2026-11-30):
- ZeRO-3 prefetches whole decoder layers (plan.stage3_fetch=layer), and a prefetch bucket smaller than one layer
  prefetches nothing: DeepSpeed's 50M is less than that model's 63M-parameter layer. Whole layers with the 50M
  prefetch gave 38k tokens/s per GPU, with a 200M prefetch 57k (27k per submodule); the three layers chosen here
  gave 40k in the recorded run (with 500M gradient buckets), 2.1x the HF Trainer's ZeRO-3 there.
- Gradient buckets: 200M elements, as before this module. DeepSpeed's 500M were within noise for ZeRO-2 (57.6k
  against 57.3k in one run), cost 1.2 GiB more, and the 57k ZeRO-3 run above used 200M. A bucket is never larger
  than what is trained: a small model or LoRA adapters get one bucket of their own size instead of GPU buffers of
  the default size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from launcher.config.schema import ArchConfig
from launcher.plan.memory import count_params, linear_params, lora_params

M = 2**20
MAX_BUCKET_M = 200
MIN_PREFETCH_M = 50  # DeepSpeed's default stage3_prefetch_bucket_size
PREFETCH_LAYERS = 3
UNKNOWN_SHAPE_PREFETCH_M = 200  # a hub id on the tiny preset: the measured best for 1.1B, three 8B layers


@dataclass(frozen=True)
class CommSizes:
    reduce_bucket_mb: int
    allgather_bucket_mb: int
    stage3_prefetch_mb: int


def layer_params(arch: ArchConfig) -> int:
    """One decoder layer: its projections and its two norms."""
    return linear_params(arch) // arch.num_layers + 2 * arch.hidden_size


def comm_sizes(arch: ArchConfig, method: str, lora_r: int, targets: tuple[str, ...], model_parallel: int,
               reduce_mb: int = 0, allgather_mb: int = 0, prefetch_mb: int = 0, shape_known: bool = True
               ) -> CommSizes:
    """The plan's sizes: what the user set, else chosen from the parameters this rank trains and gathers. A model
    whose shape the plan does not know (a hub id on the tiny preset) gets the fixed sizes, not the tiny model's."""
    if not shape_known:
        reduce = reduce_mb or MAX_BUCKET_M
        return CommSizes(reduce, allgather_mb or reduce, prefetch_mb or UNKNOWN_SHAPE_PREFETCH_M)
    trained = count_params(arch) if method == "full" else lora_params(arch, lora_r, targets)
    per_rank = math.ceil(trained / model_parallel / M)
    reduce = reduce_mb or max(1, min(MAX_BUCKET_M, per_rank))
    prefetch = prefetch_mb or max(MIN_PREFETCH_M, math.ceil(PREFETCH_LAYERS * layer_params(arch) / M))
    return CommSizes(reduce, allgather_mb or reduce, prefetch)
