"""Saving from the ranks: free-disk check, DeepSpeed's save into the temporary dir, per-rank RNG, an export probe,
then rank 0 commits (launcher.checkpoint.store). Every rank calls `save(step)` at the same global step."""
from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from launcher.checkpoint import store as checkpoint
from launcher.checkpoint.universal import layout
from launcher.errors import LauncherError
from launcher.plan.types import Plan
from launcher.train import parallel

log = logging.getLogger("launcher")
PROBE_TOKENS = 32


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def expected_bytes(root: Path, plan: Plan) -> int:
    """The last complete checkpoint's size, or (first save) weights + optimizer states from the plan's parameters."""
    last = checkpoint.latest_complete(root, warn=lambda _m: None)
    if last is not None:
        return sum(last.meta.get("files", {}).values())
    return plan.checkpoint_bytes


def check_free_disk(root: Path, plan: Plan, rank: int, device: torch.device) -> None:
    """Fail before writing rather than leave a broken save: every rank learns rank 0's verdict."""
    short = torch.zeros(2, dtype=torch.float64, device=device)
    if rank == 0:
        need = expected_bytes(root, plan) * 1.1
        free = shutil.disk_usage(root).free
        short[:] = torch.tensor([float(free < need), need - free], dtype=torch.float64)
    dist.broadcast(short, src=0)
    if short[0].item():
        raise LauncherError(
            "run.dir", str(root.parent), "free disk space there, lower train.keep_last, or point run.dir at a larger "
            "filesystem; the previous checkpoints are intact and the run resumes from the newest",
            problem=f"the next checkpoint needs about {short[1].item() / 1e6:.1f} MB more free space than the "
            "filesystem has",
        )


def probe(engine: Any, example_ids: list[int], device: torch.device, plan: Plan) -> dict[str, torch.Tensor] | None:
    """Logits of a fixed prompt, taken by the engine itself: export checks its weights against them. Every rank
    calls it; under a pipeline only rank 0 gets them."""
    if plan.sp > 1:
        from launcher.train.sequence_parallel import probe_logits as sp_probe_logits

        cpu_ids = torch.tensor([example_ids[:PROBE_TOKENS]])
        return {"input_ids": cpu_ids, "logits": sp_probe_logits(engine, cpu_ids, plan, device)}
    if plan.pp > 1:
        from launcher.train.pipeline import probe_logits

        cpu_ids = torch.tensor([example_ids[:PROBE_TOKENS]])
        logits = probe_logits(engine, cpu_ids)
        return None if logits is None else {"input_ids": cpu_ids, "logits": logits}
    ids = torch.tensor([example_ids[:PROBE_TOKENS]], device=device)
    was_training = engine.module.training
    engine.module.eval()
    with torch.no_grad():
        logits = engine.module(input_ids=ids, use_cache=False).logits.float().cpu()
        logits = parallel.full_logits(engine, logits)  # a tied head under AutoTP gives vocab slices
    engine.module.train(was_training)
    return {"input_ids": ids.cpu(), "logits": logits}


def throughput(meta: dict[str, Any], seconds: float) -> str:
    """"in 12.3 s (15.9 GB, 1.29 GB/s)": every rank's files of one checkpoint over the wall time (bench/ reads it)."""
    size = sum(meta.get("files", {}).values()) / 1e9
    return f"in {seconds:.1f} s ({size:.2f} GB, {size / max(seconds, 1e-9):.2f} GB/s)"


def make_saver(engine: Any, plan: Plan, rank: int, device: torch.device, root: Path, probe_ids: list[int]
               ) -> Callable[[int], None]:
    meta = {**layout(plan), "sp": plan.sp, "plan_name": plan.plan_name, "model": plan.model.name,
            "method": plan.method.name, "global_batch_size": plan.global_batch_size}

    def save(step: int) -> None:
        start = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        check_free_disk(root, plan, rank, device)
        tmp_tag = checkpoint.prepare_save(root, step) if rank == 0 else f".tmp-{checkpoint.tag_for(step)}"
        dist.barrier()
        engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"global_step": step}, save_latest=False)
        (root / tmp_tag).mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), root / tmp_tag / f"rng_state_rank{rank}.pt")
        probe_out = probe(engine, probe_ids, device, plan)
        if rank == 0 and probe_out is not None:
            torch.save(probe_out, root / tmp_tag / "probe.pt")
        dist.barrier()
        if rank == 0:
            ckpt = checkpoint.commit_save(root, step, meta, plan.train.keep_last)
            log.info(f"saved checkpoint {ckpt.path} {throughput(ckpt.meta, time.perf_counter() - start)}")
        dist.barrier()

    return save
