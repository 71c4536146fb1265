"""Several hosts over ssh, through DeepSpeed's multinode runner (pdsh): one command here starts every rank there.

The runner (launcher.backends.ds_runner: DeepSpeed's, with a stop that names the run) runs
`cd <cwd>; <this python> -m deepspeed.launcher.launch ...` on each host, so the interpreter path,
working directory and PYTHONPATH are this host's; the rank environment travels in the run dir's `deepspeed_env`
(DS_ENV_FILE). Before the launch, one bounded ssh round trip per host checks what the runner would only find out by
hanging or failing remotely: passwordless ssh, the same python and directory, a run dir every host sees, enough
GPUs for the slots, the link interface and its MTU.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import LauncherError
from launcher.plan.placement import DEFAULT_MASTER_PORT
from launcher.plan.types import Plan
from launcher.secrets import is_secret
from launcher.render.hostfile import render_deepspeed_env, render_hostfile
from launcher.render.launch import LaunchSpec, RankProgram, accelerate_argv, worker_program

CONNECT_TIMEOUT_S = 10
PROBE_TIMEOUT_S = 60
RUNNER_EXPORTS = ("PYTHON", "MLFLOW", "MV2", "UCX", "NCCL")  # what deepspeed.launcher.runner copies to remote hosts
IFNAME_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
# launcher.launch.spawn sends a preemption signal to DeepSpeed's runner (signal_to="launcher"), whose handler stops every
# host through pdsh (`pkill`: the remote ranks get SIGTERM and save). The local pdsh/ssh clients ignore TERM and USR1 so
# that a signal sent to the whole process group cannot cut them off and leave the remote ranks running.
IGNORE_PREEMPTION = ("bash", "-c", "trap '' TERM USR1; exec \"$@\"", "launcher-hostfile")


def hostfile_spec(plan: Plan, python: str, master_addr: str, master_port: int, rank_env: dict[str, str], cwd: str,
                  environ: dict[str, str], program: RankProgram | None = None) -> tuple[LaunchSpec, dict[str, str]]:
    """The runner's command and the run-dir files it reads (hostfile, deepspeed_env)."""
    files = {"hostfile": render_hostfile(plan), "deepspeed_env": render_deepspeed_env(rank_env)}
    hidden = sorted(k for k in environ if is_secret(k) and k.startswith(RUNNER_EXPORTS))
    program = program or worker_program(plan.run_dir)
    runner = runner_argv(plan, python, master_addr, master_port, plan.run_dir, _module_argv(program, python, plan))
    if program.accelerate_config:  # one process per host: its `accelerate launch`, which starts the host's ranks
        at = runner.index(f"--hostfile={plan.run_dir}/hostfile")
        runner = (*runner[:at], "--num_gpus=1", *runner[at:])
    argv = (
        *IGNORE_PREEMPTION,
        *(("env", *(a for k in hidden for a in ("-u", k))) if hidden else ()),
        *runner,
    )
    env = {**rank_env, "DS_ENV_FILE": f"{plan.run_dir}/deepspeed_env"}
    return LaunchSpec(argv=argv, env=env, cwd=cwd, signal_to="launcher"), files


def runner_argv(plan: Plan, python: str, master_addr: str, master_port: int, files_dir: str,
                module_argv: tuple[str, ...]) -> tuple[str, ...]:
    """DeepSpeed's multinode runner over pdsh, starting `python -m <module_argv>` as every rank of the plan (the
    training worker, or preflight's collective); the hostfile is read from files_dir, which module_argv names, so
    that the runner's stop (launcher.backends.ds_runner) ends this job's processes only."""
    return (
        python, "-m", "launcher.backends.ds_runner", f"--launcher-run-dir={files_dir}",
        f"--hostfile={files_dir}/hostfile",
        "--launcher=pdsh",
        f"--master_addr={master_addr or plan.hosts[0].rpartition('@')[2]}",
        f"--master_port={master_port or DEFAULT_MASTER_PORT}",
        "--no_ssh_check",  # the preflight checks every host, with timeouts; the runner's check has none
        "--module", "--no_local_rank", *module_argv,
    )


def _module_argv(program: RankProgram, python: str, plan: Plan) -> tuple[str, ...]:
    if program.accelerate_config:  # launcher.script.entry adds this host's --machine_rank (the runner's RANK)
        return ("launcher.script.entry", "node", plan.run_dir, "--", *accelerate_argv(python, program))
    return (program.module, *program.args)


@dataclass(frozen=True)
class HostFacts:
    """What one ssh round trip learned about a host; `error` is set when the host could not be asked."""

    host: str
    error: str = ""
    python: bool = False
    cwd: bool = False
    shared: bool = False
    gpus: int = 0
    gpu_memory_gb: float = 0.0  # the smallest GPU's; 0 when nvidia-smi does not say (GB10's unified memory: [N/A])
    ifaces: dict[str, int] = field(default_factory=dict)  # name -> MTU
    mem_available_gb: float = 0.0  # MemAvailable: a GB10's GPU budget (unified memory); 0 when unknown


def probe_script(python: str, cwd: str, marker: str) -> str:
    q = shlex.quote
    return "; ".join([
        f"test -x {q(python)} && echo python=1",
        f"test -d {q(cwd)} && echo cwd=1",
        f"test -e {q(marker)} && echo shared=1",
        "echo gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')",
        "echo gpumib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | sort -n | head -1)",
        'for i in /sys/class/net/*; do echo "iface=${i##*/}:$(cat $i/mtu 2>/dev/null)"; done',
        "echo memavail=$(grep '^MemAvailable:' /proc/meminfo 2>/dev/null | tr -s ' ' | cut -d' ' -f2)",
        "true",
    ])


def parse_probe(host: str, stdout: str) -> HostFacts:
    values: dict[str, str] = {}
    ifaces: dict[str, int] = {}
    for line in stdout.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "iface" and ":" in value:
            name, _, mtu = value.partition(":")
            ifaces[name] = int(mtu) if mtu.isdigit() else 0
        elif key:
            values[key] = value
    gpus, mib, avail = values.get("gpus", "0"), values.get("gpumib", "").strip(), values.get("memavail", "").strip()
    return HostFacts(host, python="python" in values, cwd="cwd" in values, shared="shared" in values,
                     gpus=int(gpus) if gpus.isdigit() else 0, gpu_memory_gb=int(mib) / 1024 if mib.isdigit() else 0.0,
                     ifaces=ifaces, mem_available_gb=int(avail) / 1024**2 if avail.isdigit() else 0.0)


def probe_hosts(hosts: tuple[str, ...], script: str, ssh_args: list[str]) -> list[HostFacts]:
    """All hosts at once; every wait is bounded (a frozen sshd accepts the TCP connection and then says nothing)."""
    base = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", *ssh_args]
    procs = {h: subprocess.Popen([*base, h, "sh -c " + shlex.quote(script)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in hosts}
    facts = []
    for host, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            facts.append(HostFacts(host, error=f"no answer over ssh within {PROBE_TIMEOUT_S} s"))
            continue
        if proc.returncode != 0:
            last = (err.strip().splitlines() or [f"ssh exit code {proc.returncode}"])[-1]
            facts.append(HostFacts(host, error=f"ssh failed: {last}"))
        else:
            facts.append(parse_probe(host, out))
    return facts


def check_host(f: HostFacts, plan: Plan, python: str, cwd: str, shared_dir: str, rank_env: dict[str, str],
               mtu: int, source: tuple[str, object]) -> None:
    """Raise the first problem found on one host, naming it."""
    field_name, value = source
    h = f.host
    if f.error:
        raise LauncherError(field_name, value, f"make `ssh {h} true` work from this host without a password (ssh-copy-id "
                            f"{h}; for two PGX boxes scripts/setup_dual_pgx.sh), or remove {h}",
                            problem=f"host {h} is unreachable: {f.error}")
    same = "install the same environment at the same path on every host, or share it over NFS"
    if not f.python:
        raise LauncherError(field_name, value, same, problem=f"host {h} has no {python}")
    if not f.cwd:
        raise LauncherError(field_name, value, same, problem=f"host {h} has no directory {cwd}")
    if not f.shared:
        raise LauncherError("run.output_dir", shared_dir, "put runs on storage every host mounts at the same path "
                            "(e.g. run.output_dir=/mnt/shared/runs)",
                            problem=f"host {h} does not see {shared_dir}: ranks read the plan and write checkpoints there")
    if plan.accelerator == "cuda" and f.gpus < plan.procs_per_host:
        raise LauncherError(field_name, value, f"give {h} at most slots={f.gpus}" if f.gpus else
                            f"remove {h}, or use topo.accelerator=cpu",
                            problem=f"host {h} has {f.gpus} GPU(s) and the plan starts {plan.procs_per_host} ranks on it")
    for var in IFNAME_VARS:
        _check_iface(f, var, rank_env.get(var, ""), mtu)


def _check_iface(f: HostFacts, var: str, spec: str, mtu: int) -> None:
    """NCCL reads a comma list of name prefixes (`=name` exact, `^name` excluded); gloo reads exact names."""
    wanted = [w for w in spec.split(",") if w and not w.startswith("^")]
    if not wanted:
        return
    found = [n for n in f.ifaces for w in wanted if (n == w[1:] if w.startswith("=") else n.startswith(w))]
    if not found:
        raise LauncherError("topo.socket_ifname" if var.startswith("GLOO") else "topo.nccl.socket_ifname", spec,
                            "bring the link up with its address (scripts/setup_dual_pgx.sh) or name an interface it has",
                            problem=f"host {f.host} has no interface {spec} ({var}); it has {', '.join(sorted(f.ifaces))}")
    wrong = [n for n in found if mtu and f.ifaces[n] != mtu]
    if wrong:
        raise LauncherError("topo.mtu", mtu, "set the MTU on both ends (scripts/setup_dual_pgx.sh) or topo.mtu=0 to "
                            "skip this check", problem=f"host {f.host}: {wrong[0]} has MTU {f.ifaces[wrong[0]]}")


def check_hosts_memory(plan: Plan, facts: list[HostFacts], source: tuple[str, object]) -> None:
    """The memory estimate against each host's own memory: the plan was sized on the launching host, which may have
    other GPUs or none (a login node). Discrete GPUs are judged by their memory; unified memory (GB10) by the host's
    MemAvailable now (a desktop session or the page cache holds tens of GB). Hosts that report neither are not judged."""
    m = plan.memory
    if plan.accelerator != "cuda":
        return
    have = [(f.mem_available_gb if m.unified_memory else f.gpu_memory_gb, f) for f in facts]
    small = sorted(((gb, f) for gb, f in have if gb > 0), key=lambda x: x[0])
    need = m.need_gb * (plan.procs_per_host if m.unified_memory else 1)
    if not small or need <= small[0][0]:
        return
    gb, f = small[0]
    what = (f"host {f.host} has {gb:.0f} GiB of unified memory available (MemAvailable)" if m.unified_memory else
            f"host {f.host}'s GPUs have {gb:.0f} GiB")
    free = (f"free memory on {f.host} (log out of its desktop session, drop the page cache: sudo sh -c 'sync; echo 3 > "
            "/proc/sys/vm/drop_caches'), " if m.unified_memory else "")
    raise LauncherError(source[0], source[1], free + (plan.memory_hint or "shard more (+plan=zero3 or "
                        "+plan=zero3_offload), lower train.micro_batch_size, or turn on train.gradient_checkpointing")
                        + "; run.check_memory=false launches anyway",
                        problem=f"{what} and the plan's estimate is ~{need:.1f} GiB "
                        f"{'per host' if m.unified_memory else 'per GPU'} (sized on this host's {m.capacity_gb:.0f} GiB)")


def preflight(plan: Plan, python: str, cwd: str, rank_env: dict[str, str], mtu: int, ssh_args: list[str],
              source: tuple[str, object], path: str) -> list[HostFacts]:
    """Ask every host over ssh (as pdsh will) before starting anything; fail fast naming the host. Returns what the
    hosts said (check_hosts_memory reads it)."""
    for tool in ("ssh", "pdsh"):
        if not shutil.which(tool, path=path):
            raise LauncherError(source[0], source[1], "install OpenSSH's client and pdsh on this host (Debian/Ubuntu: "
                                "apt-get install openssh-client pdsh)", problem=f"{tool} is not on PATH")
    shared_dir = _nearest_existing(Path(plan.run_dir))
    marker = shared_dir / f".launcher-probe-{uuid.uuid4().hex}"
    marker.touch()
    try:
        facts = probe_hosts(plan.hosts, probe_script(python, cwd, str(marker)), ssh_args)
    finally:
        marker.unlink(missing_ok=True)
    for f in facts:
        check_host(f, plan, python, cwd, str(shared_dir), rank_env, mtu, source)
    return facts


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path
