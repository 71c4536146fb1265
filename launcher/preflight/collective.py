"""A short all-reduce across the ranks of the real launch: bus bandwidth per size and the transport NCCL chose.

The parent starts the launch's engine with a hard timeout; each rank prints a line before it joins the process group
and another when it is done, so a timeout names the ranks (and hosts) that never joined instead of hanging.
Run as a rank: `python -m torch.distributed.run ... -m launcher.preflight.collective <accelerator>`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from launcher.preflight.bandwidth import judge_busbw
from launcher.processes import process_tree
from launcher.preflight.checks import FAIL, PASS, Check

CPU_SIZES_MB = (1, 4, 16, 64)
GPU_SIZES_MB = (1, 16, 128, 1024)
ITERS = 3
RESULT = "PREFLIGHT_COLLECTIVE "
RESULT_LINE = re.compile(r"PREFLIGHT_COLLECTIVE (\{.*\})")
JOINING = re.compile(r"PREFLIGHT_JOINING (\d+)")
DONE = re.compile(r"PREFLIGHT_DONE (\d+)")
STOP_GRACE_S = 8
NEVER_JOIN_VAR = "LAUNCHER_PREFLIGHT_NEVER_JOIN"  # test-only: this rank never joins (read at the edge, below)
TRANSPORT = re.compile(r"NET/(IB|Socket)\s*:\s*Using\s*(.*)|via (P2P/\S+|SHM/\S+|SHM|NET/\S+)")


@dataclass(frozen=True)
class CollectiveResult:
    ok: bool
    busbw_gbps: dict[str, float] = field(default_factory=dict)  # size in MiB -> GB/s
    transports: tuple[str, ...] = ()
    missing_ranks: tuple[str, ...] = ()  # never joined: "3 (host-b)"
    stuck_ranks: tuple[str, ...] = ()  # joined, never finished
    error: str = ""


def parse_transports(log: str) -> tuple[str, ...]:
    """What NCCL_DEBUG=INFO says it used: 'NET/IB rocep1s0f1:1/RoCE', 'NET/Socket', 'P2P/CUMEM', 'SHM'..."""
    found: list[str] = []
    for m in TRANSPORT.finditer(log):
        if m.group(1) == "IB" and not re.match(r"\[\d+\]", m.group(2) or ""):
            continue  # "NET/IB : Using [RO]; OOB eth0": the IB plugin loaded and found no device
        t = f"NET/{m.group(1)}" if m.group(1) else m.group(3).split("/read")[0]
        if m.group(1) == "IB":
            t += " " + m.group(2).split()[0]
        found.append(t)
    return tuple(dict.fromkeys(found))


def judge(res: CollectiveResult, expects_rdma: bool, link: str, ib_hca: str = "") -> list[Check]:
    if not res.ok:
        who = (f"rank(s) {', '.join(map(str, res.missing_ranks))} never joined" if res.missing_ranks else
               f"rank(s) {', '.join(map(str, res.stuck_ranks))} joined but never finished" if res.stuck_ranks else "")
        return [Check("all-reduce", "all", FAIL, "; ".join(x for x in (who, res.error) if x),
                      "see preflight/collective.log in the run dir; check the interface, firewall and master port")]
    sizes = ", ".join(f"{s} MiB {bw:.2f} GB/s" for s, bw in res.busbw_gbps.items())
    rows = [Check("all-reduce", "all", PASS, f"bus bandwidth {sizes}")]
    largest = list(res.busbw_gbps.values())[-1] if res.busbw_gbps else 0.0  # 0 with one rank: nothing crosses a link
    verdict = judge_busbw(link, largest, expects_rdma, ib_hca)
    rows += [verdict] if verdict else []
    if res.transports:
        socket_only = "NET/Socket" in res.transports and not any(t.startswith("NET/IB") for t in res.transports)
        bad = expects_rdma and socket_only
        rows.append(Check("transport", "all", FAIL if bad else PASS, ", ".join(res.transports),
                          "NCCL fell back to sockets: check topo.nccl.ib_hca, NCCL_IB_DISABLE and ibstat" if bad else ""))
    return rows


def torchrun_argv(python: str, procs: int, accelerator: str) -> tuple[str, ...]:
    """One host: torchrun with the launch's rank count."""
    return (python, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={procs}", "--standalone",
            "--max-restarts=0", "-m", "launcher.preflight.collective", accelerator)


def run_collective(argv: tuple[str, ...], env: dict[str, str], log_path: Path, rank_hosts: list[str],
                   timeout_s: float, stop_remote: tuple[str, ...] = ()) -> CollectiveResult:
    """The engine's command (torchrun here, DeepSpeed's runner over pdsh for several hosts), killed at timeout_s,
    never waited on. Ranks print a line when they join and when they are done; pdsh relays remote output, so the
    log names the ranks that never joined on any host, without a shared filesystem."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**env, "NCCL_DEBUG": "INFO"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc, stop_remote, env)
            code = None
        except KeyboardInterrupt:  # Ctrl-C during the check: its ranks run in a session of their own
            _stop(proc, stop_remote, env)
            raise
    text = log_path.read_text(errors="replace")
    joined = {int(m.group(1)) for m in JOINING.finditer(text)}
    done = {int(m.group(1)) for m in DONE.finditer(text)}
    name = lambda r: f"{r} ({rank_hosts[r]})" if r < len(rank_hosts) and len(set(rank_hosts)) > 1 else str(r)
    missing = tuple(name(r) for r in range(len(rank_hosts)) if r not in joined)
    stuck = tuple(name(r) for r in sorted(joined - done))
    result = [json.loads(m.group(1)) for m in RESULT_LINE.finditer(text)]
    if code == 0 and result:
        return CollectiveResult(True, result[-1], parse_transports(text))
    error = f"no result within {timeout_s:.0f} s" if code is None else f"exit code {code}"
    return CollectiveResult(False, {}, parse_transports(text), missing, stuck, error)


def _gone(pids: list[int], timeout_s: float = 5.0) -> None:
    """Until the killed ranks have left the process table (they are not our children: torchrun reaps them)."""
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _stop(proc: subprocess.Popen, stop_remote: tuple[str, ...], env: dict[str, str]) -> None:
    """Several hosts: `stop_remote` (a pdsh pkill naming this collective's own run dir) ends the ranks there, then
    KILL ends the runner and pdsh here: the ranks of a check need no graceful stop (the runner's own SIGTERM
    handler, launcher.backends.ds_runner, gives the ranks SIGTERM and waits). One host: TERM to torchrun (it stops its
    workers), then KILL to every process it started: its ranks run in sessions of their own, which a signal to its
    process group would miss (a torchrun slow to stop, on a loaded machine, left them running)."""
    if stop_remote:
        try:
            subprocess.run(stop_remote, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=STOP_GRACE_S * 3)
        except subprocess.TimeoutExpired:
            pass
    started = process_tree(proc.pid)
    if not stop_remote:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    for pid in dict.fromkeys(started + process_tree(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    _gone(started[1:])


def rank_main(accelerator: str, rank: int, world: int, local_rank: int, never_join: int) -> None:
    """One rank: join, all-reduce each size ITERS times after a warm-up, rank 0 prints the bus bandwidths."""
    if rank == never_join:
        time.sleep(3600)  # the parent's timeout ends this
    _say(f"PREFLIGHT_JOINING {rank} {socket.gethostname()}")
    import torch
    import torch.distributed as dist

    gpu = accelerator == "cuda"
    if gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if gpu else "gloo")
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    bw: dict[str, float] = {}
    for mb in GPU_SIZES_MB if gpu else CPU_SIZES_MB:
        x = torch.ones(mb * 2**20 // 4, dtype=torch.float32, device=device)
        dist.all_reduce(x)
        _sync(gpu)
        t0 = time.perf_counter()
        for _ in range(ITERS):
            dist.all_reduce(x)
        _sync(gpu)
        dt = (time.perf_counter() - t0) / ITERS
        bw[str(mb)] = round(mb * 2**20 * 2 * (world - 1) / world / dt / 1e9, 3)
    if rank == 0:
        _say(RESULT + json.dumps(bw))
    dist.barrier()
    dist.destroy_process_group()
    _say(f"PREFLIGHT_DONE {rank}")


def _say(line: str) -> None:
    """One write per line: under `python -u` print() writes the text and the newline separately, and two ranks of a
    host share the pipe pdsh reads, so their lines could interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _sync(gpu: bool) -> None:
    if gpu:
        import torch

        torch.cuda.synchronize()


if __name__ == "__main__":
    e = os.environ
    rank_main(sys.argv[1], int(e["RANK"]), int(e["WORLD_SIZE"]), int(e["LOCAL_RANK"]), int(e.get(NEVER_JOIN_VAR) or -1))
