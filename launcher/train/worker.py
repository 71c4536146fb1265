"""Rank entry (`python -m launcher.train.worker RUN_DIR`): read the rendered plan, build, resume, train, save."""
from __future__ import annotations

import json
import logging
import os
import random
import warnings
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from launcher import checkpoint
from launcher.plan import Plan
from launcher.train.loop import RankInfo, train
from launcher.train.schedule import warmup_cosine
from launcher.train.metrics import MetricsWriter, StepMetrics
from launcher.train.signals import PREEMPTED_EXIT_CODE, PreemptionFlag

log = logging.getLogger("launcher")


def setup_logging(run_dir: Path, rank: int) -> None:
    """Rank 0 prints to the console; every rank logs to logs/rank<N>.log in the run dir, and the output of other
    ranks (library warnings, tracebacks) goes to logs/rank<N>.out instead of the console."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    if rank != 0:
        out = os.open(run_dir / "logs" / f"rank{rank}.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    warnings.filterwarnings("ignore", category=FutureWarning)
    fmt = logging.Formatter("%(asctime)s rank%(rank)s %(levelname)s %(message)s".replace("%(rank)s", str(rank)))
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / "logs" / f"rank{rank}.log")]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    for h in handlers:
        h.setFormatter(fmt if isinstance(h, logging.FileHandler) else logging.Formatter("%(message)s"))
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    for noisy in ("DeepSpeed", "deepspeed", "transformers", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def disable_shm_comm_op() -> None:
    """DeepSpeed JIT-builds its shared-memory comm op for CPU inference all-reduce on first init (~35 s; does not build
    on aarch64, DeepSpeed #5640). Training never uses it: mark it incompatible so it is never built."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


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


def load_examples(plan: Plan, tokenizer: Any) -> list[Any]:
    from launcher.train.batching import pack_examples
    from launcher.train.data import build_examples, load_conversations

    conversations = load_conversations(plan.data.path, plan.data.format)
    examples = build_examples(tokenizer, conversations, plan.train.seq_len, plan.data.max_samples)
    return pack_examples(examples, plan.train.seq_len) if plan.data.packing else examples


def rank_info(plan: Plan, env: dict[str, str]) -> RankInfo:
    rank, local_rank, world = int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
    device = torch.device("cuda", local_rank) if plan.accelerator == "cuda" else torch.device("cpu")
    return RankInfo(rank, local_rank, world, dp_rank=rank // (plan.tp * plan.pp), dp_size=plan.dp, device=device)


def make_saver(engine: Any, plan: Plan, info: RankInfo, root: Path, save_delay_s: float) -> Any:
    import torch.distributed as dist

    meta = {"world_size": info.world_size, "dp": plan.dp, "tp": plan.tp, "pp": plan.pp,
            "zero_stage": plan.zero_stage, "plan_name": plan.plan_name, "model": plan.model.name}

    def save(step: int) -> None:
        tmp_tag = checkpoint.prepare_save(root, step) if info.rank == 0 else f".tmp-{checkpoint.tag_for(step)}"
        dist.barrier()
        engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"global_step": step}, save_latest=False)
        (root / tmp_tag).mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), root / tmp_tag / f"rng_state_rank{info.rank}.pt")
        if save_delay_s:
            import time

            time.sleep(save_delay_s)  # test hook: widens the window in which a kill lands mid-save
        dist.barrier()
        if info.rank == 0:
            ckpt = checkpoint.commit_save(root, step, meta, plan.train.keep_last)
            log.info(f"saved checkpoint {ckpt.path}")
        dist.barrier()

    return save


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    env = dict(os.environ)
    plan = Plan.from_dict(json.loads((run_dir / "plan.json").read_text()))
    ds_config = json.loads((run_dir / "ds_config.json").read_text())
    info = rank_info(plan, env)
    setup_logging(run_dir, info.rank)
    preempt = PreemptionFlag()

    import deepspeed
    import torch.distributed as dist

    disable_shm_comm_op()
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    deepspeed.init_distributed(dist_backend="nccl" if plan.accelerator == "cuda" else "gloo")

    from launcher.train.data import load_tokenizer
    from launcher.train.model import build_model

    tokenizer = load_tokenizer(plan.model.tokenizer or plan.model.path)
    examples = load_examples(plan, tokenizer)
    hf_ds = _zero3_init_context(plan, ds_config)
    model = build_model(plan, tokenizer, info.local_rank)
    params = [p for p in model.parameters() if p.requires_grad]
    t = plan.train
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, config=ds_config,
        lr_scheduler=lambda opt: warmup_cosine(opt, min(t.warmup_steps, plan.max_steps - 1), plan.max_steps, t.min_lr_ratio),
    )
    del hf_ds

    root = run_dir / "checkpoints"
    start = _resume(engine, plan, info, root)
    writer = MetricsWriter(run_dir / "metrics.jsonl", plan.max_steps) if info.rank == 0 else None

    def on_step(m: StepMetrics) -> None:
        if writer and (m.step % plan.train.log_every == 0 or m.step == plan.max_steps):
            writer.write(m)
            log.info(writer.line(m))

    save = make_saver(engine, plan, info, root, float(env.get("LAUNCHER_TEST_SAVE_DELAY", "0") or 0))
    every = plan.train.save_every
    last = train(engine, examples, plan, info, tokenizer.pad_token_id, start, on_step,
                 should_save=lambda s: every > 0 and s % every == 0, save=save, stop_requested=preempt)
    if writer:
        writer.close()
    dist.barrier()
    dist.destroy_process_group()
    if last < plan.max_steps:
        log.info(f"stopped on request at global step {last} after saving; rerun the same command to resume")
        return PREEMPTED_EXIT_CODE
    log.info(f"done: {last} steps; checkpoints in {root}")
    return 0


def _zero3_init_context(plan: Plan, ds_config: dict[str, Any]) -> Any:
    """Under ZeRO-3, from_pretrained must see the DeepSpeed config to load weights already partitioned."""
    if plan.zero_stage != 3 or not plan.model.path or plan.method.name == "qlora":
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def _resume(engine: Any, plan: Plan, info: RankInfo, root: Path) -> int:
    ckpt = checkpoint.resolve_resume(root, plan.resume, warn=log.warning if info.rank == 0 else (lambda _m: None))
    if ckpt is None:
        log.info(f"starting {plan.run_name} from scratch ({plan.max_steps} steps)")
        return 0
    engine.load_checkpoint(str(ckpt.path.parent), tag=ckpt.tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    rng_file = ckpt.path / f"rng_state_rank{info.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    log.info(f"resumed from global step {ckpt.global_step} ({ckpt.path})")
    return ckpt.global_step


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
