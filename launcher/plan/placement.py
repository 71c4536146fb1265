"""Where the ranks run: backend, hosts in rank order, processes per host, accelerator and network environment.

Pure given its inputs, except that a `hostfile=` is read here (launcher/plan/hostfile.py parses and validates it).
"""
from __future__ import annotations

from launcher.config.schema import LauncherConfig
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware
from launcher.plan.hostfile import read_hostfile, uniform_slots

DEFAULT_MASTER_PORT = 29500  # torchrun's and DeepSpeed's default, unless topo.master_port


def placement(cfg: LauncherConfig) -> tuple[str, tuple[str, ...], int]:
    """Backend, hosts in rank order, and the slots per host when a hostfile fixes them (0: the topology decides)."""
    topo = cfg.topo
    if cfg.hostfile:
        if topo.backend == "slurm":
            raise LauncherError("hostfile", cfg.hostfile, "drop hostfile= with +topo=slurm: the allocation names the nodes")
        entries = read_hostfile(cfg.hostfile)
        return "hostfile", tuple(e.host for e in entries), uniform_slots(entries, cfg.hostfile)
    if topo.backend == "slurm":
        return "slurm", tuple(f"slurm-node{i}" for i in range(topo.nodes)), 0
    if topo.backend == "hostfile" and not topo.hosts:
        raise LauncherError("topo.hosts", [], "list the hosts (topo.hosts=[a,b]) or give hostfile=FILE",
                            problem="backend hostfile launches over ssh and names no host")
    hosts = tuple(topo.hosts) or ("localhost",)
    if topo.backend == "local" and len(hosts) > 1:
        raise LauncherError("topo.hosts", list(hosts), "use topo.backend=hostfile (or hostfile=FILE) for several hosts",
                            problem="the local backend starts processes on this host only")
    return topo.backend, hosts, 0


def accelerator(cfg: LauncherConfig, hw: Hardware, backend: str) -> str:
    if cfg.topo.accelerator != "auto":
        return cfg.topo.accelerator
    if backend == "local" and cfg.topo.gpus_per_host is None:
        return hw.accelerator
    return "cuda"


def procs_per_host(cfg: LauncherConfig, hw: Hardware, accelerator: str) -> int:
    if accelerator == "cpu":
        return cfg.topo.cpu_procs_per_host
    if cfg.topo.gpus_per_host is not None:
        return cfg.topo.gpus_per_host
    if hw.gpu_count == 0:
        raise LauncherError(
            "topo.accelerator", "cuda", "this host has no GPU: use topo.accelerator=cpu, or set topo.gpus_per_host"
        )
    return hw.gpu_count


def nccl_env(cfg: LauncherConfig) -> dict[str, str]:
    """The NCCL (and gloo) network variables the topology asks for; unset fields keep the libraries' defaults."""
    n = cfg.topo.nccl
    env: dict[str, str] = {}
    if cfg.topo.socket_ifname:
        env["GLOO_SOCKET_IFNAME"] = cfg.topo.socket_ifname
    if n.socket_ifname or cfg.topo.socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = n.socket_ifname or cfg.topo.socket_ifname
    if n.ib_hca:
        env["NCCL_IB_HCA"] = n.ib_hca
    if n.ib_disable is not None:
        env["NCCL_IB_DISABLE"] = str(n.ib_disable)
    if n.net_gdr_level is not None:
        env["NCCL_NET_GDR_LEVEL"] = str(n.net_gdr_level)
    if n.debug:
        env["NCCL_DEBUG"] = n.debug
    env.update({k: str(v) for k, v in n.extra.items()})
    return env
