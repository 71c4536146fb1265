"""What users can pick: `python -m launcher --help` and `python -m launcher list`, read from the preset files."""
from __future__ import annotations

from omegaconf import OmegaConf

from launcher.config.compose import CONF_DIR, GROUPS, preset_description, presets

USAGE = """usage: python -m launcher [+topo=PRESET] [+plan=PRESET] [group=PRESET ...] [key=value ...] [-- script args]
       python -m launcher list            topologies and plans with what each needs
       python -m launcher --cfg job ...   print the composed config (Hydra's --cfg; --hydra-help for Hydra's flags)
       python -m launcher.export RUN_DIR  |  python -m launcher.report RUN_DIR
"""
COMMON = """common overrides:
  run.name=NAME run.dir=DIR run.dry_run=true run.resume=auto|never|STEP|PATH run.max_restarts=N run.debug=true
  train.global_batch_size=N train.micro_batch_size=N train.seq_len=N train.max_steps=N train.save_every=N train.lr=X
  model.path=HUB_ID_OR_DIR data.path=FILE topo.gpus_per_host=N topo.hosts=[a,b] plan.zero_stage=N
  logging.wandb.mode=auto|online|offline|disabled   (the full schema: launcher/config/schema.py)"""
PROCESSES = """how many processes on this machine (the default +topo=local):
  GPUs: all it has, one process each; topo.gpus_per_host=N uses N of them (CUDA_VISIBLE_DEVICES=0,1 picks which)
  no GPU: topo.cpu_procs_per_host=N CPU processes (default 2); topo.accelerator=cpu runs on CPU even with GPUs"""


def help_text() -> str:
    lines = [USAGE, "config groups (group=preset; topo and plan also as +topo= / +plan=):"]
    for group in GROUPS:
        lines.append(f"  {group}:")
        lines += [f"    {name:<16} {preset_description(group, name)}" for name in presets(group)]
    return "\n".join(lines + ["", COMMON, "", PROCESSES])


def _needs_topo(name: str) -> str:
    cfg = OmegaConf.load(CONF_DIR / "topo" / f"{name}.yaml")
    hosts = len(cfg.get("hosts") or []) or 1
    gpus = cfg.get("gpus_per_host")
    backend = cfg.get("backend", "local")
    if backend == "slurm":
        return f"a Slurm cluster: topo.nodes x {gpus or 'N'} GPUs (sbatch/srun on PATH)"
    where = f"{hosts} hosts reachable over ssh without a password" if hosts > 1 else "this host"
    return f"{where}, {gpus if gpus is not None else 'all local'} GPU(s) per host" + (
        "; CPU processes when there are none" if gpus is None else "")


def _needs_plan(name: str) -> str:
    if name == "auto":
        return "the topology's memory size (topo.gpu_memory_gb, or the GPUs found here) to check plans against"
    cfg = OmegaConf.load(CONF_DIR / "plan" / f"{name}.yaml")
    tp, pp, stage = cfg.get("tp", 1), cfg.get("pp", 1), cfg.get("zero_stage", 2)
    need = f"world size a multiple of {tp * pp}" if tp * pp > 1 else "any world size"
    if stage:
        need += "; shards over >= 2 data-parallel ranks"
    if cfg.get("offload_optimizer") or cfg.get("offload_params"):
        need += "; CPU RAM for the offloaded state"
    return need


def list_text() -> str:
    lines = ["topologies (+topo=NAME):"]
    lines += [f"  {n:<14} {preset_description('topo', n)}\n  {'':<14} needs: {_needs_topo(n)}" for n in presets("topo")]
    lines.append("plans (+plan=NAME):")
    lines += [f"  {n:<14} {preset_description('plan', n)}\n  {'':<14} needs: {_needs_plan(n)}" for n in presets("plan")]
    return "\n".join(lines)
