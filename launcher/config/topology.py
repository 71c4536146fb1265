"""Typed configuration of where a job runs (the `topo` group): hosts, processes per host, memory, network, NCCL
and Slurm settings. Part of the schema in launcher/config/schema.py, which composes it with what is trained."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from launcher.errors import LauncherError, choice, positive
from launcher.plan.links import EXPECTED_BUSBW_GBPS


@dataclass
class NcclConfig:
    """NCCL settings rendered into every rank's environment; empty means NCCL's own default."""

    socket_ifname: str = ""
    ib_hca: str = ""
    ib_disable: Optional[int] = None
    net_gdr_level: Optional[int] = None
    debug: str = ""
    extra: Dict[str, str] = field(default_factory=dict)


@dataclass
class SlurmConfig:
    """sbatch settings for backend=slurm; empty means the cluster's default."""

    partition: str = ""
    account: str = ""
    time: str = ""  # sbatch --time, e.g. 04:00:00
    signal_before_s: int = 300  # SIGUSR1 this long before the time limit: the ranks save, the job requeues
    requeue: bool = True
    exclusive: bool = True
    extra: List[str] = field(default_factory=list)  # more sbatch options, e.g. ["--qos=high", "--constraint=h100"]

    def __post_init__(self) -> None:
        positive("topo.slurm.signal_before_s", self.signal_before_s, allow_zero=True)
        for line in self.extra:
            if not str(line).startswith("-"):
                raise LauncherError("topo.slurm.extra", line, "give sbatch options such as --qos=high")


@dataclass
class TopoConfig:
    """Where the job runs: hosts, processes per host, memory and network.

    gpus_per_host=None means: detect on this host (local topology). On a machine without GPUs the ranks are CPU
    processes, `cpu_procs_per_host` of them.
    """

    name: str = "local"
    description: str = "this machine: its GPUs, or CPU processes when it has none"
    backend: str = "local"  # local | hostfile | slurm
    hosts: List[str] = field(default_factory=list)
    gpus_per_host: Optional[int] = None
    gpus_per_node: Optional[int] = None  # Slurm's word for gpus_per_host; when set it wins
    cpu_procs_per_host: int = 2
    accelerator: str = "auto"  # auto | cuda | cpu
    gpu_memory_gb: Optional[float] = None
    unified_memory: bool = False
    host_memory_gb: Optional[float] = None
    gpu_arch: str = ""
    master_addr: str = ""
    master_port: int = 0
    nodes: int = 1  # backend=slurm: nodes to allocate
    socket_ifname: str = ""  # the interface ranks talk over: GLOO_SOCKET_IFNAME (and NCCL's unless nccl says)
    mtu: int = 0  # expected MTU of that link, checked on every host before a launch; 0 = not checked
    link: str = ""  # what joins the GPUs (nvlink, pcie, cx7_200g, ib_400g, eth_10g...): preflight's expected bandwidth
    nccl: NcclConfig = field(default_factory=NcclConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    env: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choice("topo.backend", self.backend, ("local", "hostfile", "slurm"))
        choice("topo.accelerator", self.accelerator, ("auto", "cuda", "cpu"))
        if self.link and self.link not in EXPECTED_BUSBW_GBPS:
            raise LauncherError("topo.link", self.link, f"use one of: {', '.join(EXPECTED_BUSBW_GBPS)}, or leave it "
                                "empty (no bandwidth expectation)")
        if self.gpus_per_node is not None:
            positive("topo.gpus_per_node", self.gpus_per_node)
            self.gpus_per_host = self.gpus_per_node
        if self.gpus_per_host is not None:
            positive("topo.gpus_per_host", self.gpus_per_host)
        positive("topo.cpu_procs_per_host", self.cpu_procs_per_host)
        positive("topo.nodes", self.nodes)
        if len(set(self.hosts)) != len(self.hosts):
            dup = sorted({h for h in self.hosts if self.hosts.count(h) > 1})
            raise LauncherError("topo.hosts", self.hosts, f"host {dup[0]} is listed twice: list each host once")
        _check_gloo_ifname(self.socket_ifname)
        if self.unified_memory:
            _check_no_gdr(self.nccl, self.env)


def _check_gloo_ifname(name: str) -> None:
    """gloo takes exact interface names and round-robins over a comma list: one name, the interface that carries
    master_addr (NCCL's prefix lists go in topo.nccl.socket_ifname)."""
    if any(c in name for c in ",^=") or name != name.strip():
        raise LauncherError("topo.socket_ifname", name, "name the one interface that carries topo.master_addr (e.g. "
                            "topo.socket_ifname=enp1s0f1np1) and put NCCL's list in topo.nccl.socket_ifname",
                            problem="it sets GLOO_SOCKET_IFNAME, which takes exact names and would spread gloo's "
                            "traffic over every interface listed")


GDR_OFF = ("0", "LOC")  # NCCL_NET_GDR_LEVEL values that keep GPUDirect RDMA off


def _check_no_gdr(nccl: NcclConfig, env: Dict[str, str]) -> None:
    """Unified memory (GB10) has no GPUDirect RDMA: NCCL stages through host memory by itself, and a GDR level asks
    for a path the box does not have."""
    asked = [("topo.nccl.net_gdr_level", nccl.net_gdr_level)] if nccl.net_gdr_level is not None else []
    asked += [(f"topo.{where}.NCCL_NET_GDR_LEVEL", table["NCCL_NET_GDR_LEVEL"])
              for where, table in (("nccl.extra", nccl.extra), ("env", env)) if "NCCL_NET_GDR_LEVEL" in table]
    for field_name, value in asked:
        if str(value).upper() not in GDR_OFF:
            raise LauncherError(field_name, value, "drop it (or use 0): NCCL stages RDMA through host memory on its "
                                "own", problem="this topology has unified memory (topo.unified_memory=true, GB10), "
                                "which has no GPUDirect RDMA")
