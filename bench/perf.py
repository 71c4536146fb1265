"""The launcher against hand-written baselines on one model, side by side in one run (issues 10 and 27).

On a lent GPU machine, from the project root:  source .device/setup.sh && python3 bench/perf.py
Here, end to end on the CPU (gloo, 2 processes, a tiny model, a few steps):  python bench/perf.py --smoke

Every entry is its own process tree with its own timeout (one failure leaves a row saying so, not a lost table):
`python -m launcher` with +plan=zero2, +plan=zero3 and the extra plans of --candidates, and under torchrun the
baselines in bench/baselines/ (a DeepSpeed ZeRO-2 and ZeRO-3 loop with FusedAdam, FSDP2, HF Trainer + ZeRO-3).
All train the same Llama-shaped model from its config with the same micro batch of full seq_len rows (no padding),
one micro batch per step, bf16, AdamW, clipping 1.0; a step's time is the wall time between the ends of consecutive
steps, each end after a host sync. Three rows differ in batch: launcher-auto is `python -m launcher +plan=auto` with
the micro batch left to the launcher (auto) at a global batch of 32 sequences per GPU, launcher-auto-fp8 the same
with train.precision=fp8 (opt-in FP8 matmuls through torchao; GPUs of compute capability 8.9+), and ds-zero2-liger the
ZeRO-2 loop with liger-kernel's kernels at its best micro batch (4, 8 then 16, until one runs out of memory or is
slower). Every row's rate is its own tokens per step (bench/perf_table.py) over its median step time.
The table goes to the console and, on GPUs, is appended to bench/results/perf.md.
Launch overhead is the launcher's process start to its step 1 against torchrun's for the ZeRO-2 loop; checkpoint
save and load throughput come from the launcher's own log lines (the ZeRO-2 run, then the same run resumed).
The whole table stops starting new runs after --budget seconds (a lent machine allows 600 s per command); on 2 GPUs
it takes about 6-8 minutes, 1.1B-model checkpoints (16 GB) included. A run's logs: --logs DIR.

The whole table does not fit one 600 s command: split it over calls on one warm machine with --only (rows to run)
and --skip (rows, or the steps launcher-zero2-resume and startups, to leave out), and rerun the baseline rows in each
call and compare only within a call (the machine's speed drifts between calls). E.g. on 2 GPUs:
  python3 bench/perf.py --budget 535 --skip ds-zero2-liger,launcher-auto --record yes
  python3 bench/perf.py --budget 535 --only ds-zero2,ds-zero2-liger,launcher-zero2,launcher-auto \
      --skip launcher-zero2-resume --startups 0 --record yes
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.baselines.common import Spec  # noqa: E402
from bench.bytecode import compile_ahead  # noqa: E402
from bench.perf_table import Result, plan_notes, step_rows, table, targets, tokens_per_gpu  # noqa: E402

RESULTS = REPO / "bench" / "results" / "perf.md"
GPU_SPEC = Spec(hidden_size=2048, num_layers=16, num_heads=16, num_kv_heads=8, intermediate_size=8192,
                vocab_size=32000, seq_len=2048, micro_batch_size=4, steps=25, precision="bf16")
SMOKE_SPEC = Spec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=512,
                  seq_len=128, micro_batch_size=2, steps=4, precision="fp32")
BASELINES = {  # name: (script, arguments, what)
    "ds-zero2": ("ds_loop.py", ["--stage", "2"], "hand-written DeepSpeed ZeRO-2 loop"),
    "ds-zero3": ("ds_loop.py", ["--stage", "3"], "hand-written DeepSpeed ZeRO-3 loop"),
    "fsdp2": ("fsdp2.py", [], "torch FSDP2 fully_shard (bf16 compute, fp32 reduce)"),
    "hf-zero3": ("hf_trainer.py", [], "HF Trainer + DeepSpeed ZeRO-3 (LLaMA-Factory config)"),
    "ds-zero2-liger": ("ds_loop.py", ["--stage", "2", "--liger"],
                       "hand-written DeepSpeed ZeRO-2 loop + liger-kernel (RoPE, RMSNorm, SwiGLU, fused linear CE)"),
}
# ds-zero2-liger's micro batches, tried in this order for its best (--liger-micros): 32 fits a 141 GiB H200, where
# +plan=auto takes it too; on an 80 GiB H100 the sweep stops at its out-of-memory
LIGER_MICROS = (4, 8, 16, 32)
BATCH_KEYS = ("train.micro_batch_size=", "train.global_batch_size=")  # a --variant naming these sets its own batch
AUTO_GLOBAL_PER_GPU = 32  # launcher-auto's global batch in sequences per GPU: a realistic fine-tuning batch
SAVED = re.compile(r"saved checkpoint \S+ in ([\d.]+) s \(([\d.]+) GB, ([\d.]+) GB/s\)")
LOADED = re.compile(r"loaded in ([\d.]+) s \(([\d.]+) GB, ([\d.]+) GB/s\)")


def step_times_from_ends(first_start: float, ends: list[float]) -> list[float]:
    """Step k's time is end_k - end_(k-1): everything the loop does between two steps counts."""
    return [b - a for a, b in zip([first_start, *ends], ends)]


def run_tree(argv: list[str], env: dict[str, str], log: Path, timeout: float,
             done: Callable[[], bool] = lambda: False) -> tuple[int | None, float]:
    """Run argv with its output in `log` until it exits, `timeout` passes or done() says enough: then SIGKILL it and
    every process it started. Returns (exit code, None when killed; wall time at the spawn)."""
    from launcher.launch.spawn import kill_tree

    spawned = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while time.time() - spawned < timeout and not done():
            try:
                return proc.wait(timeout=0.5), spawned
            except subprocess.TimeoutExpired:
                continue
        kill_tree(proc.pid)
        proc.wait()
        return None, spawned


ERROR_LINE = re.compile(r"(\w+(Error|Exception)\b:|^error:|out of memory)", re.IGNORECASE)


def tail(path: Path, lines: int = 4) -> str:
    """The last error line of a log (torchrun's own summary skipped), else its last lines."""
    text = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()] if path.exists() else []
    errors = [x for x in text if ERROR_LINE.search(x) and "ChildFailedError" not in x]
    return (errors[-1] if errors else " | ".join(text[-lines:]))[-600:].replace("|", "/")


def sweep_summary(tried: list[tuple[int, Result]], first: int) -> str:
    """'4: 40,000 tok/s, 8: 45,000 tok/s, 16: out of memory': each micro batch a best-micro sweep tried."""

    def outcome(r: Result) -> str:
        if r.ok:
            return f"{r.rate(first):,.0f} tok/s"
        return "out of memory" if "out of memory" in r.error.lower() else f"failed ({r.error[:120]})"
    return ", ".join(f"{micro}: {outcome(r)}" for micro, r in tried)


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file another process may be writing (a last partial line waits)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(x) for x in text[:text.rfind("\n") + 1].splitlines() if x.strip()]


class Bench:
    def __init__(self, spec: Spec, smoke: bool, work: Path, nproc: int, timeout: float, env: dict[str, str],
                 first: int = 6) -> None:
        self.spec, self.smoke, self.work, self.nproc, self.timeout, self.env = spec, smoke, work, nproc, timeout, env
        self.first = first  # the median step time is of steps first..steps
        self.deadline = float("inf")
        self.liger_micros = LIGER_MICROS
        self.data = work / "data.jsonl"
        self.results: dict[str, Result] = {}
        self.extra: list[str] = []
        self.startups: dict[str, list[float]] = {}  # row -> process start to step 1, s (less FusedAdam's load)

    def budget(self) -> float:
        """Seconds a run may take: its own timeout, or what is left of the whole bench's time."""
        return min(self.timeout, self.deadline - time.time())

    # ---- the launcher -------------------------------------------------------------------------------------------
    def fixed_batch(self) -> list[str]:
        """The launcher rows' batch as perf.md's history has it: the spec's micro batch, one per step."""
        micro = self.spec.micro_batch_size
        return [f"train.micro_batch_size={micro}", f"train.global_batch_size={micro * self.nproc}"]

    def launcher_overrides(self, run_dir: Path, max_steps: int, batch: list[str] | None = None) -> list[str]:
        s = self.spec
        return [
            f"model.arch.hidden_size={s.hidden_size}", f"model.arch.num_layers={s.num_layers}",
            f"model.arch.num_heads={s.num_heads}", f"model.arch.num_kv_heads={s.num_kv_heads}",
            f"model.arch.intermediate_size={s.intermediate_size}", f"model.arch.vocab_size={s.vocab_size}",
            f"model.arch.max_position_embeddings={max(2048, s.seq_len)}",
            f"train.seq_len={s.seq_len}", *(self.fixed_batch() if batch is None else batch),
            f"train.max_steps={max_steps}",
            "train.save_every=0", f"train.lr={s.lr}", "train.warmup_steps=2", f"train.grad_clip={s.grad_clip}",
            f"train.precision={s.precision}", f"train.seed={s.seed}", "train.log_every=5",
            f"data.path={self.data}", "data.packing=false", "logging.wandb.mode=disabled",
            f"run.dir={run_dir}", *([] if self.smoke else [f"topo.gpus_per_host={self.nproc}"]),
        ]

    def launcher(self, name: str, plan: list[str], keep: bool = False, save: bool = True,
                 batch: list[str] | None = None) -> Result:
        """One launcher run; save=False stops it once its last step is logged (no final checkpoint to wait for);
        batch: its micro/global batch overrides, when not the spec's (fixed_batch)."""
        result = Result(name, f"launcher {' '.join(plan)}", optimizer="torch AdamW (fused on CUDA)")
        run_dir = self.work / "runs" / name
        argv = [sys.executable, "-m", "launcher", *self.launcher_overrides(run_dir, self.spec.steps, batch), *plan]
        steps = lambda: step_rows(read_jsonl(run_dir / "metrics.jsonl"))  # noqa: E731
        code, spawned = run_tree(argv, self.env, self.work / f"{name}.log", self.budget(),
                                 done=(lambda: False) if save else lambda: len(steps()) >= self.spec.steps)
        metrics = steps()
        if (code != 0 and save) or len(metrics) < self.spec.steps:
            result.error = ("timed out" if code is None else f"exit code {code}") + ": " + tail(self.work / f"{name}.log")
            return self._done(result, run_dir, keep=False)
        self._account(result, metrics, spawned)
        result.notes += self._run_notes(name, run_dir)
        return self._done(result, run_dir, keep)

    def _account(self, result: Result, steps: list[dict], spawned: float) -> None:
        """A launcher row's step times, peak memory, start-up and its own tokens per step and GPU (metrics.jsonl)."""
        first_start = steps[0]["time"] - steps[0]["step_time_s"]
        result.ok = True
        result.step_times = step_times_from_ends(first_start, [m["time"] for m in steps])
        result.peak_gib = max(m["memory_gb"] for m in steps)
        result.startup_s = first_start - spawned
        result.tokens_per_step = tokens_per_gpu(steps, self.nproc)

    def _run_notes(self, name: str, run_dir: Path) -> list[str]:
        """What the run dir says of a launcher row: its batch and plan (plan.json; why +plan=auto chose it goes
        below the table), liger's kernels, the SDPA kernel model.sdpa_backend chose, the launcher's own start-up and
        rank 0's, the checkpoint save."""
        plan = json.loads((run_dir / "plan.json").read_text())
        if plan.get("auto_reason"):
            note = plan.get("micro_batch_note") or "given"
            self.extra.append(f"{name}: {plan['auto_reason']} (train.micro_batch_size {note})")
        notes = plan_notes(plan)
        rank0 = (run_dir / "logs" / "rank0.log").read_text()
        kernels = re.search(r"liger-kernel: (.*)", rank0)
        notes.append(f"liger: {kernels.group(1)}" if kernels else "no liger")
        attention = re.search(r"attention: (.*)", rank0)
        if attention:
            notes.append(f"attention: {attention.group(1)}")
        own = self.work / f"{name}.log"
        starting = re.search(r"ranks starting ([\d.]+ s) after", own.read_text() if own.exists() else "")
        if starting:
            notes.append(f"the launcher's own process {starting.group(1)} before torchrun")
        ready = re.search(r"ready in ([\d.]+ s) since the rank started: (.*)", rank0)
        if ready:
            notes.append(f"rank 0 ready {ready.group(1)} after its start ({ready.group(2)})")
        saved = SAVED.search(rank0)
        if saved:
            notes.append(f"save {saved.group(2)} GB in {saved.group(1)} s = {saved.group(3)} GB/s")
        return notes

    def launcher_startup(self, stage: str, attempt: int) -> None:
        """One more start of `python -m launcher +plan=<stage>`, stopped at its first step (a fresh run dir)."""
        run_dir = self.work / "runs" / f"startup-{stage}-{attempt}"
        argv = [sys.executable, "-m", "launcher", *self.launcher_overrides(run_dir, self.spec.steps), f"+plan={stage}"]
        metrics_file = run_dir / "metrics.jsonl"
        first = lambda: json.loads(metrics_file.read_text().splitlines()[0])  # noqa: E731
        _, spawned = run_tree(argv, self.env, self.work / f"startup-{stage}-{attempt}.log", self.budget(),
                              done=lambda: metrics_file.exists() and bool(metrics_file.read_text().strip()))
        if metrics_file.exists() and metrics_file.read_text().strip():
            m = first()
            self.startups.setdefault(f"launcher-{stage}", []).append(m["time"] - m["step_time_s"] - spawned)
        shutil.rmtree(run_dir, ignore_errors=True)

    def baseline_startup(self, name: str, optimizer: str, attempt: int) -> None:
        """One more start of the same-stage loop under torchrun, one step long."""
        one_step = Bench(dataclasses.replace(self.spec, steps=1), self.smoke, self.work, self.nproc, self.timeout,
                         self.env)
        one_step.deadline = self.deadline
        r = one_step.baseline(name, optimizer, log_name=f"startup-{name}-{attempt}")
        if r.ok:
            self.startups.setdefault(name, []).append(r.startup_s - r.optimizer_s)

    def more_startups(self, repeats: int, optimizer: str) -> str:
        """Start-up is the one measure that varies by seconds from run to run here: each stage's launcher and plain
        loop start `repeats` more times, alternating, and the overhead compares medians."""
        for attempt in range(1, repeats + 1):
            for stage in ("zero3", "zero2"):
                if self.budget() < 60:
                    return f"stopped before attempt {attempt} of {repeats}: the bench's time budget ran out"
                self.baseline_startup(f"ds-{stage}", optimizer, attempt)
                self.launcher_startup(stage, attempt)
        return f"{repeats} more each"

    def launcher_resume(self, name: str, plan: list[str]) -> None:
        """Checkpoint load throughput: the same run one step longer resumes from the checkpoint `name` saved."""
        run_dir = self.work / "runs" / name
        if not (run_dir / "checkpoints").exists():
            return
        argv = [sys.executable, "-m", "launcher", *plan, *self.launcher_overrides(run_dir, self.spec.steps + 1)]
        rank0_log = run_dir / "logs" / "rank0.log"

        def rank0() -> str:
            return rank0_log.read_text() if rank0_log.exists() else ""

        # Stopped once the load is logged: the step and the save after it would only cost time.
        run_tree(argv, self.env, self.work / f"{name}-resume.log", self.budget(), done=lambda: bool(LOADED.search(rank0())))
        loaded = LOADED.search(rank0())
        if loaded:
            self.extra.append(f"checkpoint load ({name}, {loaded.group(2)} GB, file cache warm from the save): "
                              f"{loaded.group(1)} s = {loaded.group(3)} GB/s")
        else:
            self.extra.append(f"checkpoint load ({name}): failed, {tail(self.work / f'{name}-resume.log')}")
        self._drop(run_dir, name)

    def _drop(self, run_dir: Path, name: str) -> None:
        """The run dir goes (a checkpoint of the 1.1B model is 16 GB); its rank logs stay in the work dir."""
        for log in sorted([*(run_dir / "logs").glob("*"), *(run_dir / "profile").glob("*")]):
            if log.is_file():
                shutil.copy(log, self.work / f"{name}-{log.name}")
        shutil.rmtree(run_dir, ignore_errors=True)

    def _done(self, result: Result, run_dir: Path, keep: bool) -> Result:
        if not keep:
            self._drop(run_dir, result.name)
        self.results[result.name] = result
        return result

    # ---- the baselines ------------------------------------------------------------------------------------------
    def baseline(self, name: str, optimizer: str, log_name: str = "", micro: int = 0) -> Result:
        """One baseline under torchrun at the spec's micro batch, or `micro`; skipped where the script says it cannot
        run here (ds-zero2-liger without liger-kernel or CUDA)."""
        script, args, what = BASELINES[name]
        spec = dataclasses.replace(self.spec, micro_batch_size=micro or self.spec.micro_batch_size)
        result = self.results[name] = Result(name, what)
        log_name = log_name or name
        out = self.work / f"{log_name}.json"
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                str(REPO / "bench" / "baselines" / script), *args, "--spec", json.dumps(dataclasses.asdict(spec)),
                "--out", str(out)]
        if script == "ds_loop.py":
            argv += ["--optimizer", optimizer]
        code, spawned = run_tree(argv, self.env, self.work / f"{log_name}.log", self.budget())
        if code != 0 or not out.exists():
            result.error = ("timed out" if code is None else f"exit code {code}") + ": " + tail(self.work / f"{log_name}.log")
            return result
        r = json.loads(out.read_text())
        if "skipped" in r:
            result.skipped = r["skipped"]
            return result
        self._read_baseline(result, r, spawned)
        return result

    def _read_baseline(self, result: Result, r: dict, spawned: float) -> None:
        """A baseline row from what its rank 0 wrote: step ends, peak memory, optimizer, its own tokens per step."""
        result.ok = len(r["step_ends"]) >= self.spec.steps
        result.error = "" if result.ok else f"only {len(r['step_ends'])} steps"
        result.step_times = step_times_from_ends(r["first_step_start"], r["step_ends"])
        result.tokens_per_step = r["tokens_per_step"]
        result.peak_gib = r["peak_gib"]
        result.startup_s = r["first_step_start"] - spawned
        result.optimizer = r.get("optimizer", "")
        marks = r.get("marks", {})
        if "optimizer_built" in marks and "model_built" in marks:
            result.optimizer_s = marks["optimizer_built"] - marks["model_built"]
            result.notes.append(f"optimizer built in {result.optimizer_s:.1f} s")

    def best_micro(self, name: str, optimizer: str) -> Result:
        """A baseline at its best micro batch: LIGER_MICROS in turn, stopping at the first that fails (out of memory)
        or is slower than the one before; the fastest is the row, every try in its notes."""
        tried: list[tuple[int, Result]] = []
        out_of_time = False
        for micro in self.liger_micros:
            if tried and self.budget() < 60:
                out_of_time = True
                break
            r = self.baseline(name, optimizer, log_name=f"{name}-micro{micro}", micro=micro)
            tried.append((micro, r))
            if not r.ok or (len(tried) > 1 and self._speed(r) <= self._speed(tried[-2][1])):
                break
        micro, best = max(tried, key=lambda t: self._speed(t[1]))
        if best.ok:
            stop = "; the bench's time budget stopped the sweep" if out_of_time else ""
            best.notes.insert(0, f"micro batch {micro}, best of {sweep_summary(tried, self.first)}{stop}")
        self.results[name] = best
        return best

    def _speed(self, r: Result) -> float:
        return r.rate(self.first) or 0.0

    def fused_adam_warmup(self) -> str:
        """Build (or load) DeepSpeed's FusedAdam op once, outside any timed run: 'fused', or 'torch' when it fails."""
        code = "import time; t = time.time(); from deepspeed.ops.op_builder import FusedAdamBuilder; " \
               "FusedAdamBuilder().load(); print(f'FusedAdam ready in {time.time() - t:.1f} s')"
        log = self.work / "fused_adam.log"
        rc, _ = run_tree([sys.executable, "-c", code], self.env, log, min(self.budget(), 420))
        line = tail(log, 1)
        self.extra.append(f"DeepSpeed FusedAdam op: {line if rc == 0 else 'could not be built (' + line + '); the DeepSpeed baselines use torch fused AdamW instead'}")
        return "fused" if rc == 0 else "torch"

    # ---- data ---------------------------------------------------------------------------------------------------
    def write_data(self, rows: int = 64) -> None:
        """Alpaca rows whose answers run past seq_len: every row is cut to exactly seq_len tokens, like the random
        full rows of the baselines (the shipped tokenizer's ids; the model's vocabulary is the spec's)."""
        from launcher.data.formats import to_messages
        from launcher.data.tokenization import build_examples, load_tokenizer

        rng = random.Random(self.spec.seed)
        letters = "etaoinshrdlucmfwypvbgkjqxz"
        words = self.spec.seq_len * 2 // 3

        def text() -> str:
            return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(words))

        data = [{"instruction": "Continue the text.", "output": text()} for _ in range(rows)]
        examples = build_examples(load_tokenizer(""), [to_messages(r, "alpaca", i + 1) for i, r in enumerate(data)],
                                  self.spec.seq_len)
        short = [len(e.input_ids) for e in examples if len(e.input_ids) < self.spec.seq_len]
        if len(examples) != rows or short:
            raise SystemExit(f"bench data: {len(short)} rows shorter than seq_len {self.spec.seq_len}")
        self.data.write_text("".join(json.dumps(r) + "\n" for r in data))


# ---- the table ----------------------------------------------------------------------------------------------------
def mfu_per_token(spec: Spec) -> tuple[float, int]:
    from launcher.config.schema import ArchConfig
    from launcher.plan.memory import count_params
    from launcher.train.metrics import flops_per_token

    arch = ArchConfig(hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
                      num_kv_heads=spec.num_kv_heads, intermediate_size=spec.intermediate_size,
                      vocab_size=spec.vocab_size)
    params = count_params(arch)
    return flops_per_token(arch, params, spec.seq_len), params


# ---- the machine --------------------------------------------------------------------------------------------------
def gpus() -> tuple[int, str, str]:
    """(count, name, driver) from nvidia-smi; no CUDA context in this process."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return 0, "cpu", ""
    if not out:
        return 0, "cpu", ""
    name, memory, driver = (x.strip() for x in out[0].split(","))
    return len(out), f"{name} {memory}", driver


def versions() -> str:
    from importlib import metadata

    import torch

    parts = [f"python {sys.version.split()[0]}", f"torch {torch.__version__}"]
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
    for package in ("deepspeed", "transformers", "liger-kernel", "torchao"):
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package} not installed")
    return ", ".join(parts)


def variant(text: str) -> tuple[str, str]:
    """--variant 'z3c=+plan=zero3 plan.compile=torch' -> ('z3c', '+plan=zero3 plan.compile=torch')."""
    name, _, overrides = text.partition("=")
    if not re.fullmatch(r"[\w.-]+", name) or not overrides.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=OVERRIDES, e.g. 'z3c=+plan=zero3 plan.compile=torch' "
                                         "(NAME: letters, digits, '.', '_', '-'; the row is launcher-NAME)")
    return name, overrides


MAIN_ROWS = ["ds-zero2", "launcher-zero2", "fsdp2", "ds-zero3", "launcher-zero3", "hf-zero3"]
ORDER = [*MAIN_ROWS, "ds-zero2-liger", "launcher-auto", "launcher-auto-fp8"]
STEPS = ("launcher-zero2-resume", "startups")  # not rows: the checkpoint load and the extra start-ups
SMOKE_SKIPS = {"hf-zero3": "GPU only: on the CPU accelerate runs the Trainer as one process beside DeepSpeed's two",
               "launcher-auto-fp8": "GPU only: FP8 matmuls need compute capability 8.9 or newer"}


def plan_rows(only: set[str], skip: set[str], candidates: list[str], variants: list[str], startups: int) -> list[str]:
    """What runs, in order: the main rows, the checkpoint load and start-ups (with launcher-zero2, right after the
    main rows), the liger and auto rows, candidates, variants; --only picks rows, --skip drops rows or STEPS
    (`--only startups`: the extra start-ups alone)."""
    rows = [n for n in ORDER + candidates if not only or n in only] + variants
    steps = (["launcher-zero2-resume"] if "launcher-zero2" in rows else []) \
        + (["startups"] if startups and ("launcher-zero2" in rows or "startups" in only) else [])
    at = max((rows.index(n) + 1 for n in rows if n in MAIN_ROWS), default=0)
    return [n for n in [*rows[:at], *steps, *rows[at:]] if n not in skip]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, 2 gloo processes, a few steps")
    p.add_argument("--only", default="", help="comma-separated rows to run (default: all), e.g. launcher-zero2,ds-zero2")
    p.add_argument("--skip", default="", help="comma-separated rows, or launcher-zero2-resume / startups, to leave out "
                   "(splitting the table over calls: see the module docstring)")
    p.add_argument("--candidates", default="", help="more launcher plans for the best row, comma-separated (zero1,ddp)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES", type=variant,
                   help="a launcher row `launcher-NAME` with these space-separated overrides, e.g. "
                   "'z3c=+plan=zero3 plan.compile=torch' (repeatable; stopped after its last step, no save); "
                   "with train.micro_batch_size= and train.global_batch_size= among them it runs that batch")
    p.add_argument("--liger-micros", default=",".join(map(str, LIGER_MICROS)),
                   help="ds-zero2-liger's micro batches to try, in order (e.g. 16 when its best is known)")
    p.add_argument("--timeout", type=float, default=0, help="seconds per run (default 240 on GPUs, 420 smoke)")
    p.add_argument("--budget", type=float, default=0, help="seconds for everything: later runs are skipped, the table "
                   "still printed (default 480 on GPUs: a lent machine's command limit is 600 s)")
    p.add_argument("--steps", type=int, default=0, help="steps per run (default 25; the median is of steps 6+)")
    p.add_argument("--startups", type=int, default=-1, help="more start-ups of launcher-zero2/3 and ds-zero2/3, each "
                   "stopped at step 1, for the launch overhead's medians (default 2 on GPUs, 0 smoke)")
    p.add_argument("--logs", default="", help="copy every run's log (and the launcher's rank logs) into this folder")
    p.add_argument("--record", choices=("auto", "yes", "no"), default="auto",
                   help=f"append to {RESULTS.relative_to(REPO)} (auto: on GPUs, without --only, when a row ran)")
    return p.parse_args()


def child_env(smoke: bool, work: Path) -> dict[str, str]:
    """The environment of every run: this one, wandb off, the repo importable, DeepSpeed-safe CUDA arch list."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if env.get("TORCH_CUDA_ARCH_LIST"):  # DeepSpeed's op builder fails on suffixed entries (9.0a); the launcher strips
        from launcher.render.env import sanitize_arch_list  # them for its ranks, the baselines get the same

        env["TORCH_CUDA_ARCH_LIST"] = sanitize_arch_list(env["TORCH_CUDA_ARCH_LIST"])
    if smoke:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env["LAUNCHER_CACHE_DIR"] = str(work / "data-cache")  # cold: the first launcher row tokenizes, later ones read it
    return env


def run_row(bench: Bench, name: str, variants: dict[str, str], optimizer: str) -> Result:
    """One row of the table, by its name."""
    if name.removeprefix("launcher-") in variants:  # its own batch when it names one, else the spec's
        overrides = variants[name.removeprefix("launcher-")].split()
        batch = [o for o in overrides if o.startswith(BATCH_KEYS)]
        return bench.launcher(name, [o for o in overrides if o not in batch], save=False, batch=batch or None)
    if name in ("launcher-auto", "launcher-auto-fp8"):  # the micro batch left to the launcher
        fp8 = ["train.precision=fp8"] if name.endswith("fp8") else []
        return bench.launcher(name, ["+plan=auto", *fp8], save=False,
                              batch=[f"train.global_batch_size={AUTO_GLOBAL_PER_GPU * bench.nproc}"])
    if name.startswith("launcher-"):
        return bench.launcher(name, [f"+plan={name.removeprefix('launcher-')}"], keep=name == "launcher-zero2")
    if name == "ds-zero2-liger":
        return bench.best_micro(name, optimizer)
    return bench.baseline(name, optimizer)


def run_step(bench: Bench, name: str, args: argparse.Namespace, variants: dict[str, str], optimizer: str) -> str:
    """Run one entry of plan_rows (a row or a STEP) and say how it went, for the console."""
    if name in SMOKE_SKIPS and args.smoke or bench.budget() < 30:
        why = SMOKE_SKIPS[name] if args.smoke and name in SMOKE_SKIPS else "the bench's time budget ran out"
        if name != "launcher-zero2-resume":
            bench.results[name] = Result(name, BASELINES.get(name, ("", [], name))[2], skipped=why)
        else:
            bench.extra.append(f"checkpoint load: skipped ({why})")
        return f"skipped ({why})"
    if name == "startups":
        return bench.more_startups(args.startups, optimizer)
    if name == "launcher-zero2-resume":
        bench.launcher_resume("launcher-zero2", ["+plan=zero2"])
        return bench.extra[-1]
    try:
        r = run_row(bench, name, variants, optimizer)
    except Exception as err:  # a bug here must not cost the other rows of a scarce GPU run
        r = bench.results[name] = Result(name, name, error=f"bench error: {type(err).__name__}: {err}")
    if r.ok and name in ("launcher-zero2", "launcher-zero3", "ds-zero2", "ds-zero3"):
        bench.startups.setdefault(name, []).append(r.startup_s - r.optimizer_s)
    if r.skipped:
        return f"skipped ({r.skipped})"
    return f"{r.rate(bench.first) or 0:,.0f} tokens/s per GPU" if r.ok else f"FAILED: {r.error}"


def report(bench: Bench, device: str, driver: str, peak: float | None, started: float) -> str:
    """The markdown section for perf.md: the setup in words, the table, the targets and the extra measures."""
    spec, first, nproc = bench.spec, bench.first, bench.nproc
    per_token, params = mfu_per_token(spec)
    lines = targets(bench.results, first, bench.startups, per_token, peak) + [f"- {x}" for x in bench.extra]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = (f"## {stamp}, {nproc}x {device}{f', driver {driver}' if driver else ''}"
             f"{' (smoke: CPU, tiny model)' if bench.smoke else ''}")
    mfu = f"MFU against {peak / 1e12:.0f} TFLOPS bf16 per GPU (launcher/train/metrics.py)" if peak else "no MFU on CPU"
    return (f"{title}\n\n{versions()}\n\n`{' '.join(['python3', 'bench/perf.py', *sys.argv[1:]])}`: Llama-shaped "
            f"model of {params / 1e9:.2f}B parameters (hidden {spec.hidden_size}, {spec.num_layers} layers, "
            f"{spec.num_heads} heads, {spec.num_kv_heads} KV heads, FFN {spec.intermediate_size}, vocab "
            f"{spec.vocab_size}), seq {spec.seq_len}, micro batch {spec.micro_batch_size} per GPU, 1 micro batch per "
            f"step (launcher-auto: global batch {AUTO_GLOBAL_PER_GPU} per GPU, micro batch auto; ds-zero2-liger: its "
            f"best micro batch; each row's rate from its own tokens per step), {spec.precision}, median step of steps "
            f"{first}-{spec.steps}; peak GiB = max_memory_allocated of rank 0; {mfu}; "
            f"took {(time.time() - started) / 60:.1f} min.\n\n{table(bench.results, first, per_token, peak)}\n\n"
            + "\n".join(lines) + "\n")


def keep(bench: Bench, body: str, args: argparse.Namespace, only: set[str]) -> None:
    """The section appended to perf.md (GPUs, full table, or --record yes) and the logs copied to --logs."""
    record = args.record == "yes" or (args.record == "auto" and not args.smoke and not only
                                      and any(r.ok for r in bench.results.values()))
    if record:
        with open(RESULTS, "a") as f:
            f.write("\n" + body)
        print(f"appended to {RESULTS}")
    elif not args.smoke:
        print(f"not appended to {RESULTS.relative_to(REPO)} (--only, or nothing ran): --record yes appends it anyway")
    if args.logs:
        logs = Path(args.logs)
        logs.mkdir(parents=True, exist_ok=True)
        for path in [*bench.work.glob("*.log"), *bench.work.glob("*.out"), *bench.work.glob("*.json"),
                     *bench.work.glob("*.txt"), *bench.work.glob("*.json.gz")]:  # profiles of train.profile_steps
            shutil.copy(path, logs / path.name)
        (logs / "perf.md").write_text(body)


def main() -> int:
    args = parse_args()
    count, device, driver = (0, "cpu", "") if args.smoke else gpus()
    if not args.smoke and count == 0:
        print("no GPU found: run with --smoke for the CPU check", file=sys.stderr)
        return 2
    spec = SMOKE_SPEC if args.smoke else GPU_SPEC
    if args.steps:
        spec = dataclasses.replace(spec, steps=args.steps)
    if args.startups < 0:
        args.startups = 0 if args.smoke else 2
    nproc = 2 if args.smoke else count
    work = Path(tempfile.mkdtemp(prefix="launcher-perf-"))
    started = time.time()
    bench = Bench(spec, args.smoke, work, nproc, args.timeout or (420 if args.smoke else 240),
                  child_env(args.smoke, work), first=2 if args.smoke else 6)
    bench.deadline = started + (args.budget or (10**6 if args.smoke else 480))
    bench.liger_micros = tuple(int(m) for m in args.liger_micros.split(","))
    only, skip = set(filter(None, args.only.split(","))), set(filter(None, args.skip.split(",")))
    candidates = [f"launcher-{c}" for c in args.candidates.split(",") if c and c not in ("zero2", "zero3", "auto")]
    variants = dict(args.variant)
    rows = plan_rows(only, skip, candidates, [f"launcher-{v}" for v in variants], args.startups)

    print(f"work dir {work}; {nproc} x {device}; {versions()}", flush=True)
    if not args.smoke:  # the CPU smoke run's venv comes from pip, bytecode included
        bench.extra.append(compile_ahead())
        print(bench.extra[-1], flush=True)
    bench.write_data()
    optimizer = "fused" if not args.smoke and {"ds-zero2", "ds-zero3", "ds-zero2-liger"} & set(rows) else "torch"
    if optimizer == "fused":
        optimizer = bench.fused_adam_warmup()
    for name in rows:
        t = time.time()
        print(f"{name}: {run_step(bench, name, args, variants, optimizer)} ({time.time() - t:.0f} s)", flush=True)

    from launcher.train.metrics import peak_flops as peak_of

    body = report(bench, device, driver, peak_of(device) if not args.smoke else None, started)
    print("\n" + body)
    keep(bench, body, args, only)
    complete = all(r.ok or r.skipped for r in bench.results.values())
    if complete:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs kept in {work}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
