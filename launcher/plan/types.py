"""The frozen Plan every later step reads (plan.json on disk), and LaunchSettings, what the launch side needs of the
user's config. Built by plan/resolve.py; nothing here decides anything."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from launcher.config.schema import DataConfig, LauncherConfig, MethodConfig, ModelConfig, TrainConfig
from launcher.config.topology import SlurmConfig
from launcher.data.selection import DataSet
from launcher.plan.hardware import Hardware
from launcher.plan.memory import MemoryEstimate
from launcher.secrets import mask_secrets


@dataclass(frozen=True)
class LaunchSettings:
    """What the launch side needs from the user's config, resolved once: launch/, backends/, render/ and preflight/
    read these and never the config. topo_env values that look secret are masked in plan.json (Plan.to_dict)."""

    master_addr: str = ""
    master_port: int = 0  # 0: plan.placement.DEFAULT_MASTER_PORT, or torchrun's --standalone on one host
    topo_env: dict[str, str] = field(default_factory=dict)  # topo.env, on top of the rank environment
    socket_ifname: str = ""  # what preflight checks (NCCL's interface, or the one for gloo)
    mtu: int = 0
    link: str = ""
    ib_hca: str = ""
    expects_rdma: bool = False  # NCCL is told to use RoCE/IB: a fall-back to sockets is a failure
    preflight: str = "auto"  # auto | quick | full | skip
    engine: str = "torchrun"  # run.launcher: torchrun | deepspeed (one host)
    hostfile: str = ""  # the file the hosts came from, for messages
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    max_restarts: int = 0
    restart_backoff_s: float = 5.0
    lease_timeout_s: float = 8.0
    check_memory: bool = True
    host_cpus: int = 1  # the launching host's cores: CPU ranks share them (OMP_NUM_THREADS), the same everywhere


@dataclass(frozen=True)
class Plan:
    """Degrees, batch arithmetic and the job, checked in __post_init__ with messages that name the numbers."""

    topo_name: str
    plan_name: str
    backend: str
    hosts: tuple[str, ...]
    procs_per_host: int
    accelerator: str
    dp: int
    tp: int
    pp: int
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    global_batch_size: int
    micro_batch_size: int
    grad_accum: int
    max_steps: int
    precision: str
    run_dir: str
    run_name: str
    model: ModelConfig
    data: DataConfig
    method: MethodConfig
    train: TrainConfig
    memory: MemoryEstimate
    nccl_env: dict[str, str] = field(default_factory=dict)
    resume: str = "auto"
    wandb_mode: str = "disabled"
    collective_timeout_s: int = 600
    wandb_project: str = "launcher"
    wandb_entity: str = ""
    wandb_note: str = ""  # why a run that would log online runs offline (the launching host's probe)
    overlap_comm: bool = True
    reduce_bucket_mb: int = 200
    allgather_bucket_mb: int = 200
    stage3_prefetch_mb: int = 50
    stage3_param_persistence_kb: int = 100
    stage3_fetch: str = "layer"
    compile: str = "off"
    fp8: bool = False  # train.precision=fp8: bf16 (precision) with float8 matmuls in the large linear layers
    deepspeed: dict[str, Any] = field(default_factory=dict)  # plan.deepspeed: merged into ds_config.json last
    auto_reason: str = ""  # +plan=auto: why this plan, and the runner-up
    memory_hint: str = ""  # when the estimate does not fit: what would
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    micro_batch_note: str = ""  # train.micro_batch_size=auto: what was chosen and why (plan/micro_batch.py)
    tiled_mlp: bool = False  # DeepSpeed's tiled MLP on the decoder's MLP blocks (train.tiled_mlp, resolved)
    sp: int = 1  # Ulysses sequence parallel: sp consecutive ranks share each micro batch, a slice of its tokens each
    train_sets: tuple[DataSet, ...] = ()  # what the ranks read (data/selection.py); counted on the launching host
    eval_sets: tuple[DataSet, ...] = ()  # separate validation sets (data.eval_path / data.eval_datasets)

    def __post_init__(self) -> None:
        if self.dp * self.tp * self.pp * self.sp != self.world_size:
            raise ValueError(f"dp {self.dp} x tp {self.tp} x pp {self.pp} x sp {self.sp} != world size "
                             f"{self.world_size}")
        if self.micro_batch_size * self.dp * self.grad_accum != self.global_batch_size:
            raise ValueError(
                f"micro {self.micro_batch_size} x dp {self.dp} x accum {self.grad_accum} != global {self.global_batch_size}"
            )

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.procs_per_host

    @property
    def num_hosts(self) -> int:
        return len(self.hosts)

    @property
    def has_validation(self) -> bool:
        return bool(self.eval_sets) or any(s.val_rows for s in self.train_sets)

    @property
    def checkpoint_bytes(self) -> int:
        """One checkpoint's size: weights in the training precision, fp32 master weights and two Adam moments of the
        trained part (what the free-disk checks compare against before the first save)."""
        m = self.memory
        return int(m.params * (4 if self.precision == "fp32" else 2) + m.trainable_params * 12)

    def to_dict(self) -> dict[str, Any]:
        """What plan.json and wandb's config hold: a secret-named value, should one ever get here, is masked."""
        d = dataclasses.asdict(self)
        d["hosts"] = list(self.hosts)
        d["train_sets"] = [s.to_dict() for s in self.train_sets]
        d["eval_sets"] = [s.to_dict() for s in self.eval_sets]
        d["world_size"] = self.world_size
        return mask_secrets(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        d = dict(d)
        d.pop("world_size", None)
        d["hosts"] = tuple(d["hosts"])
        d["model"] = _model_from_dict(d["model"])
        d["data"] = DataConfig(**d["data"])
        d["method"] = MethodConfig(**d["method"])
        d["train"] = TrainConfig(**d["train"])
        d["memory"] = MemoryEstimate(**d["memory"])
        for key in ("train_sets", "eval_sets"):
            d[key] = tuple(DataSet.from_dict(s) for s in d.get(key, ()))
        if "launch" in d:
            launch = dict(d["launch"])
            launch["slurm"] = SlurmConfig(**launch.get("slurm", {}))
            d["launch"] = LaunchSettings(**launch)
        return cls(**d)


def _model_from_dict(d: dict[str, Any]) -> ModelConfig:
    from launcher.config.schema import ArchConfig

    d = dict(d)
    d["arch"] = ArchConfig(**d["arch"])
    return ModelConfig(**d)


def launch_settings(cfg: LauncherConfig, hw: Hardware) -> LaunchSettings:
    topo, run, nccl = cfg.topo, cfg.run, cfg.topo.nccl
    return LaunchSettings(
        master_addr=topo.master_addr, master_port=topo.master_port, topo_env={k: str(v) for k, v in topo.env.items()},
        socket_ifname=nccl.socket_ifname or topo.socket_ifname, mtu=topo.mtu, link=topo.link, ib_hca=nccl.ib_hca,
        expects_rdma=bool(nccl.ib_hca) or nccl.ib_disable == 0, preflight=cfg.preflight, engine=run.launcher,
        hostfile=cfg.hostfile, slurm=topo.slurm, max_restarts=run.max_restarts, restart_backoff_s=run.restart_backoff_s,
        lease_timeout_s=run.lease_timeout_s, check_memory=run.check_memory, host_cpus=hw.cpu_count,
    )
