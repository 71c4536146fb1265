"""Which kernel serves `scaled_dot_product_attention` in a rank (model.sdpa_backend).

torch tries its SDPA kernels in the order it reports (flash, memory-efficient, math, then cuDNN), though a build may
prefer cuDNN for some shapes on its own (torch 2.11 on an H100 ran cuDNN's kernels at head size 128). Which kernel is
fastest depends on the card and the shape: cuDNN's wins on Hopper and loses on Ampere and consumer Blackwell (GB10 is
sm_121; transformers PR 48163's table of six GPUs), and the winner flips with the head size. So no fixed rule fits
every card this launcher runs on, and `auto` measures instead: each rank times a forward and backward of the job's
own attention shape under torch's order and with cuDNN first, checks that both give the same output and gradients,
and cuDNN goes first only where every rank found it clearly faster. A call the first kernel cannot serve (a mask, a
head size) still falls back in torch's order, so the choice changes speed and rounding, never the math.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

log = logging.getLogger("launcher")
MARGIN = 0.9  # cuDNN first only when it takes at most this fraction of torch's order: a near tie keeps torch's choice
WARMUP, REPEATS = 2, 5
_held: list[Any] = []  # the entered sdpa_kernel context, held for the rank's lifetime


@dataclass(frozen=True)
class AttentionShape:
    """One attention call of a training step, as a rank runs it: `heads` query and `kv_heads` key/value heads of this
    rank (tensor and sequence parallel split them), `seq` tokens each."""

    batch: int
    heads: int
    kv_heads: int
    seq: int
    head_dim: int

    def __str__(self) -> str:
        kv = f" ({self.kv_heads} kv)" if self.kv_heads != self.heads else ""
        return f"micro {self.batch} x {self.heads} heads{kv} x {self.seq} tokens x {self.head_dim}"


def attention_shape(config: Any, micro_batch: int, seq_len: int, split: int) -> AttentionShape:
    """The shape one rank's attention sees, from the model's config. `split` = tp x sp: both divide the heads (key/value
    heads are replicated when there are fewer than `split`)."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return AttentionShape(micro_batch, max(1, heads // split), max(1, kv // split), seq_len, head_dim)


def backend_order(first: str) -> list[Any]:
    """The priority with `first` ahead and every other backend after it in torch's own order, so a call `first`
    cannot serve falls back as it would have."""
    from torch.nn.attention import SDPBackend

    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    default = [SDPBackend(i) for i in torch._C._get_sdp_priority_order() if SDPBackend(i) in names.values()]
    return [names[first]] + [b for b in default if b != names[first]]


def choose(times: dict[str, float], agrees: bool, margin: float = MARGIN) -> str:
    """'cudnn' when cuDNN-first took at most `margin` of torch's order and gave the same results, else 'torch'."""
    if not agrees or times.get("cudnn", float("inf")) > margin * times["torch"]:
        return "torch"
    return "cudnn"


def why_not_measured(accelerator: str, attn_implementation: str, packing: bool) -> str:
    """'' when `auto` should measure here; otherwise why torch's order is kept untouched."""
    if accelerator != "cuda":
        return "not on a CUDA GPU"
    if attn_implementation != "sdpa":
        return f"model.attn_implementation={attn_implementation} does not call SDPA"
    if packing:
        return "packed batches carry a mask per example, which the measured causal shape does not"
    return ""


def apply_sdpa_backend(setting: str, plan: Any, config: Any, device: torch.device) -> str:
    """Set this rank's SDPA priority for `setting` (collective under `auto`: every rank calls it). Returns what
    serves first: 'torch' (torch's own order) or a backend name."""
    if setting == "torch":
        return "torch"
    if setting != "auto":
        _hold(backend_order(setting))
        log.info(f"attention: SDPA tries {setting} first (model.sdpa_backend={setting})")
        return setting
    skip = why_not_measured(plan.accelerator, plan.model.attn_implementation, plan.data.packing)
    if skip:
        return "torch"
    shape = attention_shape(config, plan.micro_batch_size, plan.train.seq_len, plan.tp * plan.sp)
    failure = ""
    try:
        times, agrees = measure(shape, device)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:  # a kernel that cannot run here: keep torch's order
        times, agrees, failure = {}, False, _first_line(err)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    choice = _agree_across_ranks(choose(times, agrees) if times else "torch", device)
    if choice == "cudnn":
        _hold(backend_order("cudnn"))
    log.info(f"attention: {'cuDNN first' if choice == 'cudnn' else 'torch order'} "
             f"({_describe(times, agrees, shape, failure)}; model.sdpa_backend=auto)")
    return choice


def measure(shape: AttentionShape, device: torch.device) -> tuple[dict[str, float], bool]:
    """Seconds per forward+backward of `shape` under torch's order and with cuDNN first, and whether the two agree
    on the output and the three input gradients within bf16 rounding."""
    from torch.nn.attention import sdpa_kernel

    q, k, v, grad = _inputs(shape, device)
    times, results = {}, {}
    for name, order in (("torch", None), ("cudnn", backend_order("cudnn"))):
        ctx = sdpa_kernel(order, set_priority=True) if order else contextlib.nullcontext()
        with ctx:
            times[name], results[name] = _time(lambda: _step(q, k, v, grad, shape), device)
    del q, k, v, grad
    return times, all(_close(a, b) for a, b in zip(results["cudnn"], results["torch"]))


def _inputs(shape: AttentionShape, device: torch.device, dtype: torch.dtype = torch.bfloat16
            ) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=device).manual_seed(0)
    b, s, d = shape.batch, shape.seq, shape.head_dim

    def rand(heads: int, grad: bool) -> torch.Tensor:
        return torch.randn(b, heads, s, d, device=device, generator=g).to(dtype).requires_grad_(grad)

    return rand(shape.heads, True), rand(shape.kv_heads, True), rand(shape.kv_heads, True), rand(shape.heads, False)


def _step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor,
          shape: AttentionShape) -> tuple[torch.Tensor, ...]:
    """The call transformers' sdpa path makes for an unmasked causal batch (grouped heads passed as they are)."""
    gqa = shape.heads != shape.kv_heads
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out.detach(), dq, dk, dv


def _time(step: Callable[[], tuple[torch.Tensor, ...]], device: torch.device) -> tuple[float, tuple[torch.Tensor, ...]]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(WARMUP):
        result = step()
    sync()
    t0 = time.perf_counter()
    for _ in range(REPEATS):
        result = step()
    sync()
    return (time.perf_counter() - t0) / REPEATS, result


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within bf16 rounding of the larger values: two exact kernels differ in summation order only."""
    scale = b.float().abs().max().item()
    return (a.float() - b.float()).abs().max().item() <= 0.02 * scale + 1e-3


def _agree_across_ranks(choice: str, device: torch.device) -> str:
    """cuDNN only where every rank chose it: ranks of one job run one kernel."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return choice
    flag = torch.tensor([1 if choice == "cudnn" else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return "cudnn" if flag.item() else "torch"


def _hold(order: list[Any]) -> None:
    """Enter torch's sdpa_kernel priority for the rest of this process (it is a context manager by design)."""
    from torch.nn.attention import sdpa_kernel

    ctx = sdpa_kernel(order, set_priority=True)
    ctx.__enter__()
    _held.append(ctx)


def _describe(times: dict[str, float], agrees: bool, shape: AttentionShape, failure: str = "") -> str:
    if not times:
        return f"not measured at {shape}: {failure}"
    ms = {k: f"{v * 1e3:.2f} ms" for k, v in times.items()}
    agree = "" if agrees else "; cuDNN's results differ, so it is not used"
    return f"forward+backward at {shape}: cuDNN first {ms['cudnn']}, torch's order {ms['torch']}{agree}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__
