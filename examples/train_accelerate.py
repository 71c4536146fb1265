"""Fine-tune the tiny model with an accelerate loop: `Accelerator()` picks up the launcher's accelerate_config.yaml,
and through it the plan's DeepSpeed JSON (ZeRO stage, micro batch, accumulation, clipping).

    python -m launcher +plan=zero2 script=examples/train_accelerate.py -- --max_steps 20 --save_every 10

The batch numbers come from the DeepSpeed config accelerate loaded; the optimizer and learning rate are the
script's. Checkpoints are saved with accelerator.save_state and made complete atomically with the launcher's
helpers, so a rerun (or a requeued Slurm job) continues from LAUNCHER_RESUME_FROM.

Under `+plan=sp` the yaml's parallelism_config makes `prepare` set up DeepSpeed's Ulysses sequence parallel (as in
accelerate's concept guide): every micro batch is split over the sp ranks of a group, which compute one loss between
them (`micro_batch_loss`). The batches need position ids and one width divisible by sp, which `collate` gives.

    python -m launcher +plan=sp plan.sp=2 script=examples/train_accelerate.py -- --max_steps 20 --save_every 10
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from accelerate import Accelerator
from packaging.version import Version
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


def collate(rows: list[dict[str, list[int]]], pad_id: int, sp: int, seq_len: int) -> dict[str, torch.Tensor]:
    """tiny.collate; under sequence parallel every batch is seq_len wide (rounded up to a multiple of sp: the adapter
    gathers the ranks' batches, and gloo gathers only equal shapes), with the position ids Ulysses needs and no
    attention mask (Ulysses attends causally by position; right padding never reaches a real token)."""
    batch = tiny.collate(rows, pad_id)
    if sp == 1:
        return batch
    width = -(-seq_len // sp) * sp
    extra = width - batch["input_ids"].shape[1]
    return {"input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_id),
            "labels": torch.nn.functional.pad(batch["labels"], (0, extra), value=tiny.IGNORE_INDEX),
            "position_ids": torch.arange(width).expand(len(rows), -1).clone()}


def sequence_parallel(engine: Any, sp: int) -> tuple[Any, int]:
    """(the rank's sp group, what its loss is multiplied by) under sequence parallel; (None, 1) without.
    DeepSpeed sums the gradients of an sp group, except ZeRO-3 before 0.20.2, which averages them (DeepSpeed #8854):
    there each rank's share of the loss is scaled by sp, as transformers' Trainer does."""
    if sp == 1:
        return None, 1
    from deepspeed.runtime.sequence_parallel import parallel_state_sp  # the mpu accelerate passed to DeepSpeed

    averaged = engine.zero_optimization_stage() == 3 and Version(deepspeed.__version__) < Version("0.20.2")
    return parallel_state_sp.get_sequence_parallel_group(), sp if averaged else 1


def micro_batch_loss(engine: Any, batch: dict[str, torch.Tensor], sp_group: Any, grad_scale: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to backpropagate, the micro batch's mean token loss to report).

    Under sequence parallel each rank holds a slice of every row, its labels already shifted on the whole row
    (`shift_labels`, from DeepSpeed's adapter). A rank's loss is its slice's summed token loss over the label tokens of
    the whole rows: the slices add up to the rows' mean, and each rank backpropagates only its own share."""
    if sp_group is None:
        loss = engine(**batch).loss
        return loss, loss.detach()
    # the adapter leaves its slices on the CPU, where they stay views of the rows (which the loss cannot flatten)
    batch = {key: value.to(engine.device).contiguous() for key, value in batch.items()}
    tokens = (batch["shift_labels"] != tiny.IGNORE_INDEX).sum()
    dist.all_reduce(tokens, group=sp_group)
    share = engine(**batch, labels=batch["shift_labels"], num_items_in_batch=tokens).loss
    mean = share.detach().clone()
    dist.all_reduce(mean, group=sp_group)
    return share * grad_scale, mean


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
    pc = accelerator.parallelism_config  # from the yaml's parallelism_config (PARALLELISM_CONFIG_* variables)
    sp = pc.sp_size if pc is not None else 1
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    tok = tiny.tokenizer()
    model = tiny.model(tok, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loader = DataLoader(tiny.dataset(tok, args.seq_len), batch_size=ds["train_micro_batch_size_per_gpu"],
                        shuffle=True, generator=torch.Generator().manual_seed(args.seed),
                        collate_fn=lambda rows: collate(rows, tok.pad_token_id, sp, args.seq_len))
    batches = len(loader)
    # under sp, prepare also registers Ulysses attention with transformers and wraps the loader in DeepSpeed's
    # UlyssesSPDataLoaderAdapter: the ranks of an sp group take turns, each one's batch computed by the whole group
    engine, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    sp_group, grad_scale = sequence_parallel(engine, sp)
    print(f"accelerate: process {accelerator.process_index} of {accelerator.num_processes} on {accelerator.device}, "
          f"{len(loader)} of {batches} batches per epoch", flush=True)
    root = Path(os.environ["LAUNCHER_RUN_DIR"]) / "checkpoints"
    step = 0
    if os.environ.get("LAUNCHER_RESUME_FROM"):
        accelerator.load_state(os.environ["LAUNCHER_RESUME_FROM"])
        step = json.loads((Path(os.environ["LAUNCHER_RESUME_FROM"]) / checkpoint.COMPLETE).read_text())["global_step"]
    if dist.get_rank() == 0:
        print("engine settings:", json.dumps(tiny.engine_settings(engine)), flush=True)
        print(f"sequence parallel size {sp}", flush=True)
        print(f"training from global step {step}", flush=True)
    while step < args.max_steps:
        for batch in loader:
            before = engine.global_steps
            # accumulate: without it accelerate marks every micro batch as an accumulation boundary for DeepSpeed,
            # which then steps on each one
            with accelerator.accumulate(engine):
                loss, reported = micro_batch_loss(engine, batch, sp_group, grad_scale)
                accelerator.backward(loss)  # DeepSpeed: backward, and the optimizer step at the boundary
                optimizer.step()
                optimizer.zero_grad()
            if engine.global_steps == before:
                continue
            step += 1
            norm = engine.get_global_grad_norm()  # before clipping; None where DeepSpeed computed none
            if dist.get_rank() == 0:
                shown = "n/a" if norm is None else f"{float(norm):.4f}"
                print(f"step {step} loss {reported.item():.4f} grad_norm {shown}", flush=True)
            if step % args.save_every == 0 or step == args.max_steps:
                save(accelerator, root, step)
            if step == args.max_steps:
                break
    accelerator.end_training()  # a clean exit: the process group is destroyed on every rank


if __name__ == "__main__":
    main()
