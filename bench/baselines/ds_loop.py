"""Baseline: a hand-written DeepSpeed training loop, ZeRO-2 or ZeRO-3, FusedAdam, bf16, gradient clipping 1.0.

torchrun --standalone --nproc_per_node N bench/baselines/ds_loop.py --stage 2 --spec '{...}' --out result.json
The ZeRO section is the one DeepSpeed's ZeRO tutorial shows; the rest is the usual engine loop of the examples.
"""
from __future__ import annotations

import common  # first: its import time is the script's start
import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist


def zero_config(stage: int) -> dict:
    if stage == 2:
        return {"stage": 2, "allgather_partitions": True, "allgather_bucket_size": 5e8, "overlap_comm": True,
                "reduce_scatter": True, "reduce_bucket_size": 5e8, "contiguous_gradients": True}
    return {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": 5e8,
            "stage3_prefetch_bucket_size": 5e7, "stage3_param_persistence_threshold": 1e5,
            "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9}


def optimizer(params, spec: common.Spec, which: str) -> tuple[torch.optim.Optimizer, str]:
    """FusedAdam on GPUs (bench/perf.py builds the op once before the runs; --optimizer torch when it cannot)."""
    kwargs = dict(lr=spec.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    if which == "fused" and torch.cuda.is_available():
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(params, adam_w_mode=True, **kwargs), "FusedAdam"
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(params, fused=fused, **kwargs), f"torch AdamW{' (fused)' if fused else ''}"


def main() -> None:
    spec, args = common.parse([("--stage", {"type": int, "choices": (2, 3), "required": True}),
                               ("--optimizer", {"choices": ("fused", "torch"), "default": "fused"})])
    rank, _, world, device, backend = common.dist_env()
    if device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # a JIT build of ~35 s, unused in training
    deepspeed.init_distributed(dist_backend=backend)
    timer = common.StepTimer()
    model = common.build_model(spec, common.dtype(spec), device)
    timer.mark("model_built")
    opt, opt_name = optimizer(model.parameters(), spec, args.optimizer)
    timer.mark("optimizer_built")
    config = {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size, "gradient_accumulation_steps": 1,
        "gradient_clipping": spec.grad_clip, "bf16": {"enabled": spec.precision == "bf16"},
        "zero_optimization": zero_config(args.stage), "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9, "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    timer.mark("engine_ready")
    engine.train()
    for step in range(spec.steps):
        timer.begin()
        ids = common.tokens(spec, rank, step).to(device)
        loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
        engine.backward(loss)
        engine.step()
        timer.end(loss.item())
    if rank == 0:
        timer.write(args.out, device, world, what=f"DeepSpeed ZeRO-{args.stage} loop", optimizer=opt_name)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
