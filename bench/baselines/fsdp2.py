"""Baseline: torch FSDP2 (`fully_shard` per decoder layer and the root), fp32 master weights computed in bf16 with
fp32 gradient reduction (MixedPrecisionPolicy), torch's fused AdamW, gradient clipping 1.0.

torchrun --standalone --nproc_per_node N bench/baselines/fsdp2.py --spec '{...}' --out result.json
"""
from __future__ import annotations

import common  # first: its import time is the script's start
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def main() -> None:
    spec, args = common.parse()
    rank, _, world, device, backend = common.dist_env()
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    mesh = init_device_mesh(device.type, (world,))
    timer = common.StepTimer()
    model = common.build_model(spec, torch.float32, device)
    timer.mark("model_built")
    mp = MixedPrecisionPolicy(param_dtype=common.dtype(spec), reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                            fused=fused)
    timer.mark("engine_ready")
    model.train()
    for step in range(spec.steps):
        timer.begin()
        ids = common.tokens(spec, rank, step).to(device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        timer.end(loss.item())
    if rank == 0:
        timer.write(args.out, spec, device, world, what="FSDP2 fully_shard",
                    optimizer=f"torch AdamW{' (fused)' if fused else ''}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
