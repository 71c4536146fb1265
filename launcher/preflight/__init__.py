"""Preflight: find a broken host, link or environment in seconds, before a job hangs in its first collective.

quick = this host's static checks (no torch import on a CPU host); full = every host of the topology over ssh, plus a
short all-reduce across the ranks; auto = quick for one host, full for several. Kept import-light: job.py imports it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import LauncherError

if TYPE_CHECKING:  # the ranks of the collective import this package: keep their start light
    from launcher.plan.types import Plan

MODES = ("auto", "quick", "full", "skip")
TIMEOUT_VAR = "LAUNCHER_PREFLIGHT_TIMEOUT_S"  # the collective's hard timeout, seconds
CPU_TIMEOUT_S, GPU_TIMEOUT_S = 60.0, 120.0
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def mode_for(asked: str, num_hosts: int) -> str:
    if asked not in MODES:
        raise LauncherError("preflight", asked, f"use one of: {', '.join(MODES)}")
    return ("quick" if num_hosts == 1 else "full") if asked == "auto" else asked


def plan_hash(plan: Plan) -> str:
    return hashlib.sha256(plan.to_json().encode()).hexdigest()[:16]


def run_checks(plan: Plan, environ: dict[str, str], mode: str) -> tuple[list, dict]:
    """All rows for this mode, and what preflight.json records besides them."""
    from launcher.preflight import checks as c

    launch = plan.launch
    ifname = plan.nccl_env.get("NCCL_SOCKET_IFNAME") or plan.nccl_env.get("GLOO_SOCKET_IFNAME", "")
    multi = plan.backend != "local"
    deep = mode == "full"
    master = (launch.master_addr or plan.hosts[0]) if multi else "localhost"
    peers = [h.rpartition("@")[2] for h in plan.hosts] if multi else []
    base = {"run_dir": plan.run_dir, "package_dir": str(PACKAGE_DIR), "deep": deep, "targets": peers,
            "hub": hub_request(plan, environ)}
    local = c.gather_local({**base, "port": 0 if multi else launch.master_port})
    hosts = [local]
    marker = None
    if plan.backend == "hostfile" and deep:  # slurm's nodes are unknown until the allocation starts
        marker = _marker(plan.run_dir)
        args = {h: {**base, "marker": str(marker), "port": launch.master_port if h == master else 0} for h in plan.hosts}
        try:
            hosts += c.gather_remote(list(plan.hosts), sys.executable, args, _ssh_args(environ))
        finally:
            marker.unlink(missing_ok=True)
    rows = []
    for f in hosts:
        remote = f is not local
        rows += c.host_checks(f, plan.accelerator if (remote or not multi) else "cpu", plan.procs_per_host,
                              ifname if (remote or not multi) else "", launch.mtu, launch.ib_hca if remote or not multi
                              else "", [p for p in peers if p != f.host], shared_expected=remote,
                              checkpoint_gb=checkpoint_gb(plan), hub_offline=hub_offline(environ))
    rows += rank_host_rows(plan, [f for f in hosts if f is not local or not multi])
    arch = c.check_arch_list(environ.get("TORCH_CUDA_ARCH_LIST", ""))
    rows += [arch] if arch else []
    if len(hosts) > 1:
        rows += c.compare_versions(hosts)
    extra: dict = {"mode": mode, "plan_hash": plan_hash(plan), "hosts": {f.host: f.facts or {"error": f.error}
                                                                             for f in hosts}}
    if deep:
        rows += _collective(plan, environ, extra, rows)
    return rows, extra


def rank_host_rows(plan: Plan, hosts: list) -> list:
    """On the hosts that run ranks: roce_gid (NCCL's GID on each HCA port it is told to use), memlock, mem_available
    (unified memory), nccl_version; then roce_gid and nccl_version across them."""
    from launcher.preflight import resources as r
    from launcher.preflight import roce

    env = {**plan.nccl_env, **plan.launch.topo_env}
    spec, rdma, cuda = env.get("NCCL_IB_HCA", ""), plan.launch.expects_rdma, plan.accelerator == "cuda"
    need_gb = plan.memory.need_gb * plan.procs_per_host
    rows = []
    for f in hosts:
        rows += [roce.check_roce_gid(f, spec, env, plan.launch.mtu) if rdma else None, r.check_memlock(f, rdma),
                 r.check_mem_available(f, need_gb, plan.memory.unified_memory and cuda),
                 r.check_nccl_version(f) if cuda else None]
    rows += [roce.compare_gid_subnets(hosts, spec, env) if rdma else None, r.compare_nccl(hosts) if cuda else None]
    return [row for row in rows if row is not None]


def _collective(plan: Plan, environ: dict[str, str], extra: dict, rows: list) -> list:
    """The all-reduce across every rank of the launch, started by the launch's own engine (torchrun on one host,
    DeepSpeed's runner over pdsh on several); skipped when a host check already failed (it could only hang)."""
    from launcher.preflight.checks import FAIL, WARN, Check

    if plan.backend == "slurm":
        return [Check("all-reduce", "all", WARN, "not run here: Slurm's nodes are known once the allocation starts; "
                      "the job's first step runs it there", "")]
    if any(r.status == FAIL for r in rows):
        return [Check("all-reduce", "all", FAIL, "not run: fix the failed checks above first", "")]
    from launcher.preflight.collective import judge, run_collective, torchrun_argv
    from launcher.render.env import rank_env

    ranks = rank_env(plan, environ)
    env = {**environ, **ranks}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_DIR.parent), environ.get("PYTHONPATH", "")) if p)
    out = Path(plan.run_dir) / "preflight"
    stop_remote: tuple[str, ...] = ()
    if plan.backend == "hostfile":
        argv = _runner_argv(plan, ranks, env, environ, out)
        hosts = ",".join(h.rpartition("@")[2] for h in plan.hosts)
        # this collective's ranks and per-node launchers, no other job's; "[l]" keeps pkill off its own command line
        own = "[l]" + re.escape(f"auncher.preflight.collective {plan.accelerator} {out}")
        stop_remote = ("pdsh", "-R", "ssh", "-w", hosts, f"pkill -KILL -f {shlex.quote(own)}")
    else:
        argv = torchrun_argv(sys.executable, plan.procs_per_host, plan.accelerator)
    default = GPU_TIMEOUT_S if plan.accelerator == "cuda" else CPU_TIMEOUT_S
    rank_hosts = [h for h in plan.hosts for _ in range(plan.procs_per_host)]
    res = run_collective(argv, env, out / "collective.log", rank_hosts, float(environ.get(TIMEOUT_VAR) or default),
                         stop_remote)
    extra["collective"] = dataclasses.asdict(res)
    return judge(res, plan.launch.expects_rdma, plan.launch.link, plan.nccl_env.get("NCCL_IB_HCA", ""))


def hub_request(plan: Plan, environ: dict[str, str]) -> dict:
    """What each host's probe asks its Hugging Face cache: the hub ids the ranks load, under the launch's cache
    variables (a local model folder is checked by the ranks' own start)."""
    from launcher.render.env import FORWARDED
    from launcher.config.services import looks_like_hub_id

    ids = [i for i in dict.fromkeys((plan.model.path, plan.model.tokenizer)) if looks_like_hub_id(i)]
    return {"ids": ids, "env": {k: environ[k] for k in FORWARDED if k.startswith("HF_") and environ.get(k)}}


def hub_offline(environ: dict[str, str]) -> bool:
    from launcher.config.services import TRUE

    return environ.get("HF_HUB_OFFLINE", "").lower() in TRUE


def _runner_argv(plan: Plan, ranks: dict[str, str], env: dict[str, str], environ: dict[str, str], out: Path
                 ) -> tuple[str, ...]:
    """DeepSpeed's runner over the plan's hosts, its hostfile and rank environment in run_dir/preflight/ (the
    launch's own files are written only when it launches); NCCL_DEBUG=INFO reaches every rank through them."""
    from launcher.backends.hostfile import runner_argv
    from launcher.preflight.collective import NEVER_JOIN_VAR
    from launcher.render.hostfile import render_deepspeed_env, render_hostfile

    out.mkdir(parents=True, exist_ok=True)
    test_only = {NEVER_JOIN_VAR: environ[NEVER_JOIN_VAR]} if environ.get(NEVER_JOIN_VAR) else {}
    (out / "hostfile").write_text(render_hostfile(plan))
    (out / "deepspeed_env").write_text(render_deepspeed_env({**ranks, "NCCL_DEBUG": "INFO", **test_only}))
    env["DS_ENV_FILE"] = str(out / "deepspeed_env")
    return runner_argv(plan, sys.executable, plan.launch.master_addr, plan.launch.master_port, str(out),
                       ("launcher.preflight.collective", plan.accelerator, str(out)))


def _marker(run_dir: str) -> Path:
    """A file every host must see when the run dir is shared."""
    path = Path(run_dir)
    while not path.exists():
        path = path.parent
    marker = path / f".launcher-preflight-{uuid.uuid4().hex}"
    marker.touch()
    return marker


def _ssh_args(environ: dict[str, str]) -> list[str]:
    return shlex.split(environ.get("PDSH_SSH_ARGS_APPEND", ""))  # the options pdsh will use


def checkpoint_gb(plan: Plan) -> float:
    return plan.checkpoint_bytes / 1024**3


def run_before_launch(plan: Plan, environ: dict[str, str]) -> None:
    """The launch's hook: raise a LauncherError when a check fails; print the table only when something is off."""
    mode = mode_for(plan.launch.preflight, plan.num_hosts)
    if mode == "skip":
        return
    from launcher.preflight.report import failed, print_table, summary_line, write_json

    rows, extra = run_checks(plan, environ, mode)
    write_json(Path(plan.run_dir), rows, extra)
    if any(r.status != "pass" for r in rows):
        print_table(rows, only_problems=True)
    print(summary_line(rows, mode))
    bad = failed(rows)
    if bad:
        name, value = _field_of(bad[0].check, plan)
        hint = f"{bad[0].hint or 'the table above says what failed'}; or launch anyway with preflight=skip"
        raise LauncherError(name, value, hint, problem=f"preflight: {bad[0].check} on {bad[0].host}: {bad[0].detail}")


def _field_of(check: str, plan: "Plan") -> tuple[str, object]:
    """The config field a user would change for a failed check (the paragraph names it)."""
    launch = plan.launch
    return {
        "master port": ("topo.master_port", launch.master_port),
        "interface": ("topo.socket_ifname", launch.socket_ifname),
        "rdma": ("topo.nccl.ib_hca", launch.ib_hca),
        "roce_gid": ("topo.nccl.ib_hca", launch.ib_hca),
        "mem_available": ("run.check_memory", launch.check_memory),
        "run dir": ("run.dir", plan.run_dir),
        "free disk": ("run.dir", plan.run_dir),
        "gpus": ("topo.gpus_per_host", plan.procs_per_host),
    }.get(check, ("preflight", launch.preflight))
