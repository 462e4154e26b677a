#!/usr/bin/env bash
# The GPU suite in one command (issue 17 item 5): writes a markdown table (default gpu_suite.md) and prints it.
#   benchmarks/gpu_suite.sh                      # on one H100/H200: ~6-8 minutes
#   benchmarks/gpu_suite.sh --out docs/gpu_suite.md
#   benchmarks/gpu_suite.sh --dry-run            # CPU, toy sizes: checks the script runs end to end
# Without a CUDA device (and without --dry-run) it prints "gpu suite: no CUDA device ..." and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu_suite.py "$@"
