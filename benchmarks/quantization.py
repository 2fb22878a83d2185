"""`serve-app quantize` on the wide demo model, every target, on this machine's CPU, in one run.

    python benchmarks/quantization.py

Builds fraud-wide (a 1024-1024-512 MLP on the fraud features) and makes its INT8 (dynamic and
static) and FP16 variants; each variant's report measures it beside its FP32 source in the same
run (file size, latency p50 at batch 1, throughput at 256 rows a call, validation AUC).
Writes benchmarks/results/quantization-<date>.json. Nothing here is asserted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import result_header, write_result

from serve_app.demo import WIDE_MODEL_NAME, build_wide_model
from serve_app.quantize import TARGETS, quantize


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="quantize-bench-"))
    built = build_wide_model(root)
    reports = {target: quantize(root, WIDE_MODEL_NAME, 1, target) for target in TARGETS}
    result = {
        **result_header("quantization"), "model": built,
        "reports": reports,
    }  # fmt: skip
    out = write_result(result)
    print("| variant | size | latency p50 batch 1 (ms) | rows/s at 256 | vs fp32 | AUC | AUC change |")
    print("|---|---|---|---|---|---|---|")
    for target, r in reports.items():
        before, after = r["before"], r["after"]
        if target == TARGETS[0]:
            print(f"| fp32 | {before['file_bytes']:,} | {before['latency_p50_ms_batch_1']} |",
                  f"{before['rows_per_s_batch_256']:,} | 1.00x | {before['auc']} | |")  # fmt: skip
        print(f"| {target} | {after['file_bytes']:,} | {after['latency_p50_ms_batch_1']} |",
              f"{after['rows_per_s_batch_256']:,} | {r['throughput_ratio_largest_batch']:.2f}x |",
              f"{after['auc']} | {-r['accuracy']['drop']:+.4f} |")  # fmt: skip
    print(f"written to {out}")


if __name__ == "__main__":
    main()
