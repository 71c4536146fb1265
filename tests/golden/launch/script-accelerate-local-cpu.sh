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
