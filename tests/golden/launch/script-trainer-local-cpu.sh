#!/usr/bin/env bash
# Rendered by launcher for run x. Rerun this file to reproduce the run (it resumes from the
# latest complete checkpoint in the run dir, as the launcher does).
set -euo pipefail
cd /work
export CUDA_VISIBLE_DEVICES=''
export DS_ACCELERATOR=cpu
export LAUNCHER_DS_CONFIG=/runs/x/ds_config.json
export LAUNCHER_PLAN=/runs/x/plan.json
export LAUNCHER_RUN_DIR=/runs/x
export OMP_NUM_THREADS=1
export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
exec python3 \
  -m \
  torch.distributed.run \
  --nnodes=1 \
  --nproc-per-node=2 \
  --standalone \
  --max-restarts=0 \
  --log-dir=/runs/x/logs/torchrun \
  -m \
  launcher.script.entry \
  rank \
  /runs/x \
  hf_trainer \
  -- \
  /work/examples/train_trainer.py \
  --max_steps \
  20 \
  --deepspeed \
  /runs/x/ds_config.json \
  --output_dir \
  /runs/x/checkpoints \
  --per_device_train_batch_size \
  2 \
  --gradient_accumulation_steps \
  2 \
  --max_grad_norm \
  1.0 \
  --use_cpu
