#!/usr/bin/env bash
# The GPU paths, on a machine with a CUDA GPU, in under 5 minutes: the GPU tests, then FP32 vs FP16
# vs INT8 throughput at batch 1 and 64 on CUDA. Prints everything; run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: not available"
"$PYTHON" - <<'PY'
import onnxruntime as ort
from serve_app.runtime.devices import cuda_device_count
print("CUDA devices (driver):", cuda_device_count(), "| ONNX Runtime providers:", ort.get_available_providers())
PY
timeout 240 "$PYTHON" -m pytest -m gpu tests/gpu -v -rs -p no:cacheprovider
timeout 120 "$PYTHON" benchmarks/gpu_precision.py
