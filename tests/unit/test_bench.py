"""bench/perf.py reads the ranks' checkpoint timing lines and times steps between their ends: the pure parts."""
from __future__ import annotations

import json

import pytest

from bench.perf import LOADED, SAVED, step_times_from_ends
from launcher.train.saver import throughput


def test_bench_reads_the_save_and_load_lines_the_ranks_write():
    line = throughput({"files": {"a": 6_000_000_000, "b": 2_000_000_000}}, 4.0)
    assert line == "in 4.0 s (8.00 GB, 2.00 GB/s)"
    assert SAVED.search(f"saved checkpoint /runs/x/checkpoints/global_step25 {line}").groups() == ("4.0", "8.00", "2.00")
    assert LOADED.search(f"resumed from global step 25 (/runs/x); loaded {line}").groups() == ("4.0", "8.00", "2.00")


def test_a_step_lasts_from_the_end_of_the_previous_one():
    assert step_times_from_ends(10.0, [10.5, 11.25, 12.0]) == [0.5, 0.75, 0.75]


def test_a_variant_is_a_name_and_launcher_overrides_or_a_usage_error():
    import argparse

    import pytest

    from bench.perf import variant

    assert variant("z3c=+plan=zero3 plan.compile=torch") == ("z3c", "+plan=zero3 plan.compile=torch")
    for bad in ("nope", "a b=+plan=zero3", "z3="):
        with pytest.raises(argparse.ArgumentTypeError, match="give NAME=OVERRIDES"):
            variant(bad)


# ---- each row's own tokens per step (bench/perf_table.py) -----------------------------------------------------------
def step(n: int, tokens: int) -> dict:
    return {"step": n, "loss": 2.0, "tokens": tokens, "time": 100.0 + n, "step_time_s": 1.0, "memory_gb": 1.0}


def test_a_launcher_row_counts_its_tokens_per_gpu_from_its_steps_and_skips_eval_rows():
    from bench.perf_table import step_rows, tokens_per_gpu

    eval_row = {"step": 2, "eval_loss": 2.1, "eval_tokens": 4096, "eval_time_s": 0.5, "time": 102.5}
    rows = [step(1, 32768), step(2, 32768), eval_row, step(3, 32768)]
    steps = step_rows(rows)
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert tokens_per_gpu(steps, gpus=2) == 16384  # metrics.jsonl counts all GPUs; the table's rate is per GPU


def test_rows_of_different_micro_batches_are_rated_by_their_own_tokens():
    from bench.perf_table import Result, rates, table

    # micro 4 and micro 8 of 2048 tokens: the second trains twice the tokens in 1.5x the time
    micro4 = Result("ds-zero2", "loop", ok=True, step_times=[1.0, 0.4, 0.4, 0.4], tokens_per_step=4 * 2048,
                    peak_gib=10.0, startup_s=20.0)
    micro8 = Result("launcher-auto", "launcher +plan=auto", ok=True, step_times=[1.0, 0.6, 0.6, 0.6],
                    tokens_per_step=8 * 2048, peak_gib=20.0, startup_s=21.0, notes=["micro batch 8 x grad accum 1"])
    skipped = Result("ds-zero2-liger", "loop + liger", skipped="liger-kernel is not installed")
    results = {r.name: r for r in (micro4, micro8, skipped)}
    rate = rates(results, first=2)
    assert rate["ds-zero2"] == 8192 / 0.4
    assert round(rate["launcher-auto"]) == round(16384 / 0.6)
    assert rate["best"] == rate["launcher-auto"]
    text = table(results, first=2, per_token=1e9, peak_flops=1e14)
    assert "| launcher-auto | launcher +plan=auto |  | 27,307 | 27.3% | 20.0 | 0.600 | 21.0 | micro batch 8 x grad " \
           "accum 1 |" in text
    assert "| ds-zero2 | loop |  | 20,480 | 20.5% |" in text
    assert "| ds-zero2-liger | loop + liger |  | skipped | | | | | liger-kernel is not installed |" in text


def test_targets_compare_each_rows_own_rate_and_the_auto_rows_mfu():
    from bench.perf_table import Result, targets

    def row(name: str, tokens: int, seconds: float) -> Result:
        return Result(name, name, ok=True, step_times=[seconds] * 3, tokens_per_step=tokens, peak_gib=1.0,
                      startup_s=1.0)

    results = {r.name: r for r in (row("ds-zero2-liger", 8 * 2048, 0.25), row("launcher-auto", 32 * 2048, 0.9),
                                   row("launcher-zero2", 4 * 2048, 0.14))}
    lines = targets(results, first=1, startups={}, per_token=7e9, peak_flops=989e12)
    # 72,818 against 65,536 tokens/s per GPU: 1.11x, though its step is 3.6x longer
    assert "- launcher-auto / ds-zero2-liger: 1.11x (target >= 1.1x): met" in lines
    assert "- launcher-auto MFU: 51.5% (target >= 55%): MISSED" in lines
    assert "- launcher-zero2 / ds-zero2: not measured (a row failed or was skipped)" in lines
    assert "- best (launcher-auto) / hf-zero3: not measured (a row failed or was skipped)" in lines
    assert any(line.startswith("- launcher-zero2 MFU: ") for line in lines)
    assert targets(results, 1, {}, 7e9, None)[-1].startswith("- launcher-auto / ds-zero2-liger")  # no MFU on CPU
    assert not any("fp8" in line for line in lines)  # no fp8 row, no fp8 line
    results["launcher-auto-fp8"] = row("launcher-auto-fp8", 32 * 2048, 0.72)
    lines = targets(results, first=1, startups={}, per_token=7e9, peak_flops=989e12)
    # 91,022 tokens/s: 1.39x the loop's 65,536, 1.25x auto's 72,818, 64.4% of the bf16 peak
    assert "- launcher-auto-fp8 (train.precision=fp8, opt-in): 1.39x ds-zero2-liger, 1.25x launcher-auto, MFU 64.4% " \
        "of the bf16 peak" in lines
    assert targets(results, 1, {}, 7e9, None)[-1] == ("- launcher-auto-fp8 (train.precision=fp8, opt-in): 1.39x "
                                                       "ds-zero2-liger, 1.25x launcher-auto")


def test_a_launcher_rows_notes_say_its_micro_batch_and_what_plan_auto_chose():
    from bench.perf_table import plan_notes

    fixed = {"plan_name": "zero2", "micro_batch_size": 4, "grad_accum": 1, "auto_reason": ""}
    auto = {"plan_name": "zero2", "micro_batch_size": 8, "grad_accum": 4, "auto_reason": "plan=auto chose ..."}
    assert plan_notes(fixed) == ["micro batch 4 x grad accum 1"]
    assert plan_notes(auto) == ["+plan=auto chose zero2, micro batch 8 x grad accum 4"]


# ---- what runs (bench/perf.py) --------------------------------------------------------------------------------------
def test_one_call_can_run_only_the_liger_and_auto_rows_beside_their_anchors():
    from bench.perf import plan_rows

    everything = plan_rows(set(), set(), [], [], startups=2)
    assert everything == ["ds-zero2", "launcher-zero2", "fsdp2", "ds-zero3", "launcher-zero3", "hf-zero3",
                          "launcher-zero2-resume", "startups", "ds-zero2-liger", "launcher-auto", "launcher-auto-fp8"]
    only = {"ds-zero2", "ds-zero2-liger", "launcher-zero2", "launcher-auto"}
    assert plan_rows(only, {"launcher-zero2-resume"}, [], [], startups=0) == [
        "ds-zero2", "launcher-zero2", "ds-zero2-liger", "launcher-auto"]
    assert plan_rows({"launcher-auto"}, set(), ["launcher-zero1"], ["launcher-z3c"], 2) == [
        "launcher-auto", "launcher-z3c"]
    assert plan_rows({"startups"}, set(), [], [], startups=2) == ["startups"]
    assert plan_rows({"startups"}, set(), [], [], startups=0) == []


def test_the_liger_baseline_keeps_its_fastest_micro_batch_and_stops_at_out_of_memory(tmp_path):
    from bench.baselines.common import Spec
    from bench.perf import Bench
    from bench.perf_table import Result

    spec = Spec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=512,
                seq_len=1000, micro_batch_size=2, steps=3, precision="fp32")

    def sweep(outcomes: dict[int, float | str]) -> tuple[Result, list[int]]:
        bench = Bench(spec, True, tmp_path, 2, 60.0, {}, first=1)
        ran: list[int] = []

        def baseline(name: str, optimizer: str, log_name: str = "", micro: int = 0) -> Result:
            ran.append(micro)
            outcome = outcomes[micro]
            if isinstance(outcome, str):
                return Result(name, "loop", error=outcome)
            return Result(name, "loop", ok=True, step_times=[outcome] * 3, tokens_per_step=micro * 1000,
                          peak_gib=1.0, startup_s=1.0)

        bench.baseline = baseline
        return bench.best_micro("ds-zero2-liger", "torch"), ran

    row, ran = sweep({4: 0.1, 8: 0.15, 16: "exit code 1: torch.OutOfMemoryError: CUDA out of memory"})
    assert ran == [4, 8, 16]
    assert row.tokens_per_step == 8000
    assert row.notes[0] == ("micro batch 8, best of 4: 40,000 tok/s, 8: 53,333 tok/s, 16: out of memory")
    row, ran = sweep({4: 0.1, 8: 0.25, 16: 0.3})
    assert ran == [4, 8]  # 8 was slower: 16 is not tried
    assert row.tokens_per_step == 4000 and row.notes[0].startswith("micro batch 4, best of 4: 40,000 tok/s, 8: ")
    row, ran = sweep({4: 0.1, 8: 0.15, 16: 0.25, 32: "exit code 1: torch.OutOfMemoryError: CUDA out of memory"})
    assert ran == [4, 8, 16, 32] and row.tokens_per_step == 16000  # an 80 GiB card: 32 tried, 16 kept
    row, ran = sweep({4: "exit code 1: torch.OutOfMemoryError: CUDA out of memory"})
    assert ran == [4] and not row.ok and "out of memory" in row.error


def test_trace_gaps_puts_each_idle_stretch_down_to_the_phase_and_the_thread_that_held_it():
    """A hand-made trace of one step (ms): forward on the main thread, backward on the autograd thread, one sync.
    The GPU idles 0-10 (Python in forward), 30-50 (a backward operator running on the autograd thread while the main
    thread waits in it) and 70-100 (the step sync, in a DeepSpeed function between operators)."""
    from bench.trace_gaps import gap_report

    def x(cat, name, ms, dur, tid=1):
        return {"ph": "X", "cat": cat, "name": name, "ts": ms * 1000, "dur": dur * 1000, "pid": 7, "tid": tid}

    events = [x("user_annotation", "launcher: forward", 0, 30), x("user_annotation", "launcher: backward", 30, 40),
              x("user_annotation", "launcher: step sync", 70, 30),
              x("cpu_op", "aten::linear", 10, 15), x("cpu_op", "aten::mul", 12, 2),
              x("cpu_op", "aten::lift", 31, 30), x("user_annotation", "gloo thread", 30, 70, tid=3),
              x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 30, 20, tid=2),
              x("python_function", "stage_1_and_2.py(900): reduce_ready_partitions", 75, 20),
              x("kernel", "gemm", 10, 20, tid=99), x("kernel", "gemm_bwd", 50, 20, tid=99)]
    report = gap_report(events, min_gap_us=5)
    assert "window 100.0 ms (the loop's phases, 3 ranges): GPU busy 40.0 ms (40%), idle 60.0 ms in 3 gaps" in report
    idle = {line.split()[0]: float(line.split("GPU idle")[1].split()[0]) for line in report.splitlines()
            if line.startswith("  ") and "GPU idle" in line}
    assert idle == {"forward": 10.0, "backward": 20.0, "step": 30.0}
    by_host = report.split("by what the host thread was running")[1].split("by the innermost")[0]
    assert "20.00 ms in     1 gaps  autograd::engine::evaluate_function: MmBackward0" in by_host
    assert "40.00 ms in     2 gaps  (Python between operators)" in by_host  # forward's 10 and the sync's 30
    assert "gloo thread" not in report  # a thread beside the step is not what the GPU waits for
    frames = report.split("innermost Python")[1]
    assert "20.00 ms  stage_1_and_2.py(900): reduce_ready_partitions" in frames and "20.00 ms  (no Python frame)" in frames


def test_kernel_report_splits_the_gpus_busy_time_by_kernel_kind_within_the_loops_phases():
    """Matmuls (cuBLAS, CUTLASS names), attention, liger's Triton kernels, the optimizer, copies and the rest; a
    kernel outside the loop's phases (a save, the profiler's warm-up) is not counted."""
    from bench.trace_gaps import kernel_report

    def x(cat, name, ms, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ms * 1000, "dur": dur * 1000, "pid": 7, "tid": 99}

    events = [x("user_annotation", "launcher: forward", 0, 50), x("user_annotation", "launcher: optimizer step", 50, 50),
              x("kernel", "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", 0, 30),
              x("kernel", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 30, 10),
              x("kernel", "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>", 40, 5),
              x("kernel", "_rms_norm_forward_kernel", 45, 2),
              x("kernel", "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", 50, 20),
              x("gpu_memcpy", "Memcpy DtoD (Device -> Device)", 70, 3),
              x("kernel", "void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add<float>>", 73, 10),
              x("kernel", "gemm outside the window", 120, 50)]
    report = kernel_report(events)
    import re

    shares = {m.group(1): float(m.group(2)) for m in
              (re.match(r"  (\S.*?)\s+([\d.]+) ms ", line) for line in report.splitlines()[1:7])}
    assert report.startswith("GPU time by kernel kind (window 100.0 ms, kernels 80.0 ms):")
    assert shares == {"matmul": 40.0, "optimizer": 20.0, "other": 10.0, "attention": 5.0, "copy / set": 3.0,
                      "liger / Triton": 2.0}
    assert "10.00 ms  void at::native::vectorized_elementwise_kernel" in report.split("'other' kernels")[1]


def test_fp8_parity_compares_the_last_steps_and_says_met_or_missed_or_why_not(tmp_path):
    from bench.fp8_parity import compare, report, write_data

    bf16 = [6.0 - 0.01 * i for i in range(300)]
    close = [x * 1.005 for x in bf16]
    far = [x * 1.05 for x in bf16]
    assert compare(bf16, close)[2] == pytest.approx(0.005)
    assert "difference 0.50% (margin 2%): met" in "\n".join(report(bf16, close, 300, []))
    assert "difference 5.00% (margin 2%): MISSED" in "\n".join(report(bf16, far, 300, []))
    assert "not finite: parity FAILED" in "\n".join(report(bf16, close[:-1] + [float("nan")], 300, []))
    assert "did not finish: exit 1: boom" in "\n".join(report(bf16, close[:10], 300, ["exit 1: boom"]))
    write_data(tmp_path / "d.jsonl", rows=3)
    rows = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["output"].split()) == 150 for r in rows) and rows[0] != rows[1]


def test_a_launcher_rows_notes_split_its_start_between_the_launchers_process_and_rank_0(tmp_path):
    """The launcher prints how long its own process ran before the ranks (launcher/launch/job.py); perf.py puts it
    beside rank 0's "ready in" line, so a slow start says which side it was."""
    from bench.baselines.common import Spec
    from bench.perf import Bench
    from launcher.launch.job import start_age_line

    spec = Spec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=512,
                seq_len=128, micro_batch_size=2, steps=3, precision="fp32")
    bench = Bench(spec, True, tmp_path, 2, 60.0, {}, first=1)
    run_dir = tmp_path / "runs" / "launcher-zero2"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps({"plan_name": "zero2", "micro_batch_size": 2, "grad_accum": 1}))
    (run_dir / "logs" / "rank0.log").write_text("rank0 INFO ready in 5.1 s since the rank started: imports 1.7 s\n")
    assert not any("own process" in n for n in bench._run_notes("launcher-zero2", run_dir))  # an older launcher
    (tmp_path / "launcher-zero2.log").write_text(f"command    torchrun ...\n{start_age_line(3.44)}\n")
    notes = bench._run_notes("launcher-zero2", run_dir)
    assert notes[-2:] == ["the launcher's own process 3.4 s before torchrun",
                          "rank 0 ready 5.1 s after its start (imports 1.7 s)"]


# ---- bytecode ahead of the timed starts (bench/bytecode.py) -------------------------------------------------------
def test_bytecode_is_compiled_once_for_modules_that_lack_it_and_then_found_present(tmp_path):
    import importlib.util
    from pathlib import Path

    from bench.bytecode import compile_ahead, missing, package_dirs

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for path in (pkg / "__init__.py", pkg / "a.py", pkg / "sub" / "b.py"):
        path.write_text("VALUE = 1\n")
    assert missing([pkg]) == 3
    said = compile_ahead([pkg], workers=1)
    assert said.startswith("bytecode: 3 modules had none and were compiled ahead in ")
    assert "still lack" not in said
    assert Path(importlib.util.cache_from_source(str(pkg / "sub" / "b.py"))).is_file()
    assert missing([pkg]) == 0
    assert compile_ahead([pkg], workers=1) == "bytecode: already compiled for every package the rows import"
    (pkg / "broken.py").write_text("def (:\n")
    assert "1 still lack it" in compile_ahead([pkg], workers=1)
    assert Path(importlib.util.find_spec("bench").submodule_search_locations[0]) in package_dirs(("bench", "no_such"))
