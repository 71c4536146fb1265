"""What a healthy link gives, for preflight's bandwidth verdict and for validating `topo.link`."""

# Healthy all-reduce bus bandwidth (GB/s) at the largest size, per link kind (topo.link); below half is a warning
# (cx7_200g has its own thresholds below). nvlink: H100/H200 NVLink 4 servers give >100 GB/s even on 2 GPUs; pcie:
# Gen4/Gen5 x16 through the host bridge; ib_400g / ib_200g: one NDR / HDR port per GPU; eth_100g / eth_25g / eth_10g:
# TCP (or RoCE without GPUDirect).
EXPECTED_BUSBW_GBPS = {"cx7_200g": 22.0, "nvlink": 100.0, "pcie": 10.0, "ib_400g": 40.0, "ib_200g": 20.0,
                       "eth_100g": 9.0, "eth_25g": 2.5, "eth_10g": 1.0}

# cx7_200g: two GB10 boxes back to back. Each ConnectX-7 port is two PCIe Gen5 x4 halves of ~100 Gb/s (NVIDIA's
# dgx-spark-playbooks nvidia/connect-two-sparks, rev. 2026-07-21: RoCE perftest 92.6 + 97.3 Gb/s on the two halves):
# one half caps a two-rank all-reduce at ~12.5 GB/s of bus bandwidth, both give ~22-24 GB/s (NVIDIA's
# multi-sparks-through-switch/assets/spark_cluster_setup/spark_cluster_setup.py warns below 21.875 GB/s, 175 Gb/s, in
# nccl-tests all_gather at 16 GiB). Between the two, 17 GB/s: above it more than one half carried traffic.
CX7_HALF_GBPS = 12.5
CX7_BOTH_HALVES_GBPS = 17.0
CX7_NVIDIA_MIN_GBPS = 21.875
CX7_SOCKETS_GBPS = 4.0  # below: NCCL most likely ran over TCP sockets (the transport row says for sure)
