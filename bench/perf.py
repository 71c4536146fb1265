"""The launcher against hand-written baselines on one model, side by side in one run (issue 10).

On a lent GPU machine, from the project root:  source .device/setup.sh && python3 bench/perf.py
Here, end to end on the CPU (gloo, 2 processes, a tiny model, a few steps):  python bench/perf.py --smoke

Every entry is its own process tree with its own timeout (one failure leaves a row saying so, not a lost table):
`python -m launcher` with +plan=zero2, +plan=zero3 and the extra plans of --candidates, and under torchrun the
baselines in bench/baselines/ (a DeepSpeed ZeRO-2 and ZeRO-3 loop with FusedAdam, FSDP2, HF Trainer + ZeRO-3).
All train the same Llama-shaped model from its config with the same micro batch of full seq_len rows (no padding),
one micro batch per step, bf16, AdamW, clipping 1.0; a step's time is the wall time between the ends of consecutive
steps, each end after a host sync. The table goes to the console and, on GPUs, is appended to bench/results/perf.md.
Launch overhead is the launcher's process start to its step 1 against torchrun's for the ZeRO-2 loop; checkpoint
save and load throughput come from the launcher's own log lines (the ZeRO-2 run, then the same run resumed).
The whole table stops starting new runs after --budget seconds (a lent machine allows 600 s per command); on 2 GPUs
it takes about 6-8 minutes, 1.1B-model checkpoints (16 GB) included. A run's logs: --logs DIR.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.baselines.common import Spec  # noqa: E402

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
}
TARGETS = [  # (launcher row, baseline row, minimum ratio)
    ("launcher-zero2", "ds-zero2", 1.0), ("launcher-zero2", "fsdp2", 1.0), ("launcher-zero3", "ds-zero3", 1.0),
    ("launcher-zero3", "hf-zero3", 1.5), ("best", "hf-zero3", 1.5),
]
SAVED = re.compile(r"saved checkpoint \S+ in ([\d.]+) s \(([\d.]+) GB, ([\d.]+) GB/s\)")
LOADED = re.compile(r"loaded in ([\d.]+) s \(([\d.]+) GB, ([\d.]+) GB/s\)")


@dataclass
class Result:
    name: str
    what: str
    ok: bool = False
    error: str = ""
    step_times: list[float] = field(default_factory=list)
    peak_gib: float | None = None
    startup_s: float | None = None  # process start -> start of step 1
    optimizer: str = ""
    optimizer_s: float = 0.0  # of startup_s, building or loading the optimizer (FusedAdam's op)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""

    def median_step(self, first: int) -> float | None:
        steady = self.step_times[first - 1:]
        return statistics.median(steady) if self.ok and steady else None


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


class Bench:
    def __init__(self, spec: Spec, smoke: bool, work: Path, nproc: int, timeout: float, env: dict[str, str]) -> None:
        self.spec, self.smoke, self.work, self.nproc, self.timeout, self.env = spec, smoke, work, nproc, timeout, env
        self.deadline = float("inf")
        self.data = work / "data.jsonl"
        self.results: dict[str, Result] = {}
        self.extra: list[str] = []
        self.startups: dict[str, list[float]] = {}  # row -> process start to step 1, s (less FusedAdam's load)

    def budget(self) -> float:
        """Seconds a run may take: its own timeout, or what is left of the whole bench's time."""
        return min(self.timeout, self.deadline - time.time())

    # ---- the launcher -------------------------------------------------------------------------------------------
    def launcher_overrides(self, run_dir: Path, max_steps: int) -> list[str]:
        s = self.spec
        return [
            f"model.arch.hidden_size={s.hidden_size}", f"model.arch.num_layers={s.num_layers}",
            f"model.arch.num_heads={s.num_heads}", f"model.arch.num_kv_heads={s.num_kv_heads}",
            f"model.arch.intermediate_size={s.intermediate_size}", f"model.arch.vocab_size={s.vocab_size}",
            f"model.arch.max_position_embeddings={max(2048, s.seq_len)}",
            f"train.seq_len={s.seq_len}", f"train.micro_batch_size={s.micro_batch_size}",
            f"train.global_batch_size={s.micro_batch_size * self.nproc}", f"train.max_steps={max_steps}",
            "train.save_every=0", f"train.lr={s.lr}", "train.warmup_steps=2", f"train.grad_clip={s.grad_clip}",
            f"train.precision={s.precision}", f"train.seed={s.seed}", "train.log_every=5",
            f"data.path={self.data}", "data.packing=false", "logging.wandb.mode=disabled",
            f"run.dir={run_dir}", *([] if self.smoke else [f"topo.gpus_per_host={self.nproc}"]),
        ]

    def launcher(self, name: str, plan: list[str], keep: bool = False, save: bool = True) -> Result:
        """One launcher run; save=False stops it once its last step is logged (no final checkpoint to wait for)."""
        result = Result(name, f"launcher {' '.join(plan)}", optimizer="torch AdamW (fused on CUDA)")
        run_dir = self.work / "runs" / name
        argv = [sys.executable, "-m", "launcher", *self.launcher_overrides(run_dir, self.spec.steps), *plan]
        metrics_file = run_dir / "metrics.jsonl"

        def read_metrics() -> list[dict]:
            return [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()] \
                if metrics_file.exists() else []

        code, spawned = run_tree(argv, self.env, self.work / f"{name}.log", self.budget(),
                                 done=(lambda: False) if save else lambda: len(read_metrics()) >= self.spec.steps)
        metrics = read_metrics()
        if (code != 0 and save) or len(metrics) < self.spec.steps:
            result.error = ("timed out" if code is None else f"exit code {code}") + ": " + tail(self.work / f"{name}.log")
            return self._done(result, run_dir, keep=False)
        first_start = metrics[0]["time"] - metrics[0]["step_time_s"]
        result.ok = True
        result.step_times = step_times_from_ends(first_start, [m["time"] for m in metrics])
        result.peak_gib = max(m["memory_gb"] for m in metrics)
        result.startup_s = first_start - spawned
        expected = self.spec.micro_batch_size * self.spec.seq_len * self.nproc
        if metrics[-1]["tokens"] != expected:
            result.notes.append(f"tokens/step {metrics[-1]['tokens']} != {expected}")
        rank0 = (run_dir / "logs" / "rank0.log").read_text()
        kernels = re.search(r"liger-kernel: (.*)", rank0)
        result.notes.append(f"liger: {kernels.group(1)}" if kernels else "no liger")
        ready = re.search(r"ready in ([\d.]+ s) since the rank started: (.*)", rank0)
        if ready:
            result.notes.append(f"rank 0 ready {ready.group(1)} after its start ({ready.group(2)})")
        saved = SAVED.search(rank0)
        if saved:
            result.notes.append(f"save {saved.group(2)} GB in {saved.group(1)} s = {saved.group(3)} GB/s")
        return self._done(result, run_dir, keep)

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
    def baseline(self, name: str, optimizer: str, log_name: str = "") -> Result:
        script, args, what = BASELINES[name]
        result = Result(name, what)
        log_name = log_name or name
        out = self.work / f"{log_name}.json"
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                str(REPO / "bench" / "baselines" / script), *args, "--spec", json.dumps(dataclasses.asdict(self.spec)),
                "--out", str(out)]
        if script == "ds_loop.py":
            argv += ["--optimizer", optimizer]
        code, spawned = run_tree(argv, self.env, self.work / f"{log_name}.log", self.budget())
        if code != 0 or not out.exists():
            result.error = ("timed out" if code is None else f"exit code {code}") + ": " + tail(self.work / f"{log_name}.log")
            self.results[name] = result
            return result
        r = json.loads(out.read_text())
        result.ok = len(r["step_ends"]) >= self.spec.steps
        result.error = "" if result.ok else f"only {len(r['step_ends'])} steps"
        result.step_times = step_times_from_ends(r["first_step_start"], r["step_ends"])
        result.peak_gib = r["peak_gib"]
        result.startup_s = r["first_step_start"] - spawned
        result.optimizer = r.get("optimizer", "")
        marks = r.get("marks", {})
        if "optimizer_built" in marks and "model_built" in marks:
            result.optimizer_s = marks["optimizer_built"] - marks["model_built"]
            result.notes.append(f"optimizer built in {result.optimizer_s:.1f} s")
        self.results[name] = result
        return result

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


def table(bench: Bench, first: int, peak_flops: float | None) -> tuple[str, dict[str, float]]:
    spec = bench.spec
    per_token, _ = mfu_per_token(spec)
    tokens_per_step = spec.micro_batch_size * spec.seq_len
    rate = {n: tokens_per_step / r.median_step(first) for n, r in bench.results.items() if r.median_step(first)}
    launcher_rows = [n for n in rate if n.startswith("launcher-")]
    if launcher_rows:
        rate["best"] = max(rate[n] for n in launcher_rows)
    lines = ["| run | what | optimizer | tokens/s per GPU | MFU | peak GiB | step s | start to step 1 s | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in bench.results.items():
        if not r.ok:
            status = f"skipped | | | | | {r.skipped}" if r.skipped else f"failed | | | | | {r.error}"
            lines.append(f"| {name} | {r.what} | {r.optimizer} | {status} |")
            continue
        mfu = f"{rate[name] * per_token / peak_flops:.1%}" if peak_flops else "n/a"
        lines.append(f"| {name} | {r.what} | {r.optimizer} | {rate[name]:,.0f} | {mfu} | {r.peak_gib:.1f} | "
                     f"{r.median_step(first):.3f} | {r.startup_s:.1f} | {'; '.join(r.notes)} |")
    return "\n".join(lines), rate


def targets(bench: Bench, rate: dict[str, float], peak_flops: float | None) -> list[str]:
    out = []
    launcher_rows = {n: v for n, v in rate.items() if n.startswith("launcher-")}
    best = max(launcher_rows, key=launcher_rows.get) if launcher_rows else None
    for mine, theirs, minimum in TARGETS:
        label = f"best ({best})" if mine == "best" else mine
        if mine in rate and theirs in rate:
            ratio = rate[mine] / rate[theirs]
            out.append(f"- {label} / {theirs}: {ratio:.2f}x (target >= {minimum}x): {'met' if ratio >= minimum else 'MISSED'}")
        else:
            out.append(f"- {label} / {theirs}: not measured (a row failed or was skipped)")
    if peak_flops and "launcher-zero2" in rate:
        per_token, _ = mfu_per_token(bench.spec)
        mfu = rate["launcher-zero2"] * per_token / peak_flops
        out.append(f"- launcher-zero2 MFU: {mfu:.1%} (target >= 45%): {'met' if mfu >= 0.45 else 'MISSED'}")
        if best and best != "launcher-zero2":
            mfu = rate[best] * per_token / peak_flops
            out.append(f"- best ({best}) MFU: {mfu:.1%} (target >= 45%): {'met' if mfu >= 0.45 else 'MISSED'}")
    for stage in ("zero2", "zero3"):  # the launcher's start against the same-stage loop's, both under torchrun
        mine, plain = bench.startups.get(f"launcher-{stage}", []), bench.startups.get(f"ds-{stage}", [])
        if mine and plain:
            extra = statistics.median(mine) - statistics.median(plain)
            out.append(f"- launch overhead ({stage}): `python -m launcher` to step 1 {startups(mine)}, torchrun "
                       f"ds_loop.py (same model, less loading FusedAdam) {startups(plain)}: {extra:+.1f} s "
                       f"(target <= +3 s): {'met' if extra <= 3 else 'MISSED'}")
    return out


def startups(samples: list[float]) -> str:
    """'median 24.1 s of 3 (31.2, 22.0, 24.1)': one start on these machines varies by seconds."""
    listed = ", ".join(f"{x:.1f}" for x in samples)
    return f"median {statistics.median(samples):.1f} s of {len(samples)} ({listed})"


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
    for package in ("deepspeed", "transformers", "liger-kernel"):
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


ORDER = ["ds-zero2", "launcher-zero2", "fsdp2", "ds-zero3", "launcher-zero3", "hf-zero3"]
SMOKE_SKIPS = {"hf-zero3": "GPU only: on the CPU accelerate runs the Trainer as one process beside DeepSpeed's two"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, 2 gloo processes, a few steps")
    p.add_argument("--only", default="", help="comma-separated rows to run (default: all), e.g. launcher-zero2,ds-zero2")
    p.add_argument("--candidates", default="", help="more launcher plans for the best row, comma-separated (zero1,ddp)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES", type=variant,
                   help="a launcher row `launcher-NAME` with these space-separated overrides, e.g. "
                   "'z3c=+plan=zero3 plan.compile=torch' (repeatable; stopped after its last step, no save)")
    p.add_argument("--timeout", type=float, default=0, help="seconds per run (default 240 on GPUs, 420 smoke)")
    p.add_argument("--budget", type=float, default=0, help="seconds for everything: later runs are skipped, the table "
                   "still printed (default 480 on GPUs: a lent machine's command limit is 600 s)")
    p.add_argument("--steps", type=int, default=0, help="steps per run (default 25; the median is of steps 6+)")
    p.add_argument("--startups", type=int, default=-1, help="more start-ups of launcher-zero2/3 and ds-zero2/3, each "
                   "stopped at step 1, for the launch overhead's medians (default 2 on GPUs, 0 smoke)")
    p.add_argument("--logs", default="", help="copy every run's log (and the launcher's rank logs) into this folder")
    p.add_argument("--record", choices=("auto", "yes", "no"), default="auto",
                   help=f"append to {RESULTS.relative_to(REPO)} (auto: on GPUs, without --only, when a row ran)")
    args = p.parse_args()

    count, device, driver = (0, "cpu", "") if args.smoke else gpus()
    if not args.smoke and count == 0:
        print("no GPU found: run with --smoke for the CPU check", file=sys.stderr)
        return 2
    spec = SMOKE_SPEC if args.smoke else GPU_SPEC
    if args.steps:
        spec = dataclasses.replace(spec, steps=args.steps)
    first = 2 if args.smoke else 6
    if args.startups < 0:
        args.startups = 0 if args.smoke else 2
    nproc = 2 if args.smoke else count
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if env.get("TORCH_CUDA_ARCH_LIST"):  # DeepSpeed's op builder fails on suffixed entries (9.0a); the launcher strips
        from launcher.render.env import sanitize_arch_list  # them for its ranks, the baselines get the same

        env["TORCH_CUDA_ARCH_LIST"] = sanitize_arch_list(env["TORCH_CUDA_ARCH_LIST"])
    if args.smoke:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    work = Path(tempfile.mkdtemp(prefix="launcher-perf-"))
    env["LAUNCHER_CACHE_DIR"] = str(work / "data-cache")  # cold: the first launcher row tokenizes, later ones read it
    started = time.time()
    bench = Bench(spec, args.smoke, work, nproc, args.timeout or (420 if args.smoke else 240), env)
    bench.deadline = started + (args.budget or (10**6 if args.smoke else 480))
    only = set(filter(None, args.only.split(",")))
    candidates = [f"launcher-{c}" for c in args.candidates.split(",") if c and c not in ("zero2", "zero3")]
    variants = dict(args.variant)
    rows = [n for n in ORDER + candidates if not only or n in only] + [f"launcher-{v}" for v in variants]

    print(f"work dir {work}; {nproc} x {device}; {versions()}", flush=True)
    bench.write_data()
    optimizer = "fused" if not args.smoke and {"ds-zero2", "ds-zero3"} & set(rows) else "torch"
    if optimizer == "fused":
        optimizer = bench.fused_adam_warmup()
    if "launcher-zero2" in rows:  # the load right after the main rows: the variants come last, as time allows
        at = max(rows.index(n) for n in rows if n in ORDER) + 1
        rows = [*rows[:at], "launcher-zero2-resume", *(["startups"] if args.startups else []), *rows[at:]]
    for name in rows:
        t = time.time()
        if name in SMOKE_SKIPS and args.smoke or bench.budget() < 30:
            why = SMOKE_SKIPS[name] if args.smoke and name in SMOKE_SKIPS else "the bench's time budget ran out"
            if name != "launcher-zero2-resume":
                bench.results[name] = Result(name, BASELINES.get(name, ("", [], name))[2], skipped=why)
            else:
                bench.extra.append(f"checkpoint load: skipped ({why})")
            print(f"{name}: skipped ({why})", flush=True)
            continue
        if name == "startups":
            print(f"start-ups: {bench.more_startups(args.startups, optimizer)} ({time.time() - t:.0f} s)", flush=True)
            continue
        if name == "launcher-zero2-resume":
            bench.launcher_resume("launcher-zero2", ["+plan=zero2"])
            print(f"{name}: {bench.extra[-1]} ({time.time() - t:.0f} s)", flush=True)
            continue
        try:
            if name.removeprefix("launcher-") in variants:
                r = bench.launcher(name, variants[name.removeprefix("launcher-")].split(), save=False)
            elif name.startswith("launcher-"):
                r = bench.launcher(name, [f"+plan={name.removeprefix('launcher-')}"], keep=name == "launcher-zero2")
            else:
                r = bench.baseline(name, optimizer)
        except Exception as err:  # a bug here must not cost the other rows of a scarce GPU run
            r = bench.results[name] = Result(name, name, error=f"bench error: {type(err).__name__}: {err}")
        if r.ok and name in ("launcher-zero2", "launcher-zero3", "ds-zero2", "ds-zero3"):
            bench.startups.setdefault(name, []).append(r.startup_s - r.optimizer_s)
        status = f"{spec.micro_batch_size * spec.seq_len / r.median_step(first):,.0f} tokens/s per GPU" if r.ok \
            else f"FAILED: {r.error}"
        print(f"{name}: {status} ({time.time() - t:.0f} s)", flush=True)

    from launcher.train.metrics import peak_flops as peak_of

    peak = peak_of(device) if not args.smoke else None
    text, rate = table(bench, first, peak)
    _, params = mfu_per_token(spec)
    lines = targets(bench, rate, peak) + [f"- {x}" for x in bench.extra]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = (f"## {stamp}, {nproc}x {device}{f', driver {driver}' if driver else ''}"
             f"{' (smoke: CPU, tiny model)' if args.smoke else ''}")
    mfu = f"MFU against {peak / 1e12:.0f} TFLOPS bf16 per GPU (launcher/train/metrics.py)" if peak else "no MFU on CPU"
    body = (f"{title}\n\n{versions()}\n\n`{' '.join(['python3', 'bench/perf.py', *sys.argv[1:]])}`: Llama-shaped model "
            f"of {params / 1e9:.2f}B parameters (hidden {spec.hidden_size}, {spec.num_layers} layers, {spec.num_heads} "
            f"heads, {spec.num_kv_heads} KV heads, FFN {spec.intermediate_size}, vocab {spec.vocab_size}), seq "
            f"{spec.seq_len}, micro batch {spec.micro_batch_size} per GPU, 1 micro batch per step, {spec.precision}, "
            f"median step of steps {first}-{spec.steps}; peak GiB = max_memory_allocated of rank 0; {mfu}; "
            f"took {(time.time() - started) / 60:.1f} min.\n\n{text}\n\n" + "\n".join(lines) + "\n")
    print("\n" + body)
    complete = all(r.ok or r.skipped for r in bench.results.values())
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
        for path in [*work.glob("*.log"), *work.glob("*.out"), *work.glob("*.json"), *work.glob("*.txt"),
                     *work.glob("*.json.gz")]:  # profile traces of train.profile_steps variants
            shutil.copy(path, logs / path.name)
        (logs / "perf.md").write_text(body)
    if complete:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs kept in {work}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
