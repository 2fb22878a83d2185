"""`serve-app quantize` on the wide demo model, every target, on this machine's CPU, in one run.

    python benchmarks/quantization.py

Builds fraud-wide (a 1024-1024-512 MLP on the fraud features) and its PyTorch twin (same
weights, TorchScript), then makes every variant each platform can make here: ONNX INT8 (dynamic
and static) and FP16; PyTorch INT8 (dynamic) and BF16, and FP16 where a GPU is usable. Each
variant's report measures it beside its FP32 source in the same run (file size, latency p50 at
batch 1, throughput at 256 rows a call, validation AUC).
Writes benchmarks/results/quantization-<date>.json. Nothing here is asserted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import result_header, write_result

from serve_app.errors import InvalidInput
from serve_app.large_models import WIDE_MODEL_NAME, build_torch_copy, build_wide_model
from serve_app.quantize import TARGETS, quantize

TORCH_MODEL = f"{WIDE_MODEL_NAME}-torch"


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="quantize-bench-"))
    built = build_wide_model(root)
    build_torch_copy(root, WIDE_MODEL_NAME, TORCH_MODEL)
    reports, refused = {}, {}
    for model in (WIDE_MODEL_NAME, TORCH_MODEL):
        for target in TARGETS:
            try:
                reports[f"{model} {target}"] = quantize(root, model, 1, target)
            except InvalidInput as error:  # a target this platform or machine cannot do
                refused[f"{model} {target}"] = str(error)
    result = {
        **result_header("quantization"),
        "model": built,
        "reports": reports,
        "refused": refused,
    }
    out = write_result(result)
    print("| model | variant | size | latency p50 batch 1 (ms) | rows/s at 256 | vs fp32 | AUC | AUC change |")
    print("|---|---|---|---|---|---|---|---|")
    shown = set()
    for key, r in reports.items():
        model, target = key.split()
        before, after = r["before"], r["after"]
        if model not in shown:
            shown.add(model)
            print(
                f"| {model} | fp32 | {before['file_bytes']:,} | {before['latency_p50_ms_batch_1']} |",
                f"{before['rows_per_s_batch_256']:,} | 1.00x | {before['auc']} | |",
            )
        print(
            f"| {model} | {target} | {after['file_bytes']:,} | {after['latency_p50_ms_batch_1']} |",
            f"{after['rows_per_s_batch_256']:,} | {r['throughput_ratio_largest_batch']:.2f}x |",
            f"{after['auc']} | {-r['accuracy']['drop']:+.4f} |",
        )
    for key, reason in refused.items():
        print(f"{key}: refused: {reason}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
