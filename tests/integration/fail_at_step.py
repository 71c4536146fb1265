"""A plain DeepSpeed training script whose rank --fail_rank raises at global step --fail_step, as a real bug in one
rank's code or data would: the other ranks then lose their peer in the next collective. Run by the launcher with
script=tests/integration/fail_at_step.py."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import deepspeed
import torch.distributed as dist

from launcher import tiny


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fail_rank", type=int, default=1)
    p.add_argument("--fail_step", type=int, default=2)
    args = p.parse_args()
    tiny.skip_shm_comm_op()
    deepspeed.init_distributed(dist_backend="gloo" if os.environ.get("DS_ACCELERATOR") == "cpu" else "nccl")
    tok = tiny.tokenizer()
    model = tiny.model(tok)
    config = json.loads(Path(os.environ["LAUNCHER_DS_CONFIG"]).read_text())
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    rows = tiny.dataset(tok, 64)
    micro = engine.train_micro_batch_size_per_gpu()
    for i in range(0, 10_000):
        start = (i * dist.get_world_size() + dist.get_rank()) * micro % (len(rows) - micro)
        batch = tiny.collate(rows[start:start + micro], tok.pad_token_id)
        engine.backward(engine(**batch).loss)
        engine.step()
        if engine.is_gradient_accumulation_boundary() or engine.global_steps >= args.fail_step:
            if dist.get_rank() == args.fail_rank and engine.global_steps >= args.fail_step:
                raise ValueError(f"rank {args.fail_rank} fails at global step {engine.global_steps} on purpose")


if __name__ == "__main__":
    main()
