#!/usr/bin/env bash
# The GPU check (issue 19), for a machine with one CUDA device; nothing in CI depends on it.
# Runs the gpu-marked tests (CUDA with 32-true / bf16-mixed / bf16-true, single-GPU DDP, pinned
# loaders), then the real-workload benchmark on the GPU-sized settings. Budget: 8 minutes.
# Usage (from the repository root, with the project installed): bash benchmarks/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
export WANDB_MODE=offline PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
timeout 120 "$PY" benchmarks/bench_real_workload.py --workload resnet --train 8192 --epochs 3
timeout 100 "$PY" benchmarks/bench_near_duplicates.py --samples 60000
