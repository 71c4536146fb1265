"""Per-host preflight: gather each host's facts (probe.py, here or over ssh, all hosts at once, every wait bounded),
then judge them with pure functions that return one Check row each: check, host, status, detail, fix hint.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from launcher.preflight import probe

PASS, WARN, FAIL = "pass", "warn", "fail"
VERSION_KEYS = ("python", "torch", "cuda", "nccl", "deepspeed", "transformers")
CHECKPOINTS_TO_FIT = 2  # warn below room for this many checkpoints; fail below room for one
MAX_SKEW_S = 5.0
ARCH_ENTRY = re.compile(r"^\d+\.\d+(\+PTX)?$")


@dataclass(frozen=True)
class Check:
    check: str
    host: str
    status: str  # pass | warn | fail
    detail: str
    hint: str = ""


@dataclass(frozen=True)
class HostFacts:
    """probe.gather's dict for one host, or the reason it could not be asked; clock_offset_s = host clock - ours."""

    host: str
    facts: dict
    error: str = ""
    clock_offset_s: float = 0.0


def gather_local(args: dict) -> HostFacts:
    """In-process: no interpreter start, no torch import unless args['deep']."""
    return HostFacts("localhost", probe.gather(args))


def gather_remote(hosts: list[str], python: str, args_for: dict[str, dict], ssh_args: list[str],
                  timeout_s: float = 0.0) -> list[HostFacts]:
    """probe.py's source through `python -c` on every host at once, over ssh as pdsh will use it."""
    from launcher.backends.hostfile import CONNECT_TIMEOUT_S, PROBE_TIMEOUT_S

    timeout_s = timeout_s or PROBE_TIMEOUT_S
    source = Path(probe.__file__).read_text()
    base = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", *ssh_args]
    started = time.time()
    procs = {h: subprocess.Popen([*base, h, shlex.join([python, "-c", source, json.dumps(args_for[h])])],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for h in hosts}
    out = []
    for host, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, timeout_s - (time.time() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out.append(HostFacts(host, {}, error=f"no answer over ssh within {timeout_s:.0f} s"))
            continue
        answered = time.time()
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            out.append(HostFacts(host, {}, error=f"ssh or python failed: {last}"))
            continue
        facts = json.loads(stdout.strip().splitlines()[-1])
        # the remote clock was read somewhere between start and answer: the midpoint bounds the error by half of it
        out.append(HostFacts(host, facts, clock_offset_s=facts["clock"] - (started + answered) / 2))
    return out


def describe(f: HostFacts) -> Check | None:
    """What the host runs, for the record: versions and the launcher's code hash."""
    if f.error:
        return None
    v = f.facts["versions"]
    text = " ".join(f"{k} {v[k]}" for k in VERSION_KEYS if k in v)
    return Check("versions", f.host, PASS, f"{text}; launcher code {f.facts.get('launcher_hash', '')}")


def reachable(f: HostFacts) -> Check:
    if f.error:
        return Check("ssh", f.host, FAIL, f.error, f"make `ssh {f.host} true` work without a password (ssh-copy-id)")
    return Check("ssh", f.host, PASS, "answered")


def compare_versions(hosts: list[HostFacts]) -> list[Check]:
    """Every host must run the same software: a row per differing item, naming which host has which value."""
    answered = [h for h in hosts if not h.error]
    # NCCL has its own row (preflight/resources.py, nccl_version)
    items = {k: {h.host: str(h.facts["versions"].get(k, "?")) for h in answered} for k in VERSION_KEYS if k != "nccl"}
    items["launcher code"] = {h.host: h.facts.get("launcher_hash", "") for h in answered}
    items["conf presets"] = {h.host: h.facts.get("conf_hash", "") for h in answered}
    items["run plan"] = {h.host: h.facts.get("plan_hash", "") for h in answered}
    items["interpreter"] = {h.host: h.facts.get("interpreter", "") for h in answered}
    rows = []
    for item, by_host in items.items():
        if not by_host or all(not v or v == "?" for v in by_host.values()):
            continue
        values = sorted(set(by_host.values()))
        if len(values) == 1:
            rows.append(Check(f"same {item}", "all", PASS, values[0]))
            continue
        groups = "; ".join(f"{v} on {', '.join(sorted(h for h, hv in by_host.items() if hv == v))}" for v in values)
        rows.append(Check(f"same {item}", "all", FAIL, f"{item} differs: {groups}",
                          "install the same environment at the same path on every host, or share it over NFS"))
    return rows


def check_gpus(f: HostFacts, accelerator: str, procs_per_host: int) -> Check | None:
    if accelerator != "cuda" or f.error or f.facts["gpu"]["count"] is None:
        return None
    gpu = f.facts["gpu"]
    count, mem = gpu["count"], gpu["memory_gb"] or f.facts.get("mem_total_gb", 0.0)
    detail = f"{count} GPU(s) {gpu['name']} {mem:.0f} GB each".strip()
    if count < procs_per_host:
        return Check("gpus", f.host, FAIL, f"{detail}; the plan starts {procs_per_host} rank(s) here",
                     f"use topo.gpus_per_host={count}" if count else "check the driver (nvidia-smi) or use topo.accelerator=cpu")
    return Check("gpus", f.host, PASS, detail)


def check_iface(f: HostFacts, spec: str, mtu: int, peers: list[str]) -> Check | None:
    """The configured interface (NCCL/gloo name list) present and up with the right MTU; if missing, suggest one."""
    wanted = [w for w in spec.split(",") if w and not w.startswith("^")]
    if not wanted or f.error:
        return None
    ifaces: dict[str, dict] = f.facts["ifaces"]
    found = [n for n in ifaces for w in wanted if (n == w[1:] if w.startswith("=") else n.startswith(w))]
    if not found:
        up = sorted(n for n, i in ifaces.items() if i["up"])
        return Check("interface", f.host, FAIL, f"no interface {spec}; up here: {', '.join(up) or 'none'}",
                     f"use topo.socket_ifname={suggest_iface(ifaces, f.facts.get('route', {}), peers)}")
    down = [n for n in found if not ifaces[n]["up"]]
    if down:
        return Check("interface", f.host, FAIL, f"{', '.join(down)} is down", f"ip link set {down[0]} up")
    wrong = [n for n in found if mtu and ifaces[n]["mtu"] != mtu]
    if wrong:
        return Check("interface", f.host, FAIL, f"{wrong[0]} has MTU {ifaces[wrong[0]]['mtu']}, topo.mtu is {mtu}",
                     f"ip link set {wrong[0]} mtu {mtu} on every host, or topo.mtu=0 to skip this check")
    return Check("interface", f.host, PASS, ", ".join(f"{n} up mtu {ifaces[n]['mtu']}" for n in found))


def suggest_iface(ifaces: dict[str, dict], route: dict[str, str], peers: list[str]) -> str:
    """The interface holding the source address toward the other hosts; else the first up non-loopback one."""
    for peer in peers:
        src = route.get(peer, "")
        named = [n for n, i in ifaces.items() if src and i["addr"] == src]
        if named:
            return named[0]
    up = [n for n, i in sorted(ifaces.items()) if i["up"] and n != "lo"]
    return up[0] if up else "lo"


def check_rdma(f: HostFacts, ib_hca: str) -> Check | None:
    """With nccl.ib_hca set, the named RDMA devices must exist with an ACTIVE port."""
    if not ib_hca or f.error:
        return None
    rdma: dict[str, list[str]] = f.facts["rdma"]
    wanted = [w.lstrip("=").split(":")[0] for w in ib_hca.split(",") if w and not w.startswith("^")]
    have = [d for d in rdma for w in wanted if d.startswith(w)]
    if not have:
        return Check("rdma", f.host, FAIL, f"no RDMA device {ib_hca}; present: {', '.join(rdma) or 'none'}",
                     "load the driver (ibv_devices lists them) or fix topo.nccl.ib_hca")
    inactive = [d for d in have if not any("ACTIVE" in s for s in rdma[d])]
    if inactive:
        return Check("rdma", f.host, FAIL, f"{', '.join(inactive)} has no ACTIVE port", "check the cable and ibstat")
    return Check("rdma", f.host, PASS, ", ".join(have) + " active")


def check_run_dir(f: HostFacts, shared_expected: bool) -> Check | None:
    if f.error:
        return None
    rd = f.facts["run_dir"]
    if not rd["writable"]:
        return Check("run dir", f.host, FAIL, f"{rd['dir']} is not writable", "use run.output_dir=<a writable dir>")
    if shared_expected and not rd["sees_marker"]:
        return Check("run dir", f.host, FAIL, f"{rd['dir']} is not shared with this host: ranks read the plan and "
                     "write checkpoints there", "put runs on storage every host mounts at the same path")
    return Check("run dir", f.host, PASS, f"{rd['dir']} writable" + (", shared" if shared_expected else ""))


def check_disk(f: HostFacts, checkpoint_gb: float) -> Check | None:
    """Against the plan's checkpoint size (weights + optimizer states), not a fixed figure: a tiny model needs MBs."""
    if f.error:
        return None
    free = f.facts["run_dir"]["free_gb"]
    status = FAIL if free < checkpoint_gb else WARN if free < CHECKPOINTS_TO_FIT * checkpoint_gb else PASS
    return Check("free disk", f.host, status,
                 f"{free:.2f} GB free in {f.facts['run_dir']['dir']}; a checkpoint takes ~{checkpoint_gb:.3f} GB",
                 "" if status == PASS else "free space or use run.output_dir=<a larger disk>")


def check_port(f: HostFacts) -> Check | None:
    p = f.facts.get("port") if not f.error else None
    if not p:
        return None
    if p["error"]:
        return Check("master port", f.host, FAIL, f"port {p['port']} is taken ({p['error']})",
                     f"stop what listens on {p['port']} (ss -ltnp 'sport = :{p['port']}') or set topo.master_port=<free>")
    return Check("master port", f.host, PASS, f"port {p['port']} free")


def check_clock(f: HostFacts) -> Check | None:
    if f.error or f.host == "localhost":
        return None
    off = f.clock_offset_s
    return Check("clock", f.host, WARN if abs(off) > MAX_SKEW_S else PASS, f"offset {off:+.1f} s",
                 "sync clocks (chrony/timedatectl)" if abs(off) > MAX_SKEW_S else "")


def check_arch_list(value: str) -> Check | None:
    """TORCH_CUDA_ARCH_LIST of this host: entries like '9.0' or '12.1+PTX'; suffixes DeepSpeed chokes on are fixed."""
    if not value:
        return None
    from launcher.render.env import sanitize_arch_list

    clean = sanitize_arch_list(value)
    bad = [e for e in clean.split(";") if not ARCH_ENTRY.match(e)]
    if bad:
        return Check("TORCH_CUDA_ARCH_LIST", "localhost", FAIL, f"{value!r}: {', '.join(bad)} is not an arch",
                     "use entries such as 9.0;12.1 (the compute capability: nvidia-smi --query-gpu=compute_cap)")
    if clean != value:
        return Check("TORCH_CUDA_ARCH_LIST", "localhost", WARN, f"{value!r} is rewritten to {clean!r} for the ranks",
                     f"export TORCH_CUDA_ARCH_LIST='{clean}'")
    return Check("TORCH_CUDA_ARCH_LIST", "localhost", PASS, value)


def check_model_cache(f: HostFacts, offline: bool) -> Check | None:
    """Every host loads the model itself: from a shared cache, its own copy, or the Hub (not with HF_HUB_OFFLINE)."""
    hub = {} if f.error else {k: v for k, v in (f.facts.get("hub") or {}).items() if v is not None}
    if not hub:
        return None
    missing = [i for i, cached in hub.items() if not cached]
    if not missing:
        return Check("model cache", f.host, PASS, f"{', '.join(hub)} in this host's cache")
    fix = (f"fill this host's cache (`hf download {missing[0]}`) or put HF_HOME on storage every host shares"
           + ("" if offline else ", or let its ranks download it"))
    return Check("model cache", f.host, FAIL if offline else WARN,
                 f"{', '.join(missing)} not in this host's cache" + (" and HF_HUB_OFFLINE is set" if offline else
                                                                     ": its ranks will download it from the Hub"), fix)


def host_checks(f: HostFacts, accelerator: str, procs_per_host: int, ifname: str, mtu: int, ib_hca: str,
                peers: list[str], shared_expected: bool, checkpoint_gb: float = 0.0,
                hub_offline: bool = False) -> list[Check]:
    rows = [reachable(f), describe(f), check_run_dir(f, shared_expected), check_disk(f, checkpoint_gb), check_port(f),
            check_gpus(f, accelerator, procs_per_host), check_iface(f, ifname, mtu, peers), check_rdma(f, ib_hca),
            check_clock(f), check_model_cache(f, hub_offline)]
    return [r for r in rows if r is not None and not (r.check == "ssh" and f.host == "localhost")]
