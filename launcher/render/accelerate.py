"""Plan -> accelerate_config.yaml: what `accelerate launch --config_file` needs so that `Accelerator()` in a user's
script runs the plan's DeepSpeed JSON on the plan's machines.

One file serves every node: `machine_rank` (and on Slurm `main_process_ip`) are given on each node's command line.
The multinode launcher is accelerate's `standard` one (torchrun on every node), started by the launcher's backend;
accelerate's `pdsh` launcher would write the whole environment, secrets included, into DeepSpeed's env file.
Fields accelerate refuses next to `deepspeed_config_file` (mixed precision, accumulation, clipping, ZeRO stage) are
left out: the JSON holds them.
"""
from __future__ import annotations

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
    }
    head = (f"# Rendered by launcher for run {plan.run_name}: {plan.num_hosts} machine(s) x {plan.procs_per_host} "
            f"process(es), DeepSpeed ZeRO-{plan.zero_stage} from {ds_config}.\n"
            "# Each node runs: accelerate launch --config_file <this file> --machine_rank <node> SCRIPT ARGS "
            "(see launch.sh).\n")
    return head + yaml.safe_dump(config, sort_keys=False)
