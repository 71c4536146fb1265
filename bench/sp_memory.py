"""The dual_pgx long-context memory table: Llama 3.1 8B LoRA at 32k, 64k and 128k tokens on two GB10 boxes, each plan with
and without gradient checkpointing, from the launcher's own estimate (what `run.dry_run=true` prints; no GPU).

    python bench/sp_memory.py            # prints the table and writes bench/results/sp_memory.md
"""
from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launcher.config.compose import compose  # noqa: E402
from launcher.plan.hardware import Hardware  # noqa: E402
from launcher.plan.resolve import resolve  # noqa: E402

RESULTS = REPO / "bench" / "results" / "sp_memory.md"
JOB = ["+topo=dual_pgx", "model=llama3_1_8b", "method=lora", "train.micro_batch_size=1", "train.global_batch_size=8"]
NO_GPU = Hardware("cpu", 0, "", 0.0, "", False, 20, 119.0, "aarch64")  # the dry run's own host: topo says GB10
PLANS = [("zero3", ["+plan=zero3"]), ("sp=2, ZeRO-3", ["+plan=sp"]), ("auto", ["+plan=auto"])]


SEQS = (32768, 65536, 131072)


def row(seq: int, name: str, plan: list[str], ckpt: bool) -> str:
    cfg, _ = compose([*JOB, *plan, f"train.seq_len={seq}", f"train.gradient_checkpointing={str(ckpt).lower()}"])
    p = resolve(cfg, NO_GPU, run_dir="/runs/x", run_name="x")
    m = p.memory
    chosen = f" ({p.plan_name}: dp {p.dp} x sp {p.sp}, ZeRO-{p.zero_stage}" \
        f"{', checkpointing' if p.train.gradient_checkpointing else ''})" if name == "auto" else ""
    return (f"| {seq // 1024}k | {name}{chosen} | {'yes' if p.train.gradient_checkpointing else 'no'} | "
            f"{'yes' if p.tiled_mlp else 'no'} | {m.activations_gb:.1f} | {m.total_gb:.1f} | {m.need_gb:.1f} | "
            f"{'yes' if m.fits else 'no'} |")


def table() -> str:
    head = ["| seq | plan | checkpointing | tiled MLP (auto) | activations | total per GPU | need of 119 GiB | fits |",
            "|---|---|---|---|---|---|---|---|"]
    rows = [row(seq, name, plan, ckpt) for seq in SEQS for name, plan in PLANS[:2] for ckpt in (False, True)]
    rows += [row(seq, "auto", PLANS[2][1], False) for seq in SEQS]
    rows += [row(seq, "auto", [*PLANS[2][1], "model.liger_kernel=false"], False).replace("| auto", "| auto, no liger")
             for seq in SEQS]
    return "\n".join(head + rows) + "\n"


def main() -> int:
    text = (f"## {date.today():%Y-%m-%d}, estimate (dry run), no GPU\n\n`python -m launcher {' '.join(JOB)} "
            "train.seq_len=SEQ +plan=PLAN [train.gradient_checkpointing=true] run.dry_run=true`, liger-kernel "
            "assumed installed on the boxes (fused loss on); GiB per GPU; \"need\" adds the 8 GiB the OS and the "
            "rank's CPU side take from the unified memory. Written by bench/sp_memory.py.\n\n" + table())
    print(text)
    RESULTS.write_text("# Long context on two GB10 boxes: Llama 3.1 8B LoRA at 32k, 64k and 128k tokens\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
