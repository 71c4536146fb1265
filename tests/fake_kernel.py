"""Fake sysfs/procfs trees with the files as the kernel writes them (one value and a newline each), for the preflight
checks and the setup script's RDMA check: RoCE GID tables, /proc/meminfo, /proc/self/limits.

An unused GID slot reads as zeros in gids/<i> while its gid_attrs/types/<i> and ndevs/<i> fail to read (EINVAL): here
those two files are absent, which readers see the same way (a failed read)."""
from __future__ import annotations

from pathlib import Path

GID_SLOTS = 8  # a real mlx5 RoCE port lists 255; the first few carry what matters
V1, V2 = "IB/RoCE v1", "RoCE v2"


def ipv4_gid(addr: str) -> str:
    a, b, c, d = (int(x) for x in addr.split("."))
    return f"0000:0000:0000:0000:0000:ffff:{a:02x}{b:02x}:{c:02x}{d:02x}"


def link_local_gid(mac_tail: str = "3e6d:66ff:fecc:b3b7") -> str:
    return f"fe80:0000:0000:0000:{mac_tail}"


def roce_port(sys_root: Path, hca: str, netdev: str, ipv4: str = "", port: int = 1, state: str = "4: ACTIVE",
              link_layer: str = "Ethernet") -> Path:
    """A ConnectX port as mlx5 fills it: 0/1 link-local (RoCE v1/v2), then 2/3 the interface's IPv4 address
    (v1/v2) when it has one, the rest unused."""
    base = sys_root / "class" / "infiniband" / hca / "ports" / str(port)
    entries = [(link_local_gid(), V1), (link_local_gid(), V2)]
    entries += [(ipv4_gid(ipv4), V1), (ipv4_gid(ipv4), V2)] if ipv4 else []
    for d in ("gids", "gid_attrs/types", "gid_attrs/ndevs"):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / "state").write_text(state + "\n")
    (base / "link_layer").write_text(link_layer + "\n")
    for i in range(GID_SLOTS):
        gid, kind = entries[i] if i < len(entries) else (":".join(["0000"] * 8), "")
        (base / "gids" / str(i)).write_text(gid + "\n")
        if kind:
            (base / "gid_attrs" / "types" / str(i)).write_text(kind + "\n")
            (base / "gid_attrs" / "ndevs" / str(i)).write_text(netdev + "\n")
    return base


def spark_rdma(sys_root: Path, first: str = "", second: str = "") -> Path:
    """One GB10's cabled port: rocep1s0f1 behind enp1s0f1np1 and roceP2p1s0f1 behind enP2p1s0f1np1, each with the IPv4
    address given ('' = that half unaddressed); the other port's devices present and DOWN."""
    roce_port(sys_root, "rocep1s0f1", "enp1s0f1np1", first)
    roce_port(sys_root, "roceP2p1s0f1", "enP2p1s0f1np1", second)
    roce_port(sys_root, "rocep1s0f0", "enp1s0f0np0", state="1: DOWN")
    roce_port(sys_root, "roceP2p1s0f0", "enP2p1s0f0np0", state="1: DOWN")
    return sys_root


def meminfo(proc_root: Path, total_kb: int, available_kb: int, free_kb: int, cached_kb: int) -> Path:
    proc_root.mkdir(parents=True, exist_ok=True)
    rows = [("MemTotal", total_kb), ("MemFree", free_kb), ("MemAvailable", available_kb), ("Buffers", 1024),
            ("Cached", cached_kb), ("SwapCached", 0)]
    (proc_root / "meminfo").write_text("".join(f"{k + ':':<16}{v:>8} kB\n" for k, v in rows))
    return proc_root


def limits(proc_root: Path, memlock: str) -> Path:
    """<proc>/self/limits with the memlock row ('unlimited' or bytes), formatted as the kernel's table."""
    (proc_root / "self").mkdir(parents=True, exist_ok=True)
    def row(name: str, soft: str, hard: str, unit: str) -> str:
        return f"{name:<26}{soft:<21}{hard:<21}{unit:<10}\n"

    text = (row("Limit", "Soft Limit", "Hard Limit", "Units") + row("Max cpu time", "unlimited", "unlimited", "seconds")
            + row("Max locked memory", memlock, memlock, "bytes") + row("Max open files", "1024", "1048576", "files"))
    (proc_root / "self" / "limits").write_text(text)
    return proc_root
