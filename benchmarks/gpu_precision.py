"""FP32 vs FP16 vs INT8 variants of the wide demo model, at batch 1 and 64, on the GPU where there
is one (else the CPU, and the table says so), in one run.

    python benchmarks/gpu_precision.py [--seconds 2]

Builds fraud-wide, makes its variants with `serve_app.quantize`, and times each on ONNX Runtime's
CUDA provider through the project's runner (IO binding). Writes
benchmarks/results/gpu_precision-<date>.json. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import result_header, write_result

from serve_app.demo import request_columns, synthetic_transactions
from serve_app.large_models import WIDE_MODEL_NAME, build_wide_model
from serve_app.quantize import quantize
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner


def rows_per_s(runner, rows: dict[str, np.ndarray], seconds: float) -> float:
    for _ in range(5):
        runner.predict(rows)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.predict(rows)
        calls += 1
    return calls * len(next(iter(rows.values()))) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per point")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    build_wide_model(root, epochs=2)
    versions = {"fp32": 1}
    for target in ("fp16", "int8-dynamic", "int8-static"):
        versions[target] = quantize(root, WIDE_MODEL_NAME, 1, target)["version"]
    repo = ModelRepository(root)
    frame = synthetic_transactions(64, seed=1)
    points = []
    for name, number in versions.items():
        model = repo.version(WIDE_MODEL_NAME, number)
        config = model.config.model_copy(update={"runtime": model.config.runtime.model_copy(update={"device": "cuda"})})
        runner = load_runner(config, model.model_file, model.precision)
        tensors = model.preprocessor.transform(request_columns(frame))
        for batch in (1, 64):
            rows = {k: v[:batch] for k, v in tensors.items()}
            points.append(
                {
                    "variant": name,
                    "device": runner.device,
                    "provider": runner.describe()["providers"][0],
                    "batch": batch,
                    "rows_per_s": round(rows_per_s(runner, rows, args.seconds)),
                }
            )
    result = {
        **result_header("gpu_precision"),
        "points": points,
    }
    out = write_result(result)
    fp32 = {p["batch"]: p["rows_per_s"] for p in points if p["variant"] == "fp32"}
    print("| variant | device | provider | batch | rows/s | vs fp32 |")
    print("|---|---|---|---|---|---|")
    for p in points:
        print(
            f"| {p['variant']} | {p['device']} | {p['provider']} | {p['batch']} | {p['rows_per_s']:,} |",
            f"{p['rows_per_s'] / fp32[p['batch']]:.2f}x |",
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
