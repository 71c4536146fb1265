"""Preflight on a GPU machine: `python3 bench/preflight_gpu.py` runs `python -m launcher.preflight` on 1 GPU and on
every visible GPU (NCCL), and appends what it measured (all-reduce bus bandwidth per size, the transport NCCL chose,
the verdicts) with date, device and versions to bench/results/preflight.md.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "preflight.md"


def device() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    names = out.stdout.split("\n")
    return f"{len([n for n in names if n.strip()])}x {names[0].strip()}" if names and names[0].strip() else "no GPU"


def versions() -> str:
    import torch

    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "none"
    import deepspeed

    return f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {nccl}, deepspeed {deepspeed.__version__}"


def run(gpus: int, link: str, work: Path) -> tuple[int, dict, str]:
    run_dir = work / f"pf{gpus}"
    argv = [sys.executable, "-m", "launcher.preflight", "+topo=multi_gpu", f"topo.gpus_per_host={gpus}",
            f"topo.link={link}", f"run.dir={run_dir}"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ})
    doc = json.loads((run_dir / "preflight.json").read_text()) if (run_dir / "preflight.json").exists() else {}
    return r.returncode, doc, r.stdout[-3000:] + r.stderr[-2000:]


def row(gpus: int, code: int, doc: dict) -> str:
    coll = doc.get("collective", {})
    bw = coll.get("busbw_gbps", {})
    checks = {c["check"]: c for c in doc.get("checks", [])}
    verdict = "; ".join(f"{k}: {checks[k]['status']}" for k in ("all-reduce", "bus bandwidth", "transport", "gpus")
                        if k in checks)
    sizes = ", ".join(f"{s} MiB {v:.1f}" for s, v in bw.items())
    return f"| {gpus} | {code} | {sizes} | {', '.join(coll.get('transports', [])) or '-'} | {verdict} |"


def main() -> int:
    import torch

    count = torch.cuda.device_count()
    work = Path(tempfile.mkdtemp(prefix="preflight-bench-"))
    lines = [f"\n## {datetime.date.today()} on {device()}", "", versions(), "",
             "| GPUs | exit | all-reduce bus bandwidth (GB/s) | NCCL transport | verdicts |", "|---|---|---|---|---|"]
    for gpus in sorted({1, count}):
        code, doc, out = run(gpus, "nvlink", work)
        print(out)
        lines.append(row(gpus, code, doc))
    text = "\n".join(lines) + "\n"
    print(text)
    if not RESULTS.exists():
        RESULTS.write_text("# Preflight on GPU machines\n\nWritten by `python3 bench/preflight_gpu.py` (one section per "
                           "run). A 1-GPU all-reduce has no peer: its bus bandwidth is 0 by definition.\n")
    with open(RESULTS, "a") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
