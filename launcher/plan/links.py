"""What a healthy link gives, for preflight's bandwidth verdict and for validating `topo.link`."""

# Healthy all-reduce bus bandwidth (GB/s) at the largest size, per link kind (topo.link); below half is a warning.
# cx7_200g: two GB10 boxes back to back, ~20-24 GB/s with RoCE, ~3 GB/s when NCCL falls back to TCP sockets.
# nvlink: H100/H200 NVLink 4 servers give >100 GB/s even on 2 GPUs; pcie: Gen4/Gen5 x16 through the host bridge;
# ib_400g / ib_200g: one NDR / HDR port per GPU; eth_100g / eth_25g / eth_10g: TCP (or RoCE without GPUDirect).
EXPECTED_BUSBW_GBPS = {"cx7_200g": 20.0, "nvlink": 100.0, "pcie": 10.0, "ib_400g": 40.0, "ib_200g": 20.0,
                       "eth_100g": 9.0, "eth_25g": 2.5, "eth_10g": 1.0}
