"""What one host has, as a JSON dict: run here in-process, or as `python -c <this file> <json args>` over ssh.

Standard library only, and torch is imported only when asked (`deep`): the quick preflight on a CPU host must
stay well under a second. Everything a check compares is gathered here; the judging is in checks.py.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import struct
import sys
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "deepspeed", "transformers")
SIOCGIFADDR, SIOCGIFNETMASK = 0x8915, 0x891B


def tree_hash(root: str, pattern: str) -> str:
    """sha256 over the relative paths and contents of the files under root matching pattern ('' when absent)."""
    base = Path(root)
    if not base.is_dir():
        return ""
    h = hashlib.sha256()
    for p in sorted(base.rglob(pattern)):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        h.update(str(p.relative_to(base)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def file_hash(path: str) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else ""


def iface_facts() -> dict[str, dict[str, object]]:
    """name -> {up, mtu, addr, prefix} from /sys/class/net (addr and its prefix length through SIOCGIFADDR and
    SIOCGIFNETMASK; '' and 0 without an IPv4 address)."""
    out: dict[str, dict[str, object]] = {}
    for d in sorted(glob.glob("/sys/class/net/*")):
        name = os.path.basename(d)
        state = _read(f"{d}/operstate")
        flags = int(_read(f"{d}/flags") or "0", 16)
        mtu = _read(f"{d}/mtu")
        out[name] = {"up": bool(flags & 1) and state in ("up", "unknown"), "mtu": int(mtu) if mtu.isdigit() else 0,
                     "addr": _ipv4(name), "prefix": _prefix_len(_ipv4(name, SIOCGIFNETMASK))}
    return out


def _ipv4(name: str, request: int = SIOCGIFADDR) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(s.fileno(), request, struct.pack("256s", name.encode()[:15]))
        return socket.inet_ntoa(packed[20:24])
    except OSError:
        return ""
    finally:
        s.close()


def _prefix_len(netmask: str) -> int:
    return bin(int.from_bytes(socket.inet_aton(netmask), "big")).count("1") if netmask else 0


def source_addr(target: str) -> str:
    """The local address the kernel would use to reach target (a UDP connect sends nothing)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((socket.gethostbyname(target), 9))
        return s.getsockname()[0]
    except OSError:
        return ""
    finally:
        s.close()


def rdma_facts(sys_root: str = "/sys") -> dict[str, list[str]]:
    """RDMA device -> port states ('4: ACTIVE'), from /sys/class/infiniband."""
    return {os.path.basename(d): [_read(p) for p in sorted(glob.glob(f"{d}/ports/*/state"))]
            for d in sorted(glob.glob(f"{sys_root}/class/infiniband/*"))}


def roce_facts(sys_root: str = "/sys") -> dict[str, dict[str, dict[str, object]]]:
    """RDMA device -> port -> link layer, state and the populated GID table entries [index, gid, type, netdev], read
    where NCCL reads them to pick its GID (ports/<p>/gids/<i>, gid_attrs/types/<i>, gid_attrs/ndevs/<i>)."""
    out: dict[str, dict[str, dict[str, object]]] = {}
    for dev in sorted(glob.glob(f"{sys_root}/class/infiniband/*")):
        ports: dict[str, dict[str, object]] = {}
        for port in sorted(glob.glob(f"{dev}/ports/*")):
            gids = []
            for path in glob.glob(f"{port}/gids/*"):
                i, gid = os.path.basename(path), _read(path)
                if i.isdigit() and gid.strip("0:"):  # all zeros: an unused slot (its type file reads EINVAL)
                    attrs = f"{port}/gid_attrs"
                    gids.append([int(i), gid, _read(f"{attrs}/types/{i}"), _read(f"{attrs}/ndevs/{i}")])
            ports[os.path.basename(port)] = {"link_layer": _read(f"{port}/link_layer"), "state": _read(f"{port}/state"),
                                             "gids": sorted(gids)}
        out[os.path.basename(dev)] = ports
    return out


def meminfo_kb(proc_root: str = "/proc") -> dict[str, int]:
    """The unified-memory budget's inputs from /proc/meminfo, in kB as the kernel writes them."""
    wanted = ("MemTotal", "MemFree", "MemAvailable", "Cached")
    out = {}
    for line in _read(f"{proc_root}/meminfo").splitlines():
        key, _, rest = line.partition(":")
        if key in wanted and rest.split() and rest.split()[0].isdigit():
            out[key] = int(rest.split()[0])
    return out


def memlock_limit(proc_root: str = "/proc") -> str:
    """This process's soft RLIMIT_MEMLOCK ('unlimited' or bytes) from <proc>/self/limits: over ssh it is what PAM gave
    the session, which is what the ranks pdsh starts get."""
    for line in _read(f"{proc_root}/self/limits").splitlines():
        if line.startswith("Max locked memory"):
            fields = line[len("Max locked memory"):].split()
            return fields[0] if fields else ""
    return ""


def port_free(port: int) -> str:
    """'' when a listener could bind port on every address, else the OS's reason."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("", port))
        return ""
    except OSError as e:
        return e.strerror or str(e)
    finally:
        s.close()


def run_dir_facts(run_dir: str, marker: str) -> dict[str, object]:
    """The nearest existing directory of run_dir: writable here, free disk, and whether it sees the marker."""
    path = Path(run_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    free_gb = shutil.disk_usage(path).free / 1024**3
    return {"dir": str(path), "writable": os.access(path, os.W_OK), "free_gb": round(free_gb, 4),
            "sees_marker": bool(marker) and os.path.exists(marker)}


def versions(deep: bool) -> dict[str, str]:
    """Installed versions from package metadata; CUDA and NCCL (from torch) only when deep, on a GPU host."""
    v = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = "absent"
    if deep and glob.glob("/dev/nvidia[0-9]*"):  # no torch import on a CPU host
        import torch

        v["cuda"] = torch.version.cuda or "none"
        nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else None
        v["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl or "none")
    return v


def gpu_facts(deep: bool) -> dict[str, object]:
    """GPU count and per-GPU memory from torch; on GB10 the memory is MemTotal (nvidia-smi says 'Not Supported')."""
    if not deep:  # quick mode does not import torch; the launch itself checked this host's GPUs
        return {"count": None, "name": "", "memory_gb": 0.0}
    if not glob.glob("/dev/nvidia[0-9]*"):
        return {"count": 0, "name": "", "memory_gb": 0.0}
    import torch

    if not torch.cuda.is_available():
        return {"count": 0, "name": "", "memory_gb": 0.0}
    props = torch.cuda.get_device_properties(0)
    mem = props.total_memory / 1024**3
    if "GB10" in props.name.upper():
        mem = mem_total_gb()
    return {"count": torch.cuda.device_count(), "name": props.name, "memory_gb": round(mem, 1),
            "arch": f"{props.major}.{props.minor}"}


def mem_total_gb() -> float:
    return round(meminfo_kb().get("MemTotal", 0) / 1024**2, 1)


def hub_facts(hub: dict) -> dict[str, object]:
    """For each hub id the launch loads, whether this host's cache holds its config (None: huggingface_hub is not
    installed). The launch's HF_HOME / HF_HUB_CACHE are applied first: the ranks here get the same."""
    ids = list(hub.get("ids", []))
    if not ids:
        return {}
    env = {**os.environ, **{str(k): str(v) for k, v in dict(hub.get("env", {})).items()}}
    cache = env.get("HF_HUB_CACHE") or (os.path.join(env["HF_HOME"], "hub") if env.get("HF_HOME") else None)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return {i: None for i in ids}
    return {i: isinstance(try_to_load_from_cache(i, "config.json", cache_dir=cache), str) for i in ids}


def gather(args: dict[str, object]) -> dict[str, object]:
    deep = bool(args.get("deep"))
    port = int(args.get("port") or 0)  # type: ignore[call-overload]
    pkg = str(args.get("package_dir", ""))
    sys_root, proc_root = str(args.get("sys_root") or "/sys"), str(args.get("proc_root") or "/proc")
    return {
        "host": socket.gethostname(),
        "interpreter": sys.executable,
        "versions": versions(deep),
        "launcher_hash": tree_hash(pkg, "*.py"),
        "conf_hash": tree_hash(str(Path(pkg).parent / "conf"), "*.yaml") if pkg else "",
        "plan_hash": file_hash(str(Path(str(args.get("run_dir", "."))) / "plan.json")),  # rundir.PLAN_FILE (runs alone)
        "run_dir": run_dir_facts(str(args.get("run_dir", ".")), str(args.get("marker", ""))),
        "gpu": gpu_facts(deep),
        "mem_total_gb": mem_total_gb(),
        "ifaces": iface_facts(),
        "route": {t: source_addr(t) for t in args.get("targets", [])},  # type: ignore[attr-defined]
        "rdma": rdma_facts(sys_root),
        "roce": roce_facts(sys_root),
        "meminfo": meminfo_kb(proc_root),
        "memlock": memlock_limit(proc_root),
        "port": {"port": port, "error": port_free(port)} if port else {},
        "hub": hub_facts(dict(args.get("hub") or {})),  # type: ignore[call-overload]
        "clock": time.time(),
    }


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


if __name__ == "__main__":
    print(json.dumps(gather(json.loads(sys.argv[1]))))
