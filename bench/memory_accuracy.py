"""Estimated vs measured peak GPU memory: a few real training steps per configuration, through the launcher itself.

    source .device/setup.sh qlora && python3 bench/memory_accuracy.py       # one GPU, ~5 minutes
    python bench/memory_accuracy.py --smoke                                   # CPU, tiny model: checks the plumbing

Each configuration runs `python -m launcher` with a Llama-shaped model built from its shape (random weights, nothing is
downloaded; 3B and 8B are saved once to a temporary model dir so QLoRA can quantize them on load), on rows long enough
to fill train.seq_len. The peak is torch.cuda.max_memory_allocated as the rank reports it in metrics.jsonl after the
last step; the estimate is plan.json's total without the CUDA context and allocator slack (which the allocator's
counter does not see). The table is printed and appended, with date, device and versions, to
bench/results/memory_accuracy.md. The run is stopped once the last step is reported (the final checkpoint of
throwaway weights is not worth its minutes).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "memory_accuracy.md"
TARGET = 0.15
STEPS = 3
TINYLLAMA_1B = ("model.arch.hidden_size=2048", "model.arch.num_layers=22", "model.arch.num_heads=32",
                "model.arch.num_kv_heads=4", "model.arch.intermediate_size=5632", "model.arch.vocab_size=32000")
SHAPES = {  # model dirs written once (bf16, random): preset whose arch they take
    "3b": "llama3_2_3b",
    "8b": "llama3_1_8b",
}


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]
    model_dir: str = ""  # a SHAPES key: run from that saved model dir


GPU_CASES = (
    Case("1.1B full ZeRO-2", ("+plan=zero2", *TINYLLAMA_1B, "train.seq_len=2048", "train.micro_batch_size=1")),
    Case("1.1B full ZeRO-3", ("+plan=zero3", *TINYLLAMA_1B, "train.seq_len=2048", "train.micro_batch_size=1")),
    Case("1.1B full ZeRO-3 offload", ("+plan=zero3_offload", *TINYLLAMA_1B, "train.seq_len=2048",
                                      "train.micro_batch_size=1")),
    Case("1.1B full ZeRO-2 ckpt, no liger", ("+plan=zero2", *TINYLLAMA_1B, "train.seq_len=2048",
                                             "train.micro_batch_size=4", "train.gradient_checkpointing=true",
                                             "model.liger_kernel=false")),
    Case("3B LoRA, no liger", ("+plan=zero2", "method=lora", "train.seq_len=2048", "train.micro_batch_size=2",
                               "model.liger_kernel=false"), "3b"),
    Case("8B LoRA", ("+plan=zero2", "method=lora", "train.seq_len=2048", "train.micro_batch_size=1"), "8b"),
    Case("8B QLoRA", ("+plan=zero2", "method=qlora", "train.seq_len=2048", "train.micro_batch_size=1"), "8b"),
)
SMOKE_CASES = (
    Case("tiny full ZeRO-2", ("+plan=zero2", "train.seq_len=256", "train.micro_batch_size=2")),
    Case("tiny LoRA ZeRO-3", ("+plan=zero3", "method=lora", "train.seq_len=256", "train.micro_batch_size=2")),
)


def write_data(path: Path, rows: int = 64, words: int = 6000) -> None:
    """Alpaca rows far longer than any seq_len here: every example is cut to exactly seq_len tokens."""
    rng = random.Random(0)
    vocab = [w for w in "the of and to in is was for on that with as by at from his her are an be this which or "
             "memory estimate gradient optimizer parameter activation".split()]
    with path.open("w") as f:
        for _ in range(rows):
            text = " ".join(rng.choice(vocab) for _ in range(words))
            f.write(json.dumps({"instruction": "Continue the text.", "input": "", "output": text}) + "\n")


def make_model_dir(preset: str, out: Path) -> None:
    """A bf16 model of the preset's shape with random weights, plus the shipped tokenizer (in a child process, so
    this process holds no GPU memory during the runs)."""
    code = f"""
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from launcher.config.compose import compose
from launcher.data.tokenization import load_tokenizer
a = compose(["model={preset}"])[0].model.arch
config = AutoConfig.for_model(a.model_type, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
    num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads, num_key_value_heads=a.num_kv_heads,
    vocab_size=a.vocab_size, max_position_embeddings=4096, tie_word_embeddings=a.tie_word_embeddings)
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained({str(out)!r})
load_tokenizer("").save_pretrained({str(out)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("WANDB_MODE", "disabled")
    return env


def run_case(case: Case, work: Path, data: Path, extra: tuple[str, ...], model_dirs: dict[str, Path],
             timeout_s: float) -> dict:
    run_dir = work / case.name.replace(" ", "_").replace(",", "")
    model = (f"model.path={model_dirs[case.model_dir]}",) if case.model_dir else ()
    argv = [sys.executable, "-m", "launcher", *case.overrides, *model, *extra, "data=alpaca", f"data.path={data}",
            f"train.max_steps={STEPS}", f"train.global_batch_size={_global(case)}", "train.save_every=0",
            "preflight=skip", "logging.wandb.mode=disabled", f"run.dir={run_dir}", "run.resume=never"]
    log = work / f"{run_dir.name}.log"
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        metrics = _wait_for_steps(proc, run_dir / "metrics.jsonl", timeout_s)
    _stop(proc)
    if len(metrics) < STEPS:
        tail = log.read_text()[-2000:]
        return {"case": case.name, "error": f"exit {proc.returncode}, {len(metrics)} steps; log {log}:\n{tail}"}
    plan = json.loads((run_dir / "plan.json").read_text())
    m = plan["memory"]
    estimate = m["total_gb"] - m["overhead_gb"]
    measured = max(r["memory_gb"] for r in metrics)
    return {"case": case.name, "plan": plan["plan_name"], "method": plan["method"]["name"],
            "seq": plan["train"]["seq_len"], "micro": plan["micro_batch_size"],
            "ckpt": plan["train"]["gradient_checkpointing"], "estimate_gb": round(estimate, 2),
            "measured_gb": round(measured, 2), "error": round((estimate - measured) / measured, 3),
            "activations_gb": m["activations_gb"], "seconds": round(time.time() - started)}


def _global(case: Case) -> int:
    micro = next(int(o.split("=")[1]) for o in case.overrides if o.startswith("train.micro_batch_size="))
    return micro * 2  # two micro batches per step on one rank: the accumulation path is exercised


def _wait_for_steps(proc: subprocess.Popen, path: Path, timeout_s: float) -> list[dict]:
    deadline = time.time() + timeout_s
    rows: list[dict] = []
    while time.time() < deadline:
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if len(rows) >= STEPS or proc.poll() is not None:
                return rows
        elif proc.poll() is not None:
            return rows
        time.sleep(1)
    return rows


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's session and every process under it (the ranks run in a session of their own)."""
    from launcher.launch.spawn import kill_tree

    kill_tree(proc.pid)
    proc.wait(timeout=60)


def versions() -> str:
    from importlib import metadata

    out = [f"python {sys.version.split()[0]}"]
    for pkg in ("torch", "transformers", "deepspeed", "peft", "bitsandbytes", "liger-kernel"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def device_name(smoke: bool) -> str:
    if smoke:
        return "CPU (smoke: peak RSS, not comparable)"
    import torch

    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


def table(results: list[dict], smoke: bool) -> str:
    lines = ["| case | plan | method | seq x micro | ckpt | estimate GiB | measured GiB | error | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "plan" not in r:
            lines.append(f"| {r['case']} | failed: {r['error'].splitlines()[0]} |||||||| ")
            continue
        ok = "" if smoke or abs(r["error"]) <= TARGET else " (over 15%)"
        lines.append(f"| {r['case']} | {r['plan']} | {r['method']} | {r['seq']} x {r['micro']} | "
                     f"{'yes' if r['ckpt'] else 'no'} | {r['estimate_gb']:.2f} | {r['measured_gb']:.2f} | "
                     f"{r['error']:+.1%}{ok} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the plumbing end to end")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--out", default="", help=f"results file to append to (default {RESULTS}; smoke: none)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per case")
    args = parser.parse_args(argv)
    cases = [c for c in (SMOKE_CASES if args.smoke else GPU_CASES) if args.only in c.name]
    extra = ("topo.accelerator=cpu", "topo.cpu_procs_per_host=1") if args.smoke else ("topo.gpus_per_host=1",)
    results = []
    with tempfile.TemporaryDirectory(prefix="memory-accuracy-") as tmp:
        work = Path(tmp)
        data = work / "long.jsonl"
        write_data(data)
        model_dirs = {}
        for key in sorted({c.model_dir for c in cases if c.model_dir}):
            model_dirs[key] = work / f"model-{key}"
            t0 = time.time()
            make_model_dir(SHAPES[key], model_dirs[key])
            print(f"model dir {key} ({SHAPES[key]} shape) written in {time.time() - t0:.0f} s", flush=True)
        for case in cases:
            r = run_case(case, work, data, extra, model_dirs, args.timeout)
            results.append(r)
            print(json.dumps(r), flush=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = (f"\n## {stamp}, {device_name(args.smoke)}\n\n{versions()}; {STEPS} steps, peak = "
              f"torch.cuda.max_memory_allocated, estimate = plan.json total - overhead; target within "
              f"{TARGET:.0%}\n\n{table(results, args.smoke)}\n")
    print(report)
    out = Path(args.out) if args.out else (None if args.smoke else RESULTS)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            out.write_text("# Memory estimate vs measured peak (bench/memory_accuracy.py)\n")
        with out.open("a") as f:
            f.write(report)
        print(f"appended to {out}")
    failed = [r for r in results if "plan" not in r]
    off = [r for r in results if "plan" in r and abs(r["error"]) > TARGET]
    return 1 if failed or (off and not args.smoke) else 0


if __name__ == "__main__":
    sys.exit(main())
