#!/usr/bin/env bash
# Rendered by launcher for run x. Rerun this file to reproduce the run (it resumes from the
# latest complete checkpoint in the run dir, as the launcher does).
set -euo pipefail
cd /work
export DS_ACCELERATOR=cuda
export DS_ENV_FILE=/runs/x/deepspeed_env
export GLOO_SOCKET_IFNAME=enp1s0f1np1
export LAUNCHER_DS_CONFIG=/runs/x/ds_config.json
export LAUNCHER_PLAN=/runs/x/plan.json
export LAUNCHER_RUN_DIR=/runs/x
export NCCL_IB_DISABLE=0
export NCCL_IB_HCA=rocep1s0f1,roceP2p1s0f1
export NCCL_SOCKET_IFNAME=enp1s0f1np1
export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
exec bash \
  -c \
  'trap '"'"''"'"' TERM USR1; exec "$@"' \
  launcher-hostfile \
  python3 \
  -m \
  launcher.backends.ds_runner \
  --launcher-run-dir=/runs/x \
  --num_gpus=1 \
  --hostfile=/runs/x/hostfile \
  --launcher=pdsh \
  --master_addr=192.168.100.10 \
  --master_port=29500 \
  --no_ssh_check \
  --module \
  --no_local_rank \
  launcher.script.entry \
  node \
  /runs/x \
  -- \
  python3 \
  -m \
  accelerate.commands.launch \
  --config_file \
  /runs/x/accelerate_config.yaml \
  -m \
  launcher.script.entry \
  rank \
  /runs/x \
  accelerate \
  -- \
  /work/examples/train_accelerate.py \
  --max_steps \
  20
