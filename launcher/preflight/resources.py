"""What a rank host gives the ranks beyond its GPUs, judged from probe.py's facts: the memlock limit NCCL's RDMA
registrations count against (`memlock`), the unified memory a GB10 has left for the job (`mem_available`), and the
NCCL the ranks' torch carries (`nccl_version`). Pure functions, one Check row each.

Facts from NVIDIA's DGX Spark playbooks (github.com/NVIDIA/dgx-spark-playbooks at 0db7c141, 2026-07-24):
nvidia/pytorch-fine-tune/assets/docker-compose.yml runs the two-Spark fine-tuning with `ulimits: memlock: -1`;
nvidia/pytorch-fine-tune/README.md flushes the page cache on unified memory (`sync; echo 3 > /proc/sys/vm/drop_caches`);
nvidia/nccl/README.md builds NCCL v2.28.9-1 with `-gencode=arch=compute_121,code=sm_121` for two Sparks.
"""
from __future__ import annotations

from launcher.preflight.checks import FAIL, PASS, WARN, Check, HostFacts

MEMLOCK_ENOUGH_BYTES = 1 << 30  # our margin over NCCL's registered buffers, not a figure NVIDIA publishes
MIN_NCCL_SM121 = (2, 28)  # nvidia/nccl/README.md: v2.28.9-1 built for sm_121
TIGHT = 0.9  # an estimate above this share of MemAvailable is a warning: the estimate is not exact
DROP_CACHES = "sudo sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches'"


def check_memlock(f: HostFacts, expects_rdma: bool) -> Check | None:
    """`ulimit -l` as the ranks get it (read over ssh, through PAM, like pdsh's sessions): unlimited or >= 1 GiB."""
    limit = "" if f.error else str(f.facts.get("memlock", ""))
    if not expects_rdma or not limit:
        return None
    where = "in an ssh session, as the ranks get it" if f.host != "localhost" else "for this launcher's ranks"
    if limit == "unlimited" or (limit.isdigit() and int(limit) >= MEMLOCK_ENOUGH_BYTES):
        return Check("memlock", f.host, PASS, f"ulimit -l {_kib(limit)} {where}")
    return Check("memlock", f.host, WARN, f"ulimit -l is {_kib(limit)} {where}: NCCL registers its RDMA buffers "
                 "against it and ibv_reg_mr fails ('Cannot allocate memory') when they do not fit",
                 f"on {f.host}: put '* soft memlock unlimited' and '* hard memlock unlimited' in "
                 "/etc/security/limits.d/90-memlock.conf, then open a new ssh session (NVIDIA's containers run with "
                 "memlock -1)")


def _kib(limit: str) -> str:
    return f"{int(limit) // 1024} KiB" if limit.isdigit() else limit


def check_mem_available(f: HostFacts, need_gb: float, unified: bool) -> Check | None:
    """On unified memory (GB10) the GPU gets what the OS has available, not MemTotal: a desktop session or the page
    cache holds tens of GB. Fails when the plan's estimate is above MemAvailable, warns when it is close."""
    info = {} if f.error else (f.facts.get("meminfo") or {})
    if not unified or "MemAvailable" not in info:
        return None
    gb = {k: v / 1024**2 for k, v in info.items()}
    detail = (f"{gb['MemAvailable']:.1f} GiB available of {gb.get('MemTotal', 0):.1f} GiB unified memory (free "
              f"{gb.get('MemFree', 0):.1f}, page cache {gb.get('Cached', 0):.1f}); the estimate needs "
              f"~{need_gb:.1f} GiB")
    status = FAIL if need_gb > gb["MemAvailable"] else WARN if need_gb > TIGHT * gb["MemAvailable"] else PASS
    if status == PASS:
        return Check("mem_available", f.host, PASS, detail)
    return Check("mem_available", f.host, status, detail,
                 f"on {f.host}: log out of the desktop session (or `sudo systemctl isolate multi-user.target`), stop "
                 f"other GPU programs and drop the page cache ({DROP_CACHES}), as NVIDIA's fine-tuning playbook "
                 "does; or shard more (+plan=zero3) or lower train.micro_batch_size")


def nccl_tuple(text: str) -> tuple[int, ...] | None:
    """'2.28.9' -> (2, 28, 9); None for 'none', '?' or a missing value."""
    parts = text.split(".")
    return tuple(int(p) for p in parts) if parts and all(p.isdigit() for p in parts) else None


def check_nccl_version(f: HostFacts) -> Check | None:
    """The NCCL in the ranks' torch on this host (torch.cuda.nccl.version(), probed with the ranks' interpreter):
    on a GB10 (sm_121) at least the 2.28 NVIDIA builds for it."""
    if f.error or "nccl" not in f.facts.get("versions", {}):
        return None
    text = str(f.facts["versions"]["nccl"])
    version = nccl_tuple(text)
    gpu = f.facts.get("gpu") or {}
    sm121 = gpu.get("arch") == "12.1" or "GB10" in str(gpu.get("name", "")).upper()
    if version is None:
        return Check("nccl_version", f.host, FAIL, f"the ranks' torch has no NCCL ({text})",
                     "install a CUDA build of torch with NCCL in the ranks' environment")
    if sm121 and version[:2] < MIN_NCCL_SM121:
        return Check("nccl_version", f.host, WARN, f"NCCL {text} on a GB10 (sm_121): NVIDIA builds 2.28.x for it",
                     "install a torch whose NCCL is 2.28 or newer in the ranks' environment on every host")
    return Check("nccl_version", f.host, PASS, f"NCCL {text}" + (" (sm_121: 2.28 or newer)" if sm121 else ""))


def compare_nccl(hosts: list[HostFacts]) -> Check | None:
    """Every rank host runs the same NCCL: NCCL expects one version on every rank of a communicator."""
    seen = {f.host: str(f.facts["versions"]["nccl"]) for f in hosts if not f.error and "nccl" in f.facts["versions"]}
    if len(seen) < 2:
        return None
    values = sorted(set(seen.values()))
    if len(values) == 1:
        return Check("nccl_version", "all", PASS, f"NCCL {values[0]} on every host")
    groups = "; ".join(f"{v} on {', '.join(sorted(h for h, hv in seen.items() if hv == v))}" for v in values)
    return Check("nccl_version", "all", FAIL, f"NCCL differs: {groups}",
                 "install the same torch (and NCCL) at the same path on every host, or share it over NFS")
