"""INT8, FP16 and BF16 variants of a model version, written as a new version with a report.

    serve-app quantize --model fraud --version 2 --to int8-dynamic|int8-static|fp16|bf16
                       [--calibration rows.parquet] [--max-accuracy-drop 0.01]

ONNX models: ONNX Runtime's own tools do the work: `quant_pre_process` (shape inference and graph
optimisation), then `quantize_dynamic`, or `quantize_static` calibrated on Parquet rows passed
through the version's own preprocessor, or a float16 conversion that keeps FP32 inputs and outputs.
PyTorch models: int8-dynamic is PyTorch's graph-mode dynamic quantisation of a TorchScript module
(a torch.export program is traced to TorchScript first; the kernels are CPU-only); fp16 (GPU only)
and bf16 keep the source file and run it in that dtype (the version's variant.json says so).
The variant is measured beside its source on this machine (size, latency at batch 1, throughput at
the largest batch, and AUC on the labelled validation set) on the device it is meant for, and is
registered only when it passes `--max-accuracy-drop`. Everything happens in a hidden staging folder
that is renamed into place at the end, so a server never sees a half-written version and a refused
variant leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from serve_app.errors import InvalidInput, RepositoryError
from serve_app.extras import require
from serve_app.onboarding import commit_version, model_inputs, staged_version
from serve_app.repository import VARIANT_FILE, ModelRepository, ModelVersion

logger = logging.getLogger("serve_app.quantize")
TARGETS: tuple[str, ...] = ("int8-dynamic", "int8-static", "fp16", "bf16")
PRECISION = {"int8-dynamic": "int8", "int8-static": "int8", "fp16": "fp16", "bf16": "bf16"}
REPORT_JSON = "quantization.json"
REPORT_MD = "quantization.md"
VALIDATION_FILE = "validation.parquet"
CALIBRATION_ROWS = 1024
LATENCY_RUNS = 200
THROUGHPUT_SECONDS = 1.0


def quantize(
    repository: str | Path,
    model: str,
    version: int,
    to: str,
    calibration: str | Path | None = None,
    max_accuracy_drop: float | None = None,
    label: str | None = None,
) -> dict:
    """Build, measure and (if it passes) register the variant; returns the report."""
    if to not in TARGETS:
        raise InvalidInput(f"--to {to!r}: choose one of {', '.join(TARGETS)}")
    repo = ModelRepository(repository)
    source = repo.version(model, version)
    if source.precision != "fp32":
        raise InvalidInput(f"{model} v{version} is already {source.precision}: quantize its fp32 source instead")
    device = _target_device(source, to)
    validation = _validation(source, label)
    rows = _calibration_rows(source, calibration) if to == "int8-static" else None
    with staged_version(repository, model) as staging:
        leave_out = (source.model_file.name, "drift", ".*", VARIANT_FILE, REPORT_JSON, REPORT_MD, "export.json")
        shutil.copytree(source.path, staging, ignore=shutil.ignore_patterns(*leave_out), dirs_exist_ok=True)
        variant_info = {"precision": PRECISION[to], "source_version": version, "method": to}
        (staging / VARIANT_FILE).write_text(json.dumps(variant_info, indent=1) + "\n")  # the runner reads it
        if source.config.platform == "onnxruntime_onnx":
            _convert(source, to, staging / "model.onnx", rows)
        else:
            _convert_torch(source, to, staging)
        variant = ModelVersion(source.config, version, staging)
        report = _report(source, variant, to, validation, device)
        drop = report["accuracy"]["drop"]
        if max_accuracy_drop is not None:
            if drop is None:
                raise InvalidInput("--max-accuracy-drop needs a labelled validation set (validation.parquet)")
            if drop > max_accuracy_drop:
                raise InvalidInput(
                    f"{to} loses {drop:.4f} {report['accuracy']['metric']} (> --max-accuracy-drop "
                    f"{max_accuracy_drop}): not registered"
                )
        report["version"] = max(repo.available_versions(model)) + 1  # what commit_version will name it
        (staging / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
        (staging / REPORT_MD).write_text(render_markdown(report))
        commit_version(repository, model, staging)
    return report


# -- conversion ---------------------------------------------------------------------------


def _target_device(source: ModelVersion, to: str) -> str:
    """Refuse what the platform cannot do; returns the device the variant is measured on."""
    name = f"{source.name} v{source.version}"
    if source.config.platform == "onnxruntime_onnx":
        if to == "bf16":
            raise InvalidInput(
                f"--to bf16: {name} is an ONNX model; its variants are int8-dynamic, int8-static "
                "or fp16 (bf16 is for PyTorch models)"
            )
        return "cuda" if to == "fp16" and _onnx_gpu() else "cpu"
    if to == "int8-static":
        raise InvalidInput(
            f"--to int8-static: {name} is a PyTorch model; its variants are int8-dynamic (CPU), fp16 (GPU) or "
            "bf16; for static INT8, export it to ONNX first (serve-app export)"
        )
    torch = require("torch", f"a variant of the PyTorch model '{name}'")

    if to == "int8-dynamic":
        return "cpu"  # PyTorch's dynamically quantised kernels exist for the CPU only
    if torch.cuda.is_available():
        return "cuda"
    if to == "fp16":
        raise InvalidInput(
            "--to fp16: a PyTorch fp16 variant runs on a GPU, and this machine has no usable one "
            "(torch.cuda.is_available() is False); bf16 runs on the CPU too"
        )
    return "cpu"


def _onnx_gpu() -> bool:
    import onnxruntime as ort

    from serve_app.runtime.devices import cuda_device_count

    return "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count() > 0


def _convert_torch(source: ModelVersion, to: str, staging: Path) -> None:
    if to != "int8-dynamic":  # fp16/bf16: the same file, run in that dtype (variant.json)
        shutil.copyfile(source.model_file, staging / source.model_file.name)
        return
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao on every call
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic_jit

        if source.model_file.suffix == ".pt2":
            example = [torch.zeros([2, *[max(d, 1) for d in s.dims[1:]]]) for s in source.config.inputs]
            module = torch.jit.trace(torch.export.load(str(source.model_file)).module(), tuple(example))
        else:
            module = torch.jit.load(str(source.model_file), map_location="cpu")
        try:
            quantized = quantize_dynamic_jit(module.eval(), {"": per_channel_dynamic_qconfig})
        except Exception as error:
            raise RepositoryError(f"{source.name} v{source.version}: int8-dynamic failed: {error}") from None
    if "quantized::linear_dynamic" not in str(quantized.inlined_graph):
        raise InvalidInput(f"{source.name} v{source.version}: int8-dynamic found no linear layer to quantise")
    quantized.save(str(staging / "model.pt"))


def _convert(source: ModelVersion, to: str, out: Path, rows: dict[str, np.ndarray] | None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            if to == "fp16":
                from onnxruntime.transformers.float16 import convert_float_to_float16

                converted = convert_float_to_float16(onnx.load(str(source.model_file)), keep_io_types=True)
                onnx.save(converted, str(out))
                return
            quant_pre_process(str(source.model_file), str(prepared), skip_symbolic_shape=True)
            if to == "int8-dynamic":
                quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
            else:
                quantize_static(
                    str(prepared),
                    str(out),
                    _Calibration(rows),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                )
        except InvalidInput:
            raise
        except Exception as error:
            raise RepositoryError(f"{source.name} v{source.version}: {to} conversion failed: {error}") from None


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over preprocessed Parquet rows, 64 rows at a time."""

    def __init__(self, rows: dict[str, np.ndarray]):
        self._batches = self._split(rows)

    @staticmethod
    def _split(rows: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        count = len(next(iter(rows.values())))
        for start in range(0, count, 64):
            yield {name: values[start : start + 64] for name, values in rows.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # quantize_static reads the data once; nothing to rewind
        pass


def _calibration_rows(version: ModelVersion, calibration: str | Path | None) -> dict[str, np.ndarray]:
    path = Path(calibration) if calibration else version.reference_file
    if path is None:
        raise InvalidInput("int8-static needs --calibration <parquet> (or a reference.parquet beside the version)")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:
        raise InvalidInput(f"calibration file {path}: cannot read it as Parquet: {error}") from None
    if frame.empty:
        raise InvalidInput(f"calibration file {path} has no rows")
    return model_inputs(version, frame.head(CALIBRATION_ROWS), f"calibration file {path}")


# -- measuring ----------------------------------------------------------------------------


def _validation(version: ModelVersion, label: str | None) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """The labelled validation set beside the model (<model>/validation.parquet), as tensors and labels."""
    path = version.path.parent / VALIDATION_FILE
    if not path.is_file():
        return None
    frame = pd.read_parquet(path)
    if label is None:
        consumed = {f.name for f in version.preprocessor.spec.features} if version.preprocessor else set()
        candidates = [c for c in frame.columns if c not in consumed and frame[c].dropna().isin([0, 1]).all()]
        if len(candidates) != 1:
            return None
        label = candidates[0]
    if label not in frame.columns:
        raise InvalidInput(f"{path} has no label column '{label}'")
    return model_inputs(version, frame, str(path)), frame[label].to_numpy().astype(int)


def _measuring_runner(version: ModelVersion, device: str):
    """The serving runner on `device`, with every core (one-off: this process does nothing else)."""
    from serve_app.runtime import load_runner

    runtime = version.config.runtime.model_copy(
        update={"device": device, "warmup": False, "intra_op_num_threads": os.cpu_count()}
    )
    return load_runner(version.config.model_copy(update={"runtime": runtime}), version.model_file, version.precision)


def _measure(version: ModelVersion, validation, device: str) -> dict:
    runner = _measuring_runner(version, device)
    spec = version.config.inputs[0]
    width = [d if d > 0 else 1 for d in spec.dims[1:]]
    largest = version.config.max_batch_size
    rng = np.random.default_rng(0)
    one = {spec.name: rng.standard_normal([1, *width]).astype(np.float32)}
    full = {spec.name: rng.standard_normal([largest, *width]).astype(np.float32)}
    for _ in range(10):
        runner.run(one)
    latencies = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        runner.run(one)
        latencies.append(time.perf_counter() - start)
    runner.run(full)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < THROUGHPUT_SECONDS:
        runner.run(full)
        runs += 1
    elapsed = time.perf_counter() - start
    measured = {
        "file_bytes": version.model_file.stat().st_size,
        "latency_p50_ms_batch_1": round(1000 * statistics.median(latencies), 4),
        f"rows_per_s_batch_{largest}": round(runs * largest / elapsed),
        "auc": None,
        "runtime": runner.describe(),
    }
    if validation is not None:
        from sklearn.metrics import roc_auc_score

        tensors, labels = validation
        scores = runner.run(tensors)[version.config.outputs[0].name].reshape(-1)
        measured["auc"] = round(float(roc_auc_score(labels, scores)), 6)
    return measured


def _report(source: ModelVersion, variant: ModelVersion, to: str, validation, device: str) -> dict:
    # Measured in the same run on the same device, so the ratios hold on a noisy machine.
    before, after = _measure(source, validation, device), _measure(variant, validation, device)
    largest = f"rows_per_s_batch_{source.config.max_batch_size}"
    drop = None if before["auc"] is None else round(before["auc"] - after["auc"], 6)
    return {
        "model": source.name,
        "source_version": source.version,
        "method": to,
        "precision": PRECISION[to],
        "before": before,
        "after": after,
        "size_ratio": round(after["file_bytes"] / before["file_bytes"], 4),
        "latency_ratio_batch_1": round(after["latency_p50_ms_batch_1"] / before["latency_p50_ms_batch_1"], 3),
        "throughput_ratio_largest_batch": round(after[largest] / before[largest], 3),
        "accuracy": {"metric": "auc", "before": before["auc"], "after": after["auc"], "drop": drop},
        "measured_on": after["runtime"],
    }


def _where(runtime: dict) -> str:
    platform = {"onnxruntime_onnx": "ONNX Runtime", "pytorch_libtorch": "PyTorch"}[runtime["platform"]]
    providers = f" ({', '.join(runtime['providers'])})" if runtime.get("providers") else ""
    return f"{platform} on {runtime['device']}{providers}"


def render_markdown(report: dict) -> str:
    before, after = report["before"], report["after"]
    throughput = next(k for k in before if k.startswith("rows_per_s_batch_"))
    accuracy = report["accuracy"]
    lines = [
        f"# {report['model']} v{report.get('version', '?')}: {report['method']} of v{report['source_version']}",
        "",
        "| | source (fp32) | variant | ratio |",
        "|---|---|---|---|",
        f"| file size (bytes) | {before['file_bytes']:,} | {after['file_bytes']:,} | {report['size_ratio']}x |",
        f"| latency p50, batch 1 (ms) | {before['latency_p50_ms_batch_1']} | {after['latency_p50_ms_batch_1']} | "
        f"{report['latency_ratio_batch_1']}x |",
        f"| throughput, {throughput.rsplit('_', 1)[1]} rows a call (rows/s) | {before[throughput]:,} | "
        f"{after[throughput]:,} | {report['throughput_ratio_largest_batch']}x |",
        f"| {accuracy['metric']} on the validation set | {accuracy['before']} | {accuracy['after']} | "
        f"drop {accuracy['drop']} |",
        "",
        f"Measured in one run on this machine: {_where(report['measured_on'])}.",
        "",
    ]
    return "\n".join(lines)
