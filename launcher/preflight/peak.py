"""`python -m launcher.preflight --peak`: the dense bf16 matmul rate each GPU of this host sustains, recorded per GPU
model (launcher/peaks.py) so that MFU rests on a measured peak. NVIDIA publishes no dense bf16 figure for GB10; on
GPUs with a datasheet figure the line says how close the measurement lands to it. A measured peak sits below the
datasheet's, so MFU against it ("of measured peak") is not comparable with datasheet MFU elsewhere."""
from __future__ import annotations

import socket
import statistics
import time

from launcher.errors import LauncherError

SIZES = (8192, 16384)  # square bf16 matmuls; the faster one counts
ITERS, REPEATS, WARMUP = 20, 3, 3


def measure_tflops(device_index: int) -> tuple[float, int]:
    """The best TFLOP/s over SIZES x REPEATS timed runs of ITERS matmuls (CUDA events), and the size that gave it."""
    import torch

    device = torch.device("cuda", device_index)
    best, best_n = 0.0, 0
    for n in SIZES:
        a, b = (torch.randn(n, n, dtype=torch.bfloat16, device=device) for _ in range(2))
        out = torch.empty(n, n, dtype=torch.bfloat16, device=device)
        for _ in range(WARMUP):
            torch.mm(a, b, out=out)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(REPEATS):
            start.record()
            for _ in range(ITERS):
                torch.mm(a, b, out=out)
            end.record()
            end.synchronize()
            tflops = 2 * n**3 * ITERS / (start.elapsed_time(end) / 1e3) / 1e12
            best, best_n = (tflops, n) if tflops > best else (best, best_n)
        del a, b, out
        torch.cuda.empty_cache()
    return best, best_n


def main(environ: dict[str, str]) -> int:
    """Measure every visible GPU, print one line each, record the median per GPU model."""
    import torch

    from launcher.peaks import peak_path, record_peak
    from launcher.train.metrics import find_peak

    if not torch.cuda.is_available():
        raise LauncherError("--peak", "this host", "run `python -m launcher.preflight --peak` on a host with a CUDA "
                            "GPU (each GB10 box, or each kind of GPU you train on)", problem="torch sees no CUDA GPU here")
    by_name: dict[str, list[float]] = {}
    for i in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(i)
        tflops, n = measure_tflops(i)
        by_name.setdefault(name, []).append(tflops)
        table = find_peak(name, {})
        versus = f"; {table.flops / 1e12:.0f} TFLOP/s {table.basis}: {tflops / (table.flops / 1e12):.0%} of it" \
            if table else ""
        print(f"GPU {i} {name}: {tflops:.1f} TFLOP/s dense bf16 ({n}x{n} matmul){versus}")
    path = peak_path(environ)
    for name, values in by_name.items():
        record_peak(path, name, {"tflops": round(statistics.median(values), 1), "gpus": len(values),
                                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
                                 "torch": torch.__version__, "cuda": torch.version.cuda or "",
                                 "matmul": f"bf16 {'/'.join(map(str, SIZES))} square, best of {REPEATS}x{ITERS}"})
    print(f"recorded in {path}: MFU on {', '.join(by_name)} is now shown 'of measured peak'")
    return 0
