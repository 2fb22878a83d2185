#!/usr/bin/env bash
# The GPU checks, on a machine with a CUDA GPU, in under 5 minutes: the environment (GPU, driver,
# CUDA and cuDNN libraries), the GPU tests, then FP32 vs FP16 vs INT8 throughput on CUDA. Writes
# benchmarks/results/gpu-check-<date>.json. Exit 0: passed; 1: a test failed; 2: the environment
# cannot run the checks (what is missing is named). Set up with `make install CUDA=1`.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
timeout 290 "$PYTHON" scripts/gpu_check.py "$@"
