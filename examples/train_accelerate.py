"""Fine-tune the tiny model with an accelerate loop: `Accelerator()` picks up the launcher's accelerate_config.yaml,
and through it the plan's DeepSpeed JSON (ZeRO stage, micro batch, accumulation, clipping).

    python -m launcher +plan=zero2 script=examples/train_accelerate.py -- --max_steps 20 --save_every 10

The batch numbers come from the DeepSpeed config accelerate loaded; the optimizer and learning rate are the
script's. Checkpoints are saved with accelerator.save_state and made complete atomically with the launcher's
helpers, so a rerun (or a requeued Slurm job) continues from LAUNCHER_RESUME_FROM.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch.utils.data import DataLoader

from launcher import tiny
from launcher.checkpoint import store as checkpoint


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--save_every", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args()


def save(accelerator: Accelerator, root: Path, step: int) -> None:
    """Every rank writes into a temporary directory; rank 0 then renames it and marks it complete."""
    rank0 = dist.get_rank() == 0  # on CPU accelerate counts one process per rank: ask torch
    tmp = checkpoint.prepare_save(root, step) if rank0 else f".tmp-{checkpoint.tag_for(step)}"
    dist.barrier()
    accelerator.save_state(str(root / tmp))
    dist.barrier()
    if rank0:
        checkpoint.commit_save(root, step, {"script": "train_accelerate"}, keep_last=2)
    dist.barrier()


def main() -> None:
    args = parse()
    tiny.skip_shm_comm_op()
    accelerator = Accelerator()
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    tok = tiny.tokenizer()
    model = tiny.model(tok, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loader = DataLoader(tiny.dataset(tok, args.seq_len), batch_size=ds["train_micro_batch_size_per_gpu"],
                        shuffle=True, generator=torch.Generator().manual_seed(args.seed),
                        collate_fn=lambda rows: tiny.collate(rows, tok.pad_token_id))
    batches = len(loader)
    engine, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    print(f"accelerate: process {accelerator.process_index} of {accelerator.num_processes} on {accelerator.device}, "
          f"{len(loader)} of {batches} batches per epoch", flush=True)
    root = Path(os.environ["LAUNCHER_RUN_DIR"]) / "checkpoints"
    step = 0
    if os.environ.get("LAUNCHER_RESUME_FROM"):
        accelerator.load_state(os.environ["LAUNCHER_RESUME_FROM"])
        step = json.loads((Path(os.environ["LAUNCHER_RESUME_FROM"]) / checkpoint.COMPLETE).read_text())["global_step"]
    if dist.get_rank() == 0:
        print("engine settings:", json.dumps(tiny.engine_settings(engine)), flush=True)
        print(f"training from global step {step}", flush=True)
    while step < args.max_steps:
        for batch in loader:
            before = engine.global_steps
            loss = engine(**batch).loss
            accelerator.backward(loss)  # DeepSpeed: backward, and the optimizer step at the accumulation boundary
            optimizer.step()
            optimizer.zero_grad()
            if engine.global_steps == before:
                continue
            step += 1
            if dist.get_rank() == 0:
                print(f"step {step} loss {loss.item():.4f}", flush=True)
            if step % args.save_every == 0 or step == args.max_steps:
                save(accelerator, root, step)
            if step == args.max_steps:
                break
    accelerator.end_training()  # a clean exit: the process group is destroyed on every rank


if __name__ == "__main__":
    main()
