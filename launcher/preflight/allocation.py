"""`python -m launcher.preflight.allocation RUN_DIR SCRIPT --nodes N ...`: job.sbatch's first step on every (re)start.

Slurm's nodes are known only once the allocation starts, so the submit host cannot run the all-reduce across them.
This runs it there, through srun and the same per-node DeepSpeed launcher as the training step (job.sbatch
`--preflight-step`), judges it like the launch's preflight, adds the rows to preflight.json and exits 1 when it
fails, so the job stops before training instead of hanging in its first collective.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from launcher.preflight.collective import judge, run_collective
from launcher.preflight.report import failed, print_table, summary_line, write_json


def node_names(nodelist: str, count: int) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    names = out.stdout.split()
    return names[:count] if len(names) >= count else [f"node{i}" for i in range(count)]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.preflight.allocation")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("script")
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--procs-per-node", type=int, required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ap.add_argument("--link", default="")
    ap.add_argument("--expects-rdma", action="store_true")
    a = ap.parse_args(argv)
    env = dict(os.environ)
    job = env.get("SLURM_JOB_ID", "0")
    nodes = node_names(env.get("SLURM_JOB_NODELIST", ""), a.nodes)
    srun = ("srun", f"--nodes={a.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", a.script,
            "--preflight-step")
    rank_hosts = [n for n in nodes for _ in range(a.procs_per_node)]
    res = run_collective(srun, env, a.run_dir / "preflight" / f"collective-{job}.log", rank_hosts, a.timeout)
    rows = judge(res, a.expects_rdma, a.link)
    print_table(rows)
    print(summary_line(rows, f"allocation of job {job}"), flush=True)
    _merge(a.run_dir, rows, {"job": job, "nodes": nodes, "collective": dataclasses.asdict(res)})
    if failed(rows):
        print(f"launcher: preflight failed in job {job}: {failed(rows)[0].detail}; see {a.run_dir}/preflight/ "
              "(or resubmit with preflight=quick to skip the all-reduce)", file=sys.stderr)
        return 1
    return 0


def _merge(run_dir: Path, rows: list, allocation: dict) -> None:
    """The submit host's rows stay; the allocation's replace the all-reduce rows it could not run."""
    from launcher.preflight.checks import Check

    path = run_dir / "preflight.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    kept = [Check(**c) for c in doc.get("checks", []) if c["check"] not in ("all-reduce", "bus bandwidth", "transport")]
    extra = {k: v for k, v in doc.items() if k not in ("ok", "checks")}
    write_json(run_dir, kept + rows, {**extra, "allocation": allocation, "collective": allocation["collective"]})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
