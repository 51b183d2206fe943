#!/usr/bin/env bash
# The GPU check (issue 10, item 7): on one lent GPU, in under ten minutes, GRPO with vLLM and weight sync, a LoRA
# DPO step, a 1-GPU FSDP2 step, and TRL's GRPOTrainer with vLLM beside ours; prints a table. See bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec timeout 590 "$PYTHON" bench/gpu_check.py "$@"
