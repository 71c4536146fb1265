"""The environment every rank gets: accelerator, NCCL settings, thread counts and the launcher's own variables.

Only variables set here are written into launch.sh; secrets such as WANDB_API_KEY are inherited from the caller's
environment at spawn time and never written to a file.
"""
from __future__ import annotations

import re

from launcher.plan.types import Plan
from launcher.rundir import DS_CONFIG_FILE, PLAN_FILE

# Where models and tokenizers come from, and the W&B server: set on the launching host, they must reach every rank
# on every host (DeepSpeed's runner forwards only PYTHON*, NCCL* and a few more over ssh). Secrets never travel here.
FORWARDED = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT",
             "WANDB_BASE_URL")
ARCH_SUFFIX = re.compile(r"(\d+\.\d+)[a-zA-Z]+")


def sanitize_arch_list(value: str) -> str:
    """DeepSpeed's op builder crashes on suffixed entries such as '9.0a' or '12.1a': keep the numeric part."""
    entries = [ARCH_SUFFIX.sub(r"\1", e) for e in re.split(r"[;\s,]+", value.strip()) if e]
    return ";".join(dict.fromkeys(entries))


def rank_env(plan: Plan, inherited: dict[str, str]) -> dict[str, str]:
    """Variables to set on top of the inherited environment for every rank of this plan; topo.env last."""
    run_dir = plan.run_dir
    env: dict[str, str] = {
        "DS_ACCELERATOR": "cpu" if plan.accelerator == "cpu" else "cuda",
        "LAUNCHER_RUN_DIR": run_dir,
        "LAUNCHER_PLAN": f"{run_dir}/{PLAN_FILE}",
        "LAUNCHER_DS_CONFIG": f"{run_dir}/{DS_CONFIG_FILE}",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if plan.accelerator == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, plan.launch.host_cpus // plan.procs_per_host))
        env["CUDA_VISIBLE_DEVICES"] = ""
    arch = inherited.get("TORCH_CUDA_ARCH_LIST", "")
    if arch and sanitize_arch_list(arch) != arch:
        env["TORCH_CUDA_ARCH_LIST"] = sanitize_arch_list(arch)
    env.update({k: inherited[k] for k in FORWARDED if inherited.get(k)})
    env.update(plan.nccl_env)
    env.update(plan.launch.topo_env)
    return env
