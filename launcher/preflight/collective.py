"""A short all-reduce across the ranks of the real launch: bus bandwidth per size and the transport NCCL chose.

The parent starts torchrun with a hard timeout; each rank leaves a marker before it joins the process group and
another when it is done, so a timeout names the ranks that never joined instead of hanging.
Run as a rank: `python -m torch.distributed.run ... -m launcher.preflight.collective <marker dir>`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from launcher.preflight.checks import FAIL, PASS, WARN, Check

CPU_SIZES_MB = (1, 4, 16, 64)
GPU_SIZES_MB = (1, 16, 128, 1024)
ITERS = 3
RESULT = "PREFLIGHT_COLLECTIVE "
NEVER_JOIN_VAR = "LAUNCHER_PREFLIGHT_NEVER_JOIN"  # test-only: this rank never joins (read at the edge, below)
# healthy large-size bus bandwidth (GB/s) per topology preset; below half of it is a warning
EXPECTED_BUSBW_GBPS = {"dual_pgx": 20.0}
TRANSPORT = re.compile(r"NET/(IB|Socket)\s*:\s*Using\s*(.*)|via (P2P/\S+|SHM/\S+|SHM|NET/\S+)")


@dataclass(frozen=True)
class CollectiveResult:
    ok: bool
    busbw_gbps: dict[str, float] = field(default_factory=dict)  # size in MiB -> GB/s
    transports: tuple[str, ...] = ()
    missing_ranks: tuple[int, ...] = ()  # never joined
    stuck_ranks: tuple[int, ...] = ()  # joined, never finished
    error: str = ""


def parse_transports(log: str) -> tuple[str, ...]:
    """What NCCL_DEBUG=INFO says it used: 'NET/IB rocep1s0f1:1/RoCE', 'NET/Socket', 'P2P/CUMEM', 'SHM'..."""
    found: list[str] = []
    for m in TRANSPORT.finditer(log):
        t = f"NET/{m.group(1)}" if m.group(1) else m.group(3).split("/read")[0]
        if m.group(1) == "IB" and m.group(2):
            t += " " + m.group(2).split()[0]
        found.append(t)
    return tuple(dict.fromkeys(found))


def judge(res: CollectiveResult, expects_rdma: bool, topo_name: str) -> list[Check]:
    if not res.ok:
        who = (f"rank(s) {', '.join(map(str, res.missing_ranks))} never joined" if res.missing_ranks else
               f"rank(s) {', '.join(map(str, res.stuck_ranks))} joined but never finished" if res.stuck_ranks else "")
        return [Check("all-reduce", "all", FAIL, "; ".join(x for x in (who, res.error) if x),
                      "see preflight/collective.log in the run dir; check the interface, firewall and master port")]
    sizes = ", ".join(f"{s} MiB {bw:.2f} GB/s" for s, bw in res.busbw_gbps.items())
    rows = [Check("all-reduce", "all", PASS, f"bus bandwidth {sizes}")]
    expected = EXPECTED_BUSBW_GBPS.get(topo_name)
    largest = list(res.busbw_gbps.values())[-1] if res.busbw_gbps else 0.0
    if expected and largest < expected / 2:
        rows.append(Check("bus bandwidth", "all", WARN, f"{largest:.1f} GB/s, a healthy {topo_name} gives ~{expected:.0f}",
                          "NCCL probably fell back to TCP: check topo.nccl.ib_hca and the RDMA devices"))
    if res.transports:
        socket_only = "NET/Socket" in res.transports and not any(t.startswith("NET/IB") for t in res.transports)
        bad = expects_rdma and socket_only
        rows.append(Check("transport", "all", FAIL if bad else PASS, ", ".join(res.transports),
                          "NCCL fell back to sockets: check topo.nccl.ib_hca, NCCL_IB_DISABLE and ibstat" if bad else ""))
    return rows


def run_collective(procs: int, accelerator: str, env: dict[str, str], out_dir: Path, timeout_s: float,
                   python: str = sys.executable) -> CollectiveResult:
    """torchrun on this host with the launch's rank count and environment; killed at timeout_s, never waited on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rank*.*"):
        old.unlink()
    argv = [python, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={procs}", "--standalone",
            "--max-restarts=0", "-m", "launcher.preflight.collective", str(out_dir), accelerator]
    env = {**env, "NCCL_DEBUG": "INFO"}
    log_path = out_dir / "collective.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            code = None
    text = log_path.read_text(errors="replace")
    joined = {int(p.stem[4:]) for p in out_dir.glob("rank*.joining")}
    done = {int(p.stem[4:]) for p in out_dir.glob("rank*.done")}
    missing = tuple(r for r in range(procs) if r not in joined)
    stuck = tuple(sorted(joined - done))
    result = [json.loads(line[len(RESULT):]) for line in text.splitlines() if line.startswith(RESULT)]
    if code == 0 and result:
        return CollectiveResult(True, result[-1], parse_transports(text))
    error = f"no result within {timeout_s:.0f} s" if code is None else f"torchrun exit code {code}"
    return CollectiveResult(False, {}, parse_transports(text), missing, stuck, error)


def _stop(proc: subprocess.Popen) -> None:
    """torchrun and every rank: its session (the ranks stay in it), TERM then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


def rank_main(out_dir: Path, accelerator: str, rank: int, world: int, local_rank: int, never_join: int) -> None:
    """One rank: join, all-reduce each size ITERS times after a warm-up, rank 0 prints the bus bandwidths."""
    if rank == never_join:
        time.sleep(3600)  # the parent's timeout ends this
    (out_dir / f"rank{rank}.joining").touch()
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
        print(RESULT + json.dumps(bw), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    (out_dir / f"rank{rank}.done").touch()


def _sync(gpu: bool) -> None:
    if gpu:
        import torch

        torch.cuda.synchronize()


if __name__ == "__main__":
    e = os.environ
    rank_main(Path(sys.argv[1]), sys.argv[2], int(e["RANK"]), int(e["WORLD_SIZE"]), int(e["LOCAL_RANK"]),
              int(e.get(NEVER_JOIN_VAR) or -1))
