#!/usr/bin/env bash
# One-time set-up on a fresh machine: a project virtual environment (.venv), torch if it has none, and the launcher
# with its dependencies, editable. Afterwards `.venv/bin/python -m launcher` (or `.venv/bin/launcher`) runs jobs.
#   bash scripts/setup.sh          # to run jobs
#   bash scripts/setup.sh --test   # also the test tools
# PYTHON=/path/to/python picks the interpreter the environment is built from (default python3).
#
# Why a venv: DGX OS (Ubuntu 24.04) and Debian mark their system Python "externally managed" (PEP 668) and refuse
# pip installs into it. When PYTHON already runs inside a virtual environment, that environment is used and .venv
# becomes a link to it. When PYTHON already has a CUDA torch (NVIDIA's PyTorch container, a GB10 box set up with
# NVIDIA's wheels), .venv sees it (--system-site-packages) instead of replacing it with a CPU build.
# On several hosts (a hostfile or Slurm job) build the environment at the same path on each: the ranks are started
# with this interpreter's path on every host.
# Idempotent: rerunning installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "setup: no interpreter '$PY' (set PYTHON=/path/to/python3, Python 3.11 or newer)" >&2
  exit 2
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "setup: $("$PY" -V 2>&1) is too old: the launcher needs Python 3.11 or newer (set PYTHON=...)" >&2
  exit 2
}
active=$("$PY" -c 'import sys; print(sys.prefix if sys.prefix != sys.base_prefix else "")')
if [ -n "$active" ]; then
  # Already in a virtual environment: install there, and let .venv name it so the README's commands hold.
  if [ ! -e "$VENV" ] || [ -L "$VENV" ]; then
    ln -sfn "$active" "$VENV"
  fi
elif [ ! -x "$VENV/bin/python" ]; then
  site=()
  if "$PY" -c "import torch" 2>/dev/null; then
    site=(--system-site-packages)  # keep the torch this interpreter brings (a CUDA build on a GPU box)
  fi
  "$PY" -m venv "${site[@]}" "$VENV" || {
    echo "setup: '$PY -m venv' failed. On Debian/Ubuntu install the venv module first: sudo apt-get install" \
      "python3-venv (python3.12-venv on Ubuntu 24.04), then rerun this script" >&2
    rm -rf "$VENV"
    exit 2
  }
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VPY" -c "import torch" 2>/dev/null; then
  # A GPU box usually brings its own CUDA torch (seen through --system-site-packages); this pin is the CPU build.
  "$VPY" -m pip install -q "torch==2.13.0"
fi
extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
fi
"$VPY" -m pip install -q -e ".${extras}"
if [ -n "$extras" ] && [ ! -d "$VENV/extras/torchao" ]; then
  # torchao for tests/unit/test_fp8.py, kept out of the environment the ranks import: with torchao installed,
  # transformers imports it in every rank (~1.7 s each), train.precision=fp8 or not
  "$VPY" -m pip install -q --no-deps --target "$VENV/extras" "torchao==0.18.0"
fi
"$VPY" -c "import torch, deepspeed, transformers, hydra; print(f'set-up done in $VENV: torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}')"
