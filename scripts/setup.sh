#!/usr/bin/env bash
# One-time set-up on a fresh machine: torch (if absent), the launcher and its dependencies, editable.
#   bash scripts/setup.sh          # to run jobs
#   bash scripts/setup.sh --test   # also the test tools
# Idempotent: rerunning installs nothing new. PYTHON=/path/to/python picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # A GPU box usually brings its own CUDA torch; this pin is the CPU build on CI-like machines.
  "$PY" -m pip install -q "torch==2.13.0"
fi
extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
fi
"$PY" -m pip install -q -e ".${extras}"
"$PY" -c "import torch, deepspeed, transformers, hydra; print(f'set-up done: torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}')"
