"""`bus bandwidth`: the all-reduce's largest-size figure against what the topology's link gives; for two GB10 boxes
over ConnectX-7 (`topo.link=cx7_200g`) it also says which addressing layout the figure supports (thresholds and their
sources in launcher/plan/links.py)."""
from __future__ import annotations

from launcher.plan import links
from launcher.preflight.checks import PASS, WARN, Check

CX7_CAUSES = ("one half unaddressed or without a RoCE v2 IPv4 GID (see roce_gid), an MTU below 9000 on a half (see "
              "interface), or topo.nccl.ib_hca naming another port's devices (`ibdev2netdev` shows which are Up); "
              "scripts/setup_dual_pgx.sh addresses both halves as NVIDIA's playbook does")


def judge_busbw(link: str, busbw: float, expects_rdma: bool, ib_hca: str = "") -> Check | None:
    """One row, or None when nothing crossed a link (one rank) or the link is not named."""
    expected = links.EXPECTED_BUSBW_GBPS.get(link)
    if busbw == 0.0 or not expected:
        return None
    if link == "cx7_200g":
        return judge_cx7(busbw, ib_hca)
    if busbw >= expected / 2:
        return Check("bus bandwidth", "all", PASS, f"{busbw:.1f} GB/s, expected ~{expected:.0f} for {link}")
    return Check("bus bandwidth", "all", WARN, f"{busbw:.1f} GB/s, a healthy {link} link gives ~{expected:.0f} GB/s",
                 "NCCL probably fell back to TCP: check topo.nccl.ib_hca and the RDMA devices" if expects_rdma else
                 "check the link (nvidia-smi topo -m, ethtool) and topo.link")


def judge_cx7(busbw: float, ib_hca: str) -> Check:
    """Above CX7_BOTH_HALVES_GBPS more than one half carried traffic; below it, at most one did."""
    one_device = len([e for e in ib_hca.split(",") if e]) == 1 and not ib_hca.startswith("^")
    if busbw >= links.CX7_BOTH_HALVES_GBPS:
        layout = ("one device reached what only both halves give: the one-interface layout is enough here" if one_device
                  else "both halves carry traffic: the two-subnet layout (NVIDIA's playbook) works")
        note = ("" if busbw >= links.CX7_NVIDIA_MIN_GBPS else f" (NVIDIA's cluster check expects >= "
                f"{links.CX7_NVIDIA_MIN_GBPS:.1f} GB/s from nccl-tests at 16 GiB; this all-reduce is 1 GiB)")
        return Check("bus bandwidth", "all", PASS, f"{busbw:.1f} GB/s: {layout}{note}")
    detail = (f"{busbw:.1f} GB/s is at most one half of the link (~{links.CX7_HALF_GBPS:.1f} GB/s each, "
              f"~{links.EXPECTED_BUSBW_GBPS['cx7_200g']:.0f} with both)")
    if busbw < links.CX7_SOCKETS_GBPS:
        return Check("bus bandwidth", "all", WARN, f"{detail}: NCCL most likely ran over TCP sockets",
                     "see the transport row; check topo.nccl.ib_hca, the RDMA devices and roce_gid")
    if one_device:
        return Check("bus bandwidth", "all", WARN, f"{detail}: what one device in topo.nccl.ib_hca (the one-interface "
                     "layout) gives", "address both halves, each on its own subnet (scripts/setup_dual_pgx.sh, "
                     "NVIDIA's playbook), and name both HCAs (the dual_pgx default)")
    return Check("bus bandwidth", "all", WARN, f"{detail}: one half is not carrying traffic", f"likely {CX7_CAUSES}")
