"""What will happen: `resolve.resolve()` turns the config and this host's hardware into the one frozen `Plan`
(degrees, batch arithmetic, memory estimate) that is written to plan.json and read by every rank. Pure: no files,
no processes (hardware.detect() is read once at the entry).

resolve.py (Plan, resolve: explicit or +plan=auto), checks.py (what a plan may not combine), auto.py (the fastest plan
that fits), memory.py (the estimate), comm_sizes.py (ZeRO bucket and prefetch sizes), placement.py (hosts, slots,
world size, NCCL/gloo environment), hardware.py (GPU facts, peak FLOPs), hostfile.py (parsing a DeepSpeed
hostfile), links.py (what a healthy link gives).

May import: launcher.config, launcher.errors, launcher.secrets.
"""
