"""How much FP8 could give the 1.14B Llama of bench/perf.py on this GPU: its four matmul shapes per layer (q/k/v/o,
gate/up and down of the MLP) at one micro batch of 16 x 2048 tokens, bf16 (torch.matmul) against FP8 e4m3 with
per-tensor scales (torch._scaled_mm, what torchao's float8 training calls), the casts to FP8 timed separately. The
end-to-end ceiling is then the matmul share of a step (bench/host_profile.py's kernel report) times the matmul speed-up,
less the casts. Prints a Markdown table.   On a lent GPU machine: source .device/setup.sh && python3 bench/fp8_matmul.py
"""
from __future__ import annotations

import time

import torch

TOKENS, HIDDEN, KV, FFN = 16 * 2048, 2048, 1024, 8192
SHAPES = {"q / o": (HIDDEN, HIDDEN), "k / v": (HIDDEN, KV), "gate / up": (HIDDEN, FFN), "down": (FFN, HIDDEN)}


def timed(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.finfo(torch.float8_e4m3fn).max / x.abs().max().float().clamp(min=1e-12)
    return (x.float() * scale).to(torch.float8_e4m3fn), scale.reciprocal()


def main() -> None:
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; M = {TOKENS} tokens")
    print("| matmul | K x N | bf16 TFLOP/s | fp8 TFLOP/s | fp8 speed-up | casts (2 tensors) ms | bf16 ms | fp8 ms |")
    print("|---|---|---|---|---|---|---|---|")
    total = {"bf16": 0.0, "fp8": 0.0, "cast": 0.0}
    for name, (k, n) in SHAPES.items():
        a = torch.randn(TOKENS, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        a8, sa = to_fp8(a)
        w8, sw = to_fp8(w)
        flops = 2 * TOKENS * k * n
        bf16 = timed(lambda: a @ w.t())
        fp8 = timed(lambda: torch._scaled_mm(a8, w8.t(), scale_a=sa, scale_b=sw, out_dtype=torch.bfloat16))
        cast = timed(lambda: (to_fp8(a), to_fp8(w)))
        for key, value in (("bf16", bf16), ("fp8", fp8), ("cast", cast)):
            total[key] += value
        print(f"| {name} | {k} x {n} | {flops / bf16 / 1e12:,.0f} | {flops / fp8 / 1e12:,.0f} | {bf16 / fp8:.2f}x "
              f"| {cast * 1e3:.2f} | {bf16 * 1e3:.2f} | {fp8 * 1e3:.2f} |")
    print(f"all four (once each): bf16 {total['bf16'] * 1e3:.2f} ms, fp8 {total['fp8'] * 1e3:.2f} ms "
          f"({total['bf16'] / total['fp8']:.2f}x), "
          f"fp8 with unfused casts {(total['fp8'] + total['cast']) * 1e3:.2f} ms "
          f"({total['bf16'] / (total['fp8'] + total['cast']):.2f}x)")


if __name__ == "__main__":
    main()
