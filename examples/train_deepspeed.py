"""Fine-tune the tiny model with a plain DeepSpeed loop that reads the launcher's environment:
LAUNCHER_DS_CONFIG (the plan's DeepSpeed JSON, optimizer included), LAUNCHER_RUN_DIR, LAUNCHER_RESUME_FROM, and the
usual RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the engine that started it.

    python -m launcher +plan=zero3 script=examples/train_deepspeed.py -- --max_steps 20 --save_every 10

Checkpoints use the launcher's atomic protocol (launcher.checkpoint.store), so a crash mid-save leaves the previous one
usable and a rerun continues from the newest complete one. SIGTERM or SIGUSR1 (Slurm's pre-timeout signal) makes every
rank save at the next step boundary and stop; a requeued Slurm job or a rerun continues from that save.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from launcher import tiny
from launcher.checkpoint import store as checkpoint
from launcher.train.signals import PreemptionFlag


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--save_every", type=int, default=10)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args()


def save(engine: deepspeed.DeepSpeedEngine, root: Path, step: int) -> None:
    """Every rank writes its shards into a temporary tag; rank 0 then renames it and marks it complete."""
    tmp = checkpoint.prepare_save(root, step) if dist.get_rank() == 0 else f".tmp-{checkpoint.tag_for(step)}"
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tmp)
    dist.barrier()
    if dist.get_rank() == 0:
        checkpoint.commit_save(root, step, {"script": "train_deepspeed"}, keep_last=2)
    dist.barrier()


def stop_everywhere(requested: bool, device: torch.device) -> bool:
    """All ranks stop at the same step (each writes its shards of the save): stop when any rank got the signal."""
    flag = torch.tensor([float(requested)], device=device)
    dist.all_reduce(flag)
    return flag.item() > 0


def train(engine: deepspeed.DeepSpeedEngine, loader: DataLoader, sampler: DistributedSampler,
          args: argparse.Namespace, root: Path, stop: PreemptionFlag) -> int:
    """Train to --max_steps or until a signal asks to stop; save every --save_every steps, at the end and on a stop.
    Returns the last global step."""
    device = engine.device
    while engine.global_steps < args.max_steps:
        sampler.set_epoch(engine.global_steps)
        for batch in loader:
            before = engine.global_steps
            loss = engine(**{k: v.to(device) for k, v in batch.items()}).loss
            engine.backward(loss)
            engine.step()  # the optimizer steps at the accumulation boundary only
            if engine.global_steps == before:
                continue
            step = engine.global_steps
            stopping = stop_everywhere(stop(), device)
            if dist.get_rank() == 0:
                print(f"step {step} loss {loss.item():.4f}", flush=True)
            if step % args.save_every == 0 or step == args.max_steps or stopping:
                save(engine, root, step)
            if stopping or step == args.max_steps:
                return step
    return engine.global_steps


def main() -> None:
    args = parse()
    stop = PreemptionFlag()  # from the start: Slurm may signal while the engine is still being set up
    tiny.skip_shm_comm_op()
    deepspeed.init_distributed(dist_backend="gloo" if os.environ.get("DS_ACCELERATOR") == "cpu" else "nccl")
    config = json.loads(Path(os.environ["LAUNCHER_DS_CONFIG"]).read_text())
    tok = tiny.tokenizer()
    model = tiny.model(tok, seed=args.seed)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    data = tiny.dataset(tok, args.seq_len)
    sampler = DistributedSampler(data, num_replicas=dist.get_world_size(), rank=dist.get_rank(), seed=args.seed)
    loader = DataLoader(data, batch_size=engine.train_micro_batch_size_per_gpu(), sampler=sampler,
                        collate_fn=lambda rows: tiny.collate(rows, tok.pad_token_id))
    root = Path(os.environ["LAUNCHER_RUN_DIR"]) / "checkpoints"
    if os.environ.get("LAUNCHER_RESUME_FROM"):
        resume = Path(os.environ["LAUNCHER_RESUME_FROM"])
        engine.load_checkpoint(str(resume.parent), tag=resume.name)
    if dist.get_rank() == 0:
        print("engine settings:", json.dumps(tiny.engine_settings(engine)), flush=True)
        print(f"training from global step {engine.global_steps}", flush=True)
    last = train(engine, loader, sampler, args, root, stop)
    if dist.get_rank() == 0 and last < args.max_steps:
        print(f"stopped on request at global step {last} after saving; rerun the same command to resume", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
