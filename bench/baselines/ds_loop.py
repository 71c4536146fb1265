"""Baseline: a hand-written DeepSpeed training loop, ZeRO-2 or ZeRO-3, FusedAdam, bf16, gradient clipping 1.0.

torchrun --standalone --nproc_per_node N bench/baselines/ds_loop.py --stage 2 --spec '{...}' --out result.json
The ZeRO section is the one DeepSpeed's ZeRO tutorial shows; the rest is the usual engine loop of the examples.
--liger: liger-kernel's kernels on the model, switched on as LLaMA-Factory and axolotl users do (rank 0 writes a
skip instead where liger-kernel or CUDA is missing).
"""
from __future__ import annotations

import common  # first: its import time is the script's start
import importlib.util

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


def liger_missing() -> str:
    """Why liger-kernel's kernels cannot run here, '' when they can: asked of this process, where the loop runs."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed"
    if not torch.cuda.is_available():
        return "liger-kernel's Triton kernels need CUDA"
    return ""


def apply_liger(model: torch.nn.Module) -> None:
    """The model type's liger apply function, as LLaMA-Factory (enable_liger_kernel) and axolotl's liger plugin call
    it: RoPE, RMSNorm, SwiGLU and the fused linear cross-entropy that never materializes the logits."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                    fused_linear_cross_entropy=True, cross_entropy=False)


def main() -> None:
    spec, args = common.parse([("--stage", {"type": int, "choices": (2, 3), "required": True}),
                               ("--optimizer", {"choices": ("fused", "torch"), "default": "fused"}),
                               ("--liger", {"action": "store_true", "help": "liger-kernel's kernels on the model"})])
    rank, _, world, device, backend = common.dist_env()
    if args.liger and liger_missing():
        if rank == 0:
            common.write_skipped(args.out, liger_missing())
        return
    if device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # a JIT build of ~35 s, unused in training
    deepspeed.init_distributed(dist_backend=backend)
    timer = common.StepTimer()
    model = common.build_model(spec, common.dtype(spec), device)
    if args.liger:
        apply_liger(model)
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
        timer.write(args.out, spec, device, world, optimizer=opt_name,
                    what=f"DeepSpeed ZeRO-{args.stage} loop{' + liger-kernel' if args.liger else ''}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
