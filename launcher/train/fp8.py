"""FP8 matmuls (train.precision=fp8): the model's large linear layers run in float8 through torchao.

The weights, the optimizer, the checkpoints and every other operation stay those of a bf16 run (the plan's precision
is bf16, DeepSpeed's bf16 mode keeps fp32 master weights): torchao's `Float8Linear` casts a layer's input, weight and
output gradient to float8 e4m3/e5m2 with one scale per tensor ("tensorwise", its fastest recipe) and multiplies with
the FP8 tensor cores of compute capability 8.9 and later (Ada, Hopper, Blackwell; a GB10 is 12.1). Its state dict is
a Linear's: a checkpoint holds the tensors a bf16 run's holds, under the same names (tests/gpu resumes one in bf16).

The casts are separate elementwise passes over each input: run as their own kernels they cost more than the faster
matmul gains (bench/fp8_matmul.py: 1.72x faster matmuls, 0.46x with unfused casts, one H100). So each converted layer
is compiled on its own (torch.compile fuses a cast into the pass that computes its scale), which leaves liger's fused
kernels and the rest of the model eager; under plan.compile=torch the whole model compiles instead (liger off).
On one H100, the 1.14B model at +plan=auto (perf.md, 2026-12-07 09:51): 92,601 tokens/s against bf16's 78,014 and
the hand-written ZeRO-2 + liger loop's 73,056 (1.27x); the whole-model compile ran 74,406. The loss over 300 steps
stayed within 0.02% of bf16's (bench/fp8_parity.py, results/fp8.md).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from launcher.errors import LauncherError
from launcher.plan.checks import FP8_INSTALL

log = logging.getLogger("launcher")
MIN_CAPABILITY = (8, 9)
RECIPE = "tensorwise"
# torchao's own rule for tensorwise (float8_linear_utils._auto_filter_for_recipe): a layer whose input (K) and output
# (N) are both this small runs slower in FP8 than in bf16 at training's token counts; a 1.14B Llama's k/v (2048 ->
# 1024) stays bf16 by it, its q/o and MLP layers convert
SMALL_K, SMALL_N = 4096, 1024
SKIPPED_NAMES = ("lm_head", "lora_")  # the output layer (its numerics matter most; liger fuses it with the loss)
# Each converted layer compiles for static shapes, once per width of micro batch it meets, and batches are padded to a
# multiple of PAD_MULTIPLE tokens, so a run meets at most seq_len / PAD_MULTIPLE widths. torch's default instead goes
# dynamic at the second width: a run that way failed in inductor on an H100 (torch 2.11, bench/results/fp8.md; the
# cause was not pinned down) and the static way trained. The layers share one `forward`, so their shapes count
# against one recompile limit (8 by default, after which the layers run uncompiled): it is raised to RECOMPILE_LIMIT.
PAD_MULTIPLE = 64
RECOMPILE_LIMIT = 256


def converts(module: torch.nn.Module, fqn: str, small_k: int = SMALL_K, small_n: int = SMALL_N) -> bool:
    """Whether a module becomes a float8 linear: an nn.Linear whose sizes FP8 tensor cores take (multiples of 16)
    and which is large enough to gain, never the output layer or a LoRA adapter."""
    if type(module) is not torch.nn.Linear or any(s in fqn for s in SKIPPED_NAMES):
        return False
    k, n = module.in_features, module.out_features
    return k % 16 == 0 and n % 16 == 0 and not (k <= small_k and n <= small_n)


def check_device(device: torch.device) -> None:
    """FP8 tensor cores or a clear error: the plan checks the launching machine, and this checks every rank's own."""
    if device.type != "cuda":
        raise LauncherError("train.precision", "fp8", "use train.precision=bf16 on this machine",
                            problem="FP8 matmuls need a CUDA GPU")
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        raise LauncherError("train.precision", "fp8", "use train.precision=bf16 on this GPU",
                            problem=f"FP8 tensor cores come with compute capability 8.9 (Ada, Hopper, Blackwell); "
                            f"{torch.cuda.get_device_name(device)} is {cap[0]}.{cap[1]}")


def convert(model: torch.nn.Module, compile_layers: bool, small_k: int = SMALL_K, small_n: int = SMALL_N) -> list[str]:
    """Swap the model's large linear layers for torchao's float8 ones, in place, and compile each of them on its own
    when `compile_layers`. Returns the names converted. Call before deepspeed.initialize: the parameters stay the same
    objects, so the optimizer and ZeRO see the model's own weights."""
    logging.getLogger("torchao").setLevel(logging.ERROR)  # its import names each optional kernel library it lacks
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:
        raise LauncherError("train.precision", "fp8", FP8_INSTALL, problem=f"torchao is missing ({e})") from e
    names = [n for n, m in model.named_modules() if converts(m, n, small_k, small_n)]
    if not names:
        raise LauncherError("train.precision", "fp8", "use train.precision=bf16 for this model",
                            problem=f"none of its linear layers is large enough to gain from FP8 (one with more than "
                            f"{small_k} inputs or {small_n} outputs, sizes multiples of 16)")
    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(RECIPE),
                               module_filter_fn=lambda m, fqn: converts(m, fqn, small_k, small_n))
    if compile_layers:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                               4 * RECOMPILE_LIMIT)
        for name in names:
            model.get_submodule(name).compile(dynamic=False)
    log.info(f"train.precision=fp8: {len(names)} linear layers run their matmuls in float8 ({RECIPE} scaling"
             f"{', each compiled' if compile_layers else ''}); the output layer and the rest stay bf16")
    return names


def pad_multiple(plan: Any) -> int:
    """The multiple of tokens a micro batch is padded to: PAD_MULTIPLE under FP8's compiled layers, else 1."""
    return PAD_MULTIPLE if getattr(plan, "fp8", False) else 1


def apply_fp8(model: Any, plan: Any, device: torch.device) -> list[str]:
    """The rank's side of train.precision=fp8: nothing unless the plan asks for it."""
    if not plan.fp8:
        return []
    check_device(device)
    return convert(model, compile_layers=plan.compile == "off")
