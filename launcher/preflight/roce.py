"""`roce_gid`: the GID NCCL will pick on each RDMA port it is told to use (NCCL_IB_HCA), and whether that GID carries
IPv4 over RoCE v2, judged from the GID tables probe.roce_facts read in sysfs.

NCCL (src/transport/net_ib/connect.cc, ncclIbGetGidIndex, read in NVIDIA/nccl 2.28-2.31) starts at index 0 and walks
the port's table from index 1, moving to an entry of the wanted address family (NCCL_IB_ADDR_FAMILY, default AF_INET:
an IPv4-mapped ::ffff:a.b.c.d GID) and RoCE version (NCCL_IB_ROCE_VERSION_NUM, default 2), unless NCCL_IB_GID_INDEX
forces one. A ConnectX-7 half whose interface has no IPv4 address has no such entry: NCCL stays on index 0, the
link-local RoCE v1 GID, and that half fails to connect (ibv_modify_qp) or carries nothing.
"""
from __future__ import annotations

import ipaddress
from typing import NamedTuple

from launcher.preflight.checks import FAIL, PASS, WARN, Check, HostFacts

ZERO_GID = ":".join(["0000"] * 8)
V4_MAPPED = "0000:0000:0000:0000:0000:ffff:"
DEFAULT_PREFIX = 24  # when the interface's own netmask is not known


class Gid(NamedTuple):
    """One populated entry of a port's GID table, as the kernel lists it."""

    index: int
    gid: str  # 'fe80:0000:0000:0000:3e6d:66ff:fecc:b3b7'
    type: str  # 'IB/RoCE v1' | 'RoCE v2'
    ndev: str  # the netdev it belongs to


def ipv4_of(gid: str) -> str:
    """'0000:...:ffff:c0a8:640a' -> '192.168.100.10'; '' for a GID that is not IPv4-mapped."""
    if not gid.lower().startswith(V4_MAPPED):
        return ""
    hi, lo = gid.lower()[len(V4_MAPPED):].split(":")
    return str(ipaddress.IPv4Address(int(hi + lo, 16)))


def _valid(gid: str) -> bool:
    """NCCL's validGid(): configured (not all zeros, not a bare fe80::) and not link-local."""
    return gid.strip("0:") != "" and not gid.lower().startswith("fe80:0000:0000:0000")


def _version(g: Gid | None) -> int:
    kind = g.type if g else ""
    return 2 if kind.startswith("RoCE v2") else 1 if kind.startswith(("IB/RoCE v1", "RoCE v1")) else -1


def _family(g: Gid | None) -> str:
    """NCCL's getGidAddrFamily(): IPv4-mapped or not (an empty slot reads as zeros: IPv6)."""
    return "v4" if g and ipv4_of(g.gid) else "v6"


def _in_range(gid: str, net: ipaddress.IPv4Network | None) -> bool:
    return net is None or (bool(ipv4_of(gid)) and ipaddress.IPv4Address(ipv4_of(gid)) in net)


def nccl_gid(gids: list[Gid], env: dict[str, str]) -> Gid | None:
    """The entry NCCL's auto-selection ends on (None: it ends on a slot the table leaves empty)."""
    table = {g.index: g for g in gids}
    forced = env.get("NCCL_IB_GID_INDEX", "").strip()
    if forced.isdigit():
        return table.get(int(forced))
    family = "v6" if env.get("NCCL_IB_ADDR_FAMILY") == "AF_INET6" else "v4"
    wanted = int(env.get("NCCL_IB_ROCE_VERSION_NUM") or 2)
    span = env.get("NCCL_IB_ADDR_RANGE", "")
    net = ipaddress.IPv4Network(span, strict=False) if family == "v4" and "/" in span else None
    chosen = 0
    for i in sorted(k for k in table if k > 0):
        cur, cand = table.get(chosen), table[i]
        if _family(cand) != _family(cur) and _family(cand) == family and _in_range(cand.gid, net):
            chosen = i
        elif _family(cand) == family and _valid(cand.gid) and _in_range(cand.gid, net):
            cur_valid = _valid(cur.gid if cur else ZERO_GID)
            if (_version(cur) != _version(cand) or not cur_valid) and _version(cand) == wanted:
                chosen = i
    return table.get(chosen)


def nccl_ports(spec: str, roce: dict[str, dict[str, dict]]) -> list[tuple[str, str]]:
    """(device, port) pairs NCCL uses for NCCL_IB_HCA: a comma list of name prefixes with optional :port, the whole
    list exact with a leading '=' or excluded with '^'; empty means every device. NCCL skips ports not ACTIVE.
    Sorted without case, so a port's first half (rocep1...) comes before its second (roceP2p1...)."""
    exclude, exact = spec.startswith("^"), spec.lstrip("^").startswith("=")
    entries = [e.split(":") for e in spec.lstrip("^").lstrip("=").split(",") if e]

    def named(dev: str, port: str) -> bool:
        return any((dev == e[0] if exact else dev.startswith(e[0])) and (len(e) == 1 or e[1] == port) for e in entries)

    return [(dev, port) for dev in sorted(roce, key=str.lower) for port, info in sorted(roce[dev].items())
            if "ACTIVE" in str(info.get("state", "")) and (not entries or named(dev, port) != exclude)]


def _port_gids(info: dict) -> list[Gid]:
    return [Gid(int(g[0]), str(g[1]), str(g[2]), str(g[3])) for g in info.get("gids", [])]


def _netdev(gids: list[Gid]) -> str:
    return next((g.ndev for g in gids if g.ndev), "")


class Verdict(NamedTuple):
    """What NCCL will use on one port: `ok` when it is a RoCE v2 IPv4 GID (or InfiniBand)."""

    port: str  # 'rocep1s0f1:1'
    ok: bool
    text: str
    ndev: str
    addr: str  # the GID's IPv4 address, '' otherwise


def port_verdict(dev: str, port: str, info: dict, env: dict[str, str]) -> Verdict:
    gids = _port_gids(info)
    ndev, name = _netdev(gids), f"{dev}:{port}"
    if info.get("link_layer") == "InfiniBand":
        return Verdict(name, True, f"{name} InfiniBand (GID from the subnet manager)", ndev, "")
    g = nccl_gid(gids, env)
    if g is not None and ipv4_of(g.gid) and _version(g) == 2:
        addr = ipv4_of(g.gid)
        return Verdict(name, True, f"{name} GID {g.index} RoCE v2 {addr} ({g.ndev or ndev})", g.ndev or ndev, addr)
    picked = f"GID {g.index} {g.gid} ({g.type or 'no type'})" if g else "an empty GID slot"
    why = f"; {ndev} has no IPv4 address" if ndev and not any(ipv4_of(x.gid) for x in gids) else ""
    return Verdict(name, False, f"{name} has no RoCE v2 IPv4 GID that NCCL selects: it would use {picked}{why}",
                   ndev, "")


def host_verdicts(f: HostFacts, spec: str, env: dict[str, str]) -> list[Verdict]:
    roce = {} if f.error else (f.facts.get("roce") or {})
    return [port_verdict(dev, port, roce[dev][port], env) for dev, port in nccl_ports(spec, roce)]


def check_roce_gid(f: HostFacts, spec: str, env: dict[str, str], mtu: int = 0) -> Check | None:
    """One row per host: each port NCCL is told to use has the RoCE v2 IPv4 GID NCCL will select. Warnings: two used
    ports in one IPv4 subnet (the kernel routes a subnet through one interface), or a port's interface below topo.mtu
    (RoCE's path MTU follows it: 1024 bytes under a 1500 MTU, 4096 under 9000)."""
    verdicts = host_verdicts(f, spec, env)
    if not verdicts:
        return None  # no device, or none ACTIVE: the `rdma` row says so
    bad = [v for v in verdicts if not v.ok]
    if bad:
        good = sorted({v.port.split(":")[0] for v in verdicts if v.ok})
        keep = f", or leave it out of NCCL_IB_HCA (topo.nccl.ib_hca={','.join(good)})" if good else ""
        return Check("roce_gid", f.host, FAIL, "; ".join(v.text for v in bad),
                     f"give {', '.join(v.ndev for v in bad if v.ndev) or 'its interface'} an IPv4 address on a subnet "
                     f"of its own, as NVIDIA's connect-two-sparks playbook does (scripts/setup_dual_pgx.sh){keep}")
    detail = "; ".join(v.text for v in verdicts)
    ifaces = f.facts.get("ifaces", {})
    low = [f"{v.ndev} has MTU {ifaces[v.ndev]['mtu']}" for v in verdicts
           if mtu and v.ndev in ifaces and ifaces[v.ndev].get("mtu") != mtu]
    if low:
        return Check("roce_gid", f.host, WARN, f"{detail}; {', '.join(low)}, topo.mtu is {mtu}",
                     f"set MTU {mtu} on both halves of both boxes (scripts/setup_dual_pgx.sh)")
    subnets = [subnet(f, v) for v in verdicts if v.addr]
    if len(set(subnets)) < len(subnets):
        return Check("roce_gid", f.host, WARN, f"{detail}: two ports in one subnet",
                     "give each half its own subnet (192.168.100.x/24 and 192.168.101.x/24 in NVIDIA's playbook): "
                     "the kernel routes a subnet through one interface")
    return Check("roce_gid", f.host, PASS, detail)


def subnet(f: HostFacts, v: Verdict) -> str:
    """The IPv4 network of a verdict's address, under the prefix its interface has on that host (else /24)."""
    prefix = (f.facts.get("ifaces", {}).get(v.ndev) or {}).get("prefix") or DEFAULT_PREFIX
    return str(ipaddress.IPv4Network(f"{v.addr}/{prefix}", strict=False))


def compare_gid_subnets(hosts: list[HostFacts], spec: str, env: dict[str, str]) -> Check | None:
    """Across hosts: each port sits in the same subnet everywhere (RoCE v2 is routed by IP: a half addressed in the
    other half's subnet on one box cannot reach its peer)."""
    where: dict[str, dict[str, str]] = {}
    for f in hosts:
        for v in host_verdicts(f, spec, env):
            if v.addr:
                where.setdefault(v.port, {})[f.host] = subnet(f, v)
    if len(hosts) < 2 or not where:
        return None
    split = {port: by for port, by in where.items() if len(set(by.values())) > 1}
    if split:
        text = "; ".join(f"{port} is on " + ", ".join(f"{net} on {h}" for h, net in sorted(by.items()))
                         for port, by in split.items())
        return Check("roce_gid", "all", FAIL, text, "address each half in the same subnet on both boxes (NVIDIA's "
                     "playbook: the first half 192.168.100.x, the second 192.168.101.x), with the same port cabled")
    return Check("roce_gid", "all", PASS,
                 ", ".join(f"{port} on {next(iter(by.values()))}" for port, by in where.items()) + " on every host")
