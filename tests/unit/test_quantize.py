"""INT8 and FP16 variants made with ONNX Runtime's quantisation tools, on a copy of the demo repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from serve_app import cli
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.errors import InvalidInput, ModelNotFound
from serve_app.large_models import build_torch_copy
from serve_app.protocol.dataplane import DataPlane, LocalEndpoint
from serve_app.quantize import quantize
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from tests.helpers import snapshot


def scores(root: Path, version: int, frame: pd.DataFrame, model: str = "fraud") -> np.ndarray:
    found = ModelRepository(root).version(model, version)
    runner = load_runner(found.config, found.model_file, found.precision)
    return runner.predict(found.preprocessor.transform(request_columns(frame)))["fraud_probability"]


def quantize_command(root: Path, max_accuracy_drop: str) -> int:
    """`serve-app quantize` of fraud v2 to INT8 (dynamic), as a user types it."""
    arguments = ["--model", "fraud", "--version", "2", "--to", "int8-dynamic", "--max-accuracy-drop"]
    return cli.main(["quantize", "--repository", str(root), *arguments, max_accuracy_drop])


def demo_auc(root: Path, version: int) -> float:
    """The validation AUC the demo build measured for a fraud version (its metrics.json)."""
    return json.loads((root / "fraud" / "metrics.json").read_text())[str(version)]["auc"]


def test_int8_dynamic_is_registered_as_the_next_version_with_its_report(fraud_repository, capsys):
    assert quantize_command(fraud_repository, max_accuracy_drop="0.01") == 0
    out = capsys.readouterr().out
    trained_auc = demo_auc(fraud_repository, 2)  # what this machine's training gave: BLAS-dependent
    assert "registered as fraud v3" in out and f"| auc on the validation set | {trained_auc} |" in out
    v3 = ModelRepository(fraud_repository).version("fraud", 3)
    assert v3.precision == "int8" and v3.variant == {"precision": "int8", "source_version": 2, "method": "int8-dynamic"}
    report = json.loads((v3.path / "quantization.json").read_text())
    assert report["before"]["file_bytes"] == (fraud_repository / "fraud" / "2" / "model.onnx").stat().st_size
    assert report["after"]["file_bytes"] == v3.model_file.stat().st_size
    assert abs(report["accuracy"]["drop"]) < 0.01 and report["throughput_ratio_largest_batch"] > 0
    assert (v3.path / "quantization.md").read_text().startswith("# fraud v3: int8-dynamic of v2")
    assert (v3.path / "preprocessor.json").is_file()  # served like any other version
    frame = synthetic_transactions(200, seed=5)
    quantised, source = scores(fraud_repository, 3, frame), scores(fraud_repository, 2, frame)
    # INT8 rounding, not a different model. Its size follows the trained weights, which follow the machine's
    # BLAS: mean 0.003-0.010, largest 0.05-0.10 on the CPUs seen; v1 against v2 differ by 0.034 on average.
    difference = np.abs(quantised - source)
    assert difference.mean() < 0.02 and difference.max() < 0.2 and np.corrcoef(quantised, source)[0, 1] > 0.98
    assert not [p for p in (fraud_repository / "fraud").iterdir() if p.name.startswith(".")]


def test_int8_static_calibrates_on_parquet_rows_through_the_preprocessor(fraud_repository, tmp_path):
    calibration = tmp_path / "calibration.parquet"
    synthetic_transactions(500, seed=9).to_parquet(calibration)
    report = quantize(fraud_repository, "fraud", 2, "int8-static", calibration=calibration)
    graph = onnx.load(str(fraud_repository / "fraud" / str(report["version"]) / "model.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    assert report["accuracy"]["drop"] < 0.01


def test_fp16_keeps_fp32_inputs_and_outputs(fraud_repository):
    report = quantize(fraud_repository, "fraud", 2, "fp16")
    version = ModelRepository(fraud_repository).version("fraud", report["version"])
    graph = onnx.load(str(version.model_file)).graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in graph.output] == [onnx.TensorProto.FLOAT]
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    assert version.precision == "fp16" and report["size_ratio"] < 0.8


def test_a_variant_that_loses_too_much_is_not_registered(fraud_repository, capsys):
    before = snapshot(fraud_repository)
    code = quantize_command(fraud_repository, max_accuracy_drop="-0.5")
    assert code == 1 and "not registered" in capsys.readouterr().err
    assert snapshot(fraud_repository) == before


def test_bad_requests_name_the_problem_and_leave_the_repository_unchanged(fraud_repository, tmp_path):
    before = snapshot(fraud_repository)
    lacking = tmp_path / "lacking.parquet"
    synthetic_transactions(50, seed=1).drop(columns=["amount", "country"]).to_parquet(lacking)
    with pytest.raises(InvalidInput, match=r"lacking\.parquet lacks the column\(s\) \['amount', 'country'\]"):
        quantize(fraud_repository, "fraud", 2, "int8-static", calibration=lacking)
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(InvalidInput, match="cannot read it as Parquet"):
        quantize(fraud_repository, "fraud", 2, "int8-static", calibration=tmp_path / "text.parquet")
    with pytest.raises(ModelNotFound, match="no version 9"):
        quantize(fraud_repository, "fraud", 9, "int8-dynamic")
    with pytest.raises(ModelNotFound):
        quantize(fraud_repository, "nope", 1, "int8-dynamic")
    with pytest.raises(InvalidInput, match="choose one of int8-dynamic, int8-static, fp16, bf16"):
        quantize(fraud_repository, "fraud", 2, "int4")
    with pytest.raises(InvalidInput, match=r"--to bf16: fraud v2 is an ONNX model; .* \(bf16 is for PyTorch models\)"):
        quantize(fraud_repository, "fraud", 2, "bf16")
    assert snapshot(fraud_repository) == before
    report = quantize(fraud_repository, "fraud", 2, "int8-dynamic")
    with pytest.raises(InvalidInput, match="already int8: quantize its fp32 source instead"):
        quantize(fraud_repository, "fraud", report["version"], "fp16")


def test_metadata_says_the_precision(fraud_repository):
    report = quantize(fraud_repository, "fraud", 2, "int8-dynamic")
    repo = ModelRepository(fraud_repository)
    endpoints = []
    for number in (2, report["version"]):
        version = repo.version("fraud", number)
        endpoints.append(LocalEndpoint(version, load_runner(version.config, version.model_file, version.precision)))
    plane = DataPlane(endpoints)
    assert plane.model_metadata("fraud", "2")["parameters"] == {"precision": "fp32"}
    assert plane.model_metadata("fraud", str(report["version"]))["parameters"] == {"precision": "int8"}


@pytest.mark.parametrize("file_format", ["pt", "pt2"])
def test_pytorch_int8_dynamic_quantises_the_linear_layers(fraud_repository, file_format):
    build_torch_copy(fraud_repository, "fraud", "fraud-torch", file_format)
    frame = synthetic_transactions(200, seed=5)
    np.testing.assert_allclose(
        scores(fraud_repository, 1, frame, "fraud-torch"), scores(fraud_repository, 2, frame), atol=1e-5
    )  # the twin is the same model
    report = quantize(fraud_repository, "fraud-torch", 1, "int8-dynamic", max_accuracy_drop=0.01)
    version = ModelRepository(fraud_repository).version("fraud-torch", 2)
    assert version.model_file.name == "model.pt" and version.precision == "int8"
    assert "quantized::linear_dynamic" in str(torch.jit.load(str(version.model_file)).inlined_graph)
    assert report["accuracy"]["before"] == demo_auc(fraud_repository, 2) and report["accuracy"]["drop"] < 0.01
    assert report["measured_on"] == {"platform": "pytorch_libtorch", "device": "cpu"}
    assert report["size_ratio"] < 0.6
    quantised, source = (scores(fraud_repository, v, frame, "fraud-torch") for v in (2, 1))
    difference = np.abs(quantised - source)  # INT8 rounding (see the ONNX test above), not a different model
    assert 0 < difference.max() < 0.1 and np.corrcoef(quantised, source)[0, 1] > 0.99
    assert "PyTorch on cpu" in (version.path / "quantization.md").read_text()


def test_pytorch_bf16_runs_the_same_file_in_bfloat16(fraud_repository):
    build_torch_copy(fraud_repository, "fraud", "fraud-torch")
    report = quantize(fraud_repository, "fraud-torch", 1, "bf16")
    version = ModelRepository(fraud_repository).version("fraud-torch", report["version"])
    assert version.precision == "bf16"
    assert version.model_file.read_bytes() == (fraud_repository / "fraud-torch" / "1" / "model.pt").read_bytes()
    runner = load_runner(version.config, version.model_file, version.precision)
    assert runner._dtype is torch.bfloat16 and abs(report["accuracy"]["drop"]) < 0.01
    frame = synthetic_transactions(200, seed=5)
    difference = np.abs(
        scores(fraud_repository, 2, frame, "fraud-torch") - scores(fraud_repository, 1, frame, "fraud-torch")
    )
    assert 0 < difference.max() < 0.05
    plane = DataPlane([LocalEndpoint(version, runner)])
    assert plane.model_metadata("fraud-torch", "2")["parameters"] == {"precision": "bf16"}


def test_pytorch_targets_the_platform_cannot_do_are_refused(fraud_repository):
    build_torch_copy(fraud_repository, "fraud", "fraud-torch")
    before = snapshot(fraud_repository)
    refused = r"--to int8-static: fraud-torch v1 is a PyTorch model; .* \(serve-app export\)"
    with pytest.raises(InvalidInput, match=refused):
        quantize(fraud_repository, "fraud-torch", 1, "int8-static")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput, match=r"a PyTorch fp16 variant runs on a GPU, and this machine has no usable"):
            quantize(fraud_repository, "fraud-torch", 1, "fp16")
    assert snapshot(fraud_repository) == before
