"""Plan -> accelerate_config.yaml: what `accelerate launch --config_file` needs so that `Accelerator()` in a user's
script runs the plan's DeepSpeed JSON on the plan's machines.

One file serves every node: `machine_rank` (and on Slurm `main_process_ip`) are given on each node's command line.
The multinode launcher is accelerate's `standard` one (torchrun on every node), started by the launcher's backend;
accelerate's `pdsh` launcher would write the whole environment, secrets included, into DeepSpeed's env file.
Fields accelerate refuses next to `deepspeed_config_file` (mixed precision, accumulation, clipping, ZeRO stage) are
left out: the JSON holds them.

Under `plan.sp` > 1 the file gets a `parallelism_config` section (accelerate's ParallelismConfig with DeepSpeed's
Ulysses as sp backend), which `accelerate launch` exports as PARALLELISM_CONFIG_* variables; a Trainer script, started
without `accelerate launch`, gets the same variables from `parallelism_env`. `Accelerator()` reads them when the
script passes no ParallelismConfig of its own, and then sets up Ulysses itself: the attention registered with
transformers, the mpu handed to deepspeed.initialize, each batch split over the sp group.
"""
from __future__ import annotations

from typing import Any

import yaml

from launcher.plan.placement import DEFAULT_MASTER_PORT
from launcher.plan.types import Plan



def render_accelerate_config(plan: Plan, ds_config: str, master_addr: str, master_port: int) -> str:
    """master_addr "" leaves main_process_ip to the command line (Slurm: known when the job starts)."""
    multi = plan.num_hosts > 1
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {
            "deepspeed_config_file": ds_config,
            "deepspeed_multinode_launcher": "standard",
            "zero3_init_flag": plan.zero_stage == 3,
        },
        "num_machines": plan.num_hosts,
        "num_processes": plan.world_size,
        "machine_rank": 0,
        **({"main_process_ip": master_addr} if multi and master_addr else {}),
        # one host: 0 lets accelerate pick a free port, as torchrun --standalone does for the built-in job
        "main_process_port": master_port or (DEFAULT_MASTER_PORT if multi else 0),
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,  # True would turn DeepSpeed off; DS_ACCELERATOR=cpu in the rank environment selects the CPU
        "debug": False,
        **({"parallelism_config": sequence_parallel_options(plan)} if plan.sp > 1 else {}),
    }
    head = (f"# Rendered by launcher for run {plan.run_name}: {plan.num_hosts} machine(s) x {plan.procs_per_host} "
            f"process(es), DeepSpeed ZeRO-{plan.zero_stage} from {ds_config}.\n"
            "# Each node runs: accelerate launch --config_file <this file> --machine_rank <node> SCRIPT ARGS "
            "(see launch.sh).\n")
    return head + yaml.safe_dump(config, sort_keys=False)


def sequence_parallel_options(plan: Plan) -> dict[str, Any]:
    """`accelerate launch` options for Ulysses over plan.sp ranks. dp is given too: accelerate sets the engine's
    train_batch_size from it (micro x accumulation x dp_replicate x dp_shard), which would otherwise count dp=1."""
    return {"parallelism_config_dp_replicate_size": plan.dp, "parallelism_config_sp_size": plan.sp,
            "parallelism_config_sp_backend": "deepspeed", "parallelism_config_sp_seq_length_is_variable": True,
            "parallelism_config_sp_attn_implementation": plan.model.attn_implementation}


def parallelism_env(plan: Plan) -> dict[str, str]:
    """What `accelerate launch` exports for those options (accelerate/utils/launch.py,
    prepare_extend_env_parallelism_config), for a script that it does not start; empty without sp."""
    if plan.sp <= 1:
        return {}
    options = sequence_parallel_options(plan)
    return {"ACCELERATE_USE_PARALLELISM_CONFIG": "true",
            **{key.upper(): str(value).lower() if isinstance(value, bool) else str(value)
               for key, value in options.items()}}
