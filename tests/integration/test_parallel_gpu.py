"""tp=2 and pp=2 on two GPUs with a ~1B Llama-shaped model in bf16, against ZeRO-1 data parallel on the same job;
the numbers (tokens/s, step time, losses) are printed and written to bench.json in the test's tmp dir.

Run on a lent 2-GPU machine: `python3 -m pytest -m gpu -s tests/integration/test_parallel_gpu.py`. The model is
built from its shape (Llama 3.2 1B's layers; the shipped 512-token vocabulary) so nothing is downloaded; set
LAUNCHER_GPU_MODEL=/path/to/hf-model to use real weights instead.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_launcher

pytestmark = [pytest.mark.gpu, pytest.mark.integration]
ONE_B = ("model.arch.hidden_size=2048", "model.arch.num_layers=16", "model.arch.num_heads=32",
         "model.arch.num_kv_heads=8", "model.arch.intermediate_size=8192")
JOB = ("train.precision=bf16", "train.max_steps=20", "train.save_every=20", "train.seq_len=1024",
       "train.micro_batch_size=4", "train.global_batch_size=16", "train.lr=3e-4", "data.packing=true")
PLANS = {"zero1": ("+plan=zero1",), "tp": ("+plan=tp",), "pp": ("+plan=pp",)}
# bf16 rounds every matmul output to 8 bits of mantissa; splitting the matmuls (tp) or regrouping micro batches
# (pp) changes which partial sums get rounded, and Adam carries it on: the first steps agree within 2e-2, later
# ones drift apart as each trajectory overfits the repeated rows its own way (measured 2026-11-29 on 2x H200: final
# losses 0.80 zero1, 0.72 tp, 0.81 pp). Exact parity is the CPU fp32 tests' job (1e-3).
BF16_TOLERANCE = 2e-2
EARLY_STEPS = 6
FINAL_TOLERANCE = 0.2


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(gpu_count() < 2, reason="needs 2 GPUs")
def test_tp2_and_pp2_train_a_1b_model_in_bf16_like_data_parallel(tmp_path):
    model = (f"model.path={os.environ['LAUNCHER_GPU_MODEL']}",) if os.environ.get("LAUNCHER_GPU_MODEL") else ONE_B
    bench: dict[str, dict] = {}
    for name, plan in PLANS.items():
        run_dir = tmp_path / name
        result = run_launcher(*plan, *model, *JOB, "topo.gpus_per_host=2", f"run.dir={run_dir}", timeout=1500)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        metrics = read_metrics(run_dir)
        saved = json.loads((run_dir / "plan.json").read_text())
        steady = metrics[3:]  # first steps include warm-up (allocator, NCCL)
        bench[name] = {
            "dp": saved["dp"], "tp": saved["tp"], "pp": saved["pp"], "grad_accum": saved["grad_accum"],
            "params": saved["memory"]["params"], "estimate_gb": saved["memory"]["total_gb"],
            "tokens_per_s": statistics.median(m["tokens_per_s"] for m in steady),
            "step_time_s": statistics.median(m["step_time_s"] for m in steady),
            "losses": [m["loss"] for m in metrics],
        }
        assert (run_dir / "checkpoints" / "global_step20" / "complete.json").exists()
    Path(tmp_path / "bench.json").write_text(json.dumps(bench, indent=2))
    print(json.dumps({k: {f: v for f, v in b.items() if f != "losses"} for k, b in bench.items()}, indent=2))
    ref = bench["zero1"]["losses"]
    for name in ("tp", "pp"):
        worst = max(abs(a - b) / b for a, b in zip(bench[name]["losses"][:EARLY_STEPS], ref))
        print(f"{name}: worst per-step loss difference to ZeRO-1 {worst:.2e} relative")
        assert worst < BF16_TOLERANCE
        assert abs(bench[name]["losses"][-1] - ref[-1]) / ref[-1] < FINAL_TOLERANCE
