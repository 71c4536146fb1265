"""Rank entry (`python -m launcher.train.worker RUN_DIR`): read the rendered plan, build, resume, train, save."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

STARTED = time.time()  # before the heavy imports: the start-up log line counts them

import torch

from launcher import lease, lease_watch
from launcher.checkpoint import store as checkpoint, universal
from launcher.errors import LauncherError
from launcher.gloo_exit import leave_gloo, wait_for_idle_workers
from launcher.plan.types import Plan
from launcher.rundir import (CHECKPOINTS, DS_CONFIG_FILE, DS_UNIVERSAL_FILE, LOGS, OOM_REPLAN_EXIT_CODE, PLAN_FILE,
                             rank_log)
from launcher.train import parallel, zero_step
from launcher.train.evaluate import eval_due, evaluate
from launcher.train.loop import RankInfo, train
from launcher.train.metrics import EvalMetrics
from launcher.train.failures import (CollectiveFailure, EarlyOutOfMemory, Watchdog, injected_out_of_memory,
                                     record_crash, record_user_error, user_facing_failures)
from launcher.train.profiling import StepProfiler, parse_steps
from launcher.train.reporter import Reporter
from launcher.train.saver import make_saver, set_rng_state, throughput
from launcher.train.schedule import resync, warmup_cosine
from launcher.train.signals import PreemptionFlag

log = logging.getLogger("launcher")


def setup_logging(run_dir: Path, rank: int) -> None:
    """Rank 0 prints to the console; every rank logs to logs/rank<N>.log in the run dir, and the output of other
    ranks (library warnings, tracebacks) goes to logs/rank<N>.out instead of the console."""
    (run_dir / LOGS).mkdir(parents=True, exist_ok=True)
    if rank != 0:
        out = os.open(run_dir / LOGS / f"rank{rank}.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    warnings.filterwarnings("ignore", category=FutureWarning)
    file_handler = logging.FileHandler(rank_log(run_dir, rank))
    file_handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
    log.setLevel(logging.INFO)
    log.propagate = False
    for noisy in ("DeepSpeed", "deepspeed", "transformers", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # where torchao is installed, transformers imports it in every rank: it names each optional kernel library it
    # lacks, and torch calls one of its registrations deprecated; neither is about this run
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def disable_shm_comm_op() -> None:
    """DeepSpeed JIT-builds its shared-memory comm op for CPU inference all-reduce on first init (~35 s; does not build
    on aarch64, DeepSpeed #5640). Training never uses it: mark it incompatible so it is never built."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def rank_info(plan: Plan, env: dict[str, str]) -> RankInfo:
    """Provisional data-parallel coordinates: parallel.with_engine_coords replaces them from the engine's groups."""
    rank, local_rank, world = int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
    device = torch.device("cuda", local_rank) if plan.accelerator == "cuda" else torch.device("cpu")
    return RankInfo(rank, local_rank, world, dp_rank=rank // (plan.tp * plan.pp * plan.sp), dp_size=plan.dp,
                    device=device, sp_rank=rank % plan.sp, sp=plan.sp)


def find_resume(plan: Plan, info: RankInfo, root: Path, mode: str) -> tuple[checkpoint.Checkpoint | None, bool]:
    """The checkpoint to resume from, converted to DeepSpeed's universal format when the layout changed."""
    import torch.distributed as dist

    warn = log.warning if info.rank == 0 else (lambda _m: None)
    ckpt = checkpoint.resolve_resume(root, mode, warn=warn)
    if ckpt is None or not universal.needs_conversion(ckpt.meta, plan):
        return ckpt, False
    universal.check_supported(ckpt, plan)
    if info.rank == 0:
        log.info(f"checkpoint {ckpt.path} was saved with {dict((k, ckpt.meta.get(k)) for k in universal.LAYOUT_KEYS)}; "
                 f"this plan is {universal.layout(plan)}: converting to DeepSpeed's universal checkpoint")
        universal.convert(ckpt)
    dist.barrier()
    path = universal.universal_path(ckpt)
    return checkpoint.Checkpoint(path, ckpt.global_step, json.loads((path / checkpoint.COMPLETE).read_text())), True


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    env = dict(os.environ)
    plan = Plan.from_dict(json.loads((run_dir / PLAN_FILE).read_text()))
    info = rank_info(plan, env)
    setup_logging(run_dir, info.rank)
    preempt = PreemptionFlag()
    follow_launcher(run_dir, preempt)
    try:
        return _train(run_dir, plan, info, env, preempt)
    except LauncherError as err:
        log.error(err.paragraph())
        record_user_error(run_dir, info.rank, err)
        leave_gloo()
        if isinstance(err, EarlyOutOfMemory):
            return OOM_REPLAN_EXIT_CODE
        return 1 if isinstance(err, CollectiveFailure) else 2
    except Exception as err:  # a crash: its traceback goes to this rank's log, the supervisor names it on the console
        record_crash(run_dir, info.rank, err)
        leave_gloo()
        return 1


def follow_launcher(run_dir: Path, preempt: PreemptionFlag) -> None:
    """The job lives as long as its launcher (launcher.lease): a stop asked there (a Ctrl-C) is a save request here;
    a launcher that is gone, or an abort, ends this rank at once."""

    def gone(why: str) -> None:
        log.error(f"{why}: stopping this rank")
        logging.shutdown()
        os._exit(lease.LAUNCHER_GONE_EXIT)

    def abort() -> None:
        log.info("stopped at once on the launcher's request (a second Ctrl-C)")
        logging.shutdown()
        os._exit(lease.ABORT_EXIT)

    lease_watch.watch_launcher(run_dir, lambda: preempt.request("stop requested by the launcher"), gone, abort)


def _die(run_dir: Path, info: RankInfo, err: LauncherError) -> None:
    """Watchdog verdict: the main thread is stuck in a collective, so report and leave from here."""
    log.error(err.paragraph())
    record_user_error(run_dir, info.rank, err)
    logging.shutdown()
    os._exit(1)


def _train(run_dir: Path, plan: Plan, info: RankInfo, env: dict[str, str], preempt: PreemptionFlag) -> int:
    ds_config = json.loads((run_dir / DS_CONFIG_FILE).read_text())
    import deepspeed
    import torch.distributed as dist

    disable_shm_comm_op()
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    deepspeed.init_distributed(dist_backend="nccl" if plan.accelerator == "cuda" else "gloo",
                               timeout=timedelta(seconds=plan.collective_timeout_s))
    root = run_dir / CHECKPOINTS
    mode = "auto" if env.get("LAUNCHER_RESTART", "0") != "0" else plan.resume
    ckpt, use_universal = find_resume(plan, info, root, mode)
    if use_universal:
        ds_config = _universal_config(run_dir, ds_config)

    from launcher.data.tokenization import load_tokenizer
    from launcher.train.examples import load_examples
    from launcher.train.attention import apply_sdpa_backend
    from launcher.train.fp8 import apply_fp8
    from launcher.train.model import build_model
    from launcher.train.pipeline import build_pipeline_module

    marks = {"imports and process group": time.time()}
    tokenizer = load_tokenizer(plan.model.tokenizer or plan.model.path)  # the first import of transformers' models
    marks["tokenizer"] = time.time()
    examples, eval_examples = load_examples(plan, tokenizer, info.local_rank, env)
    marks["data"] = time.time()
    hf_ds = _zero3_init_context(plan, ds_config)
    model = build_model(plan, tokenizer, info.local_rank)
    apply_fp8(model, plan, info.device)
    apply_sdpa_backend(plan.model.sdpa_backend, plan, model.config, info.device)
    marks["model"] = time.time()
    if plan.pp > 1:
        model = build_pipeline_module(model, plan)
    params = [p for p in model.parameters() if p.requires_grad]
    t = plan.train
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, config=ds_config,
        lr_scheduler=lambda opt: warmup_cosine(opt, min(t.warmup_steps, plan.max_steps - 1), plan.max_steps, t.min_lr_ratio),
        **parallel.initialize_kwargs(plan, model),
    )
    info = parallel.with_engine_coords(info, engine, plan)
    del hf_ds
    zero_step.speed_up_zero_step(engine)
    if plan.compile == "torch":
        log.info(f"plan.compile={plan.compile}: the model compiles during its first steps, which take longer")
        engine.compile()
    marks["engine"] = time.time()
    start = _load(engine, ckpt, info, use_universal)
    marks["resume"] = time.time()
    log.info(f"ready in {time.time() - STARTED:.1f} s since the rank started: " + _durations(marks))
    reporter = Reporter(plan, run_dir, start, info.device, info.world_size, env) if info.rank == 0 else None
    current = [start]
    watchdog = Watchdog(plan, info.rank, lambda err: _die(run_dir, info, err))
    profiler = StepProfiler(parse_steps(plan.train.profile_steps), start, run_dir / "profile", info.rank,
                            info.device.type == "cuda")

    def on_step(m: Any) -> None:
        current[0] = m.step
        watchdog.pet(m.step)
        if reporter:
            reporter(m)
        profiler.after_step(m.step)

    saver = make_saver(engine, plan, info.rank, info.device, root, examples[0].input_ids)

    def save(step: int) -> None:
        watchdog.pause(True)
        saver(step)
        watchdog.pause(False)

    def evaluate_at(step: int) -> None:
        if eval_due(step, plan):
            watchdog.pause(True)
            t0 = time.perf_counter()
            loss, tokens = evaluate(engine, eval_examples, plan, info, tokenizer.pad_token_id)
            if reporter:
                reporter.eval(EvalMetrics(step, loss, tokens, time.perf_counter() - t0, time.time()))
            watchdog.pause(False)

    every = plan.train.save_every
    with user_facing_failures(plan, info.rank, current):
        injected_out_of_memory(plan, env)
        last = train(engine, examples, plan, info, tokenizer.pad_token_id, start, on_step,
                     should_save=lambda s: every > 0 and s % every == 0, save=save, stop_requested=preempt,
                     evaluate_at=evaluate_at)
    profiler.close(last)
    if reporter:
        reporter.close()
    dist.barrier()
    dist.destroy_process_group()
    wait_for_idle_workers()  # gloo's workers let go of the last collective before the interpreter ends
    if last < plan.max_steps:
        log.info(f"stopped on request at global step {last} after saving; rerun the same command to resume")
    else:
        log.info(f"done: {last} steps; checkpoints in {root}")
    return 0


def _universal_config(run_dir: Path, ds_config: dict[str, Any]) -> dict[str, Any]:
    """The config a universal resume runs: the file the launch rendered when it saw the layout change; a job that
    met the change later (a requeued Slurm job) merges it the same way."""
    path = run_dir / DS_UNIVERSAL_FILE
    if path.exists():
        return json.loads(path.read_text())
    from launcher.render.deepspeed import universal_ds_config

    return universal_ds_config(ds_config)


def _durations(marks: dict[str, float]) -> str:
    """'imports 4.1 s, data 0.3 s, ...': where a rank's start-up went (the bench reads it for the launch overhead)."""
    names, times = list(marks), [STARTED, *marks.values()]
    return ", ".join(f"{n} {b - a:.1f} s" for n, a, b in zip(names, times, times[1:]))


def _zero3_init_context(plan: Plan, ds_config: dict[str, Any]) -> Any:
    """Under ZeRO-3, from_pretrained must see the DeepSpeed config to load weights already partitioned."""
    if plan.zero_stage != 3 or not plan.model.path or plan.method.name == "qlora":
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def _load(engine: Any, ckpt: checkpoint.Checkpoint | None, info: RankInfo, use_universal: bool) -> int:
    if ckpt is None:
        log.info("starting from scratch")
        return 0
    start = time.perf_counter()
    engine.load_checkpoint(str(ckpt.path.parent), tag=ckpt.tag, load_optimizer_states=True,
                           load_lr_scheduler_states=True)
    loaded = throughput(ckpt.meta, time.perf_counter() - start)
    resync(engine.lr_scheduler)
    rng_file = ckpt.path / f"rng_state_rank{info.rank}.pt"
    if rng_file.exists() and not use_universal:
        set_rng_state(torch.load(rng_file, weights_only=False))
    via = " through a universal checkpoint (world size or ZeRO stage changed)" if use_universal else ""
    log.info(f"resumed from global step {ckpt.global_step} ({ckpt.path}){via}; loaded {loaded}")
    return ckpt.global_step


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
