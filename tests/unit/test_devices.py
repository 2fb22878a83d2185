"""Where a runner runs: the GPUs Ray gave the replica decide; a GPU that cannot be used is said
once, by name, and never logged as CUDA; a replica that insists on CUDA without one fails.

This machine has no GPU: a replica "given a GPU" here is what Ray does with a logical GPU (an id,
no hardware), and the CUDA driver, the ONNX Runtime build and the libraries are the real ones."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from serve_app.config import ModelConfig
from serve_app.demo import dense_onnx
from serve_app.errors import RepositoryError
from serve_app.extras import MissingExtra, require
from serve_app.runtime import load_runner
from serve_app.runtime.devices import cuda_device_count, cuda_libraries, placement
from serve_app.runtime.onnx import TENSORRT_CACHE_FOLDER, build_cuda_major, cuda_problem, tensorrt_options
from tests.unit.test_runtime import config as tiny_config

RNG = np.random.default_rng(1)
LAYERS = [(RNG.normal(size=(4, 8)), RNG.normal(size=8)), (RNG.normal(size=(8, 1)), RNG.normal(size=1))]
pytestmark = pytest.mark.skipif(cuda_device_count() > 0, reason="these check the paths of a machine without a GPU")


def config(**changes) -> ModelConfig:
    """test_runtime's tiny model, with room for the TensorRT profile's three batch sizes."""
    return tiny_config(**{"max_batch_size": 64, "dynamic_batching": {"max_batch_size": 16}, **changes})


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "tiny" / "3" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(dense_onnx(LAYERS, "x", "score", "tiny"), path)
    return path


def test_the_gpus_given_decide_and_runtime_device_only_narrows():
    assert placement("m", "auto", 1) == "cuda"
    assert placement("m", "auto", 0) == "cpu"
    assert placement("m", "cpu", 2) == "cpu"
    assert placement("m", "cuda", 1) == "cuda"
    assert placement("m", "auto", None) == "cpu"  # outside Ray: the devices this process sees, none here


def test_cuda_demanded_without_a_gpu_names_the_model_and_the_setting():
    with pytest.raises(
        RepositoryError, match=r"model 'fraud': runtime.device is 'cuda' but this replica was given no GPU"
    ):
        placement("fraud", "cuda", 0)
    with pytest.raises(RepositoryError, match=r"instances\.num_gpus"):
        placement("fraud", "cuda", 0)


def test_a_gpu_given_but_unusable_is_one_warning_and_the_cpu(onnx_file, caplog):
    with caplog.at_level(logging.INFO, logger="serve_app.runtime"):
        runner = load_runner(config(), onnx_file, gpus_given=1)
    assert runner.device == "cpu" and runner.describe()["providers"] == ["CPUExecutionProvider"]
    assert runner.placed_on == "cuda"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "model tiny: given a GPU, but the CUDA driver reports no usable device: running on the CPU instead"
    ]
    # The providers line reads the session back: it never says CUDA when the CPU runs the model.
    providers = [r.getMessage() for r in caplog.records if "providers" in r.getMessage()]
    assert providers == ["model tiny: ONNX Runtime providers ['CPUExecutionProvider']"]


def test_cuda_insisted_on_but_unusable_refuses_to_start(onnx_file):
    with pytest.raises(RepositoryError, match=r"model 'tiny': runtime.device is 'cuda' but the CUDA driver reports no"):
        load_runner(config(runtime={"device": "cuda"}), onnx_file, gpus_given=1)


def test_missing_cuda_libraries_are_named(monkeypatch):
    """The driver answers (patched: there is none here), the libraries are looked up for real."""
    monkeypatch.setattr("serve_app.runtime.onnx.cuda_device_count", lambda: 1)
    problem = cuda_problem()
    major = build_cuda_major()
    missing = [name for name, found in cuda_libraries(major).items() if not found]
    assert "libcudnn.so.9" in missing and f"libcublas.so.{major}" in missing  # not on this machine
    assert problem == f"CUDA {major} libraries not found: {', '.join(missing)} (pip install 'serve-app[cuda]')"


def test_tensorrt_on_a_cpu_replica_is_one_warning(onnx_file, caplog):
    with caplog.at_level(logging.WARNING, logger="serve_app.runtime"):
        runner = load_runner(config(runtime={"tensorrt": True}), onnx_file, gpus_given=0)
    assert runner.device == "cpu"
    assert [r.getMessage() for r in caplog.records] == [
        "model tiny: runtime.tensorrt is set but the model runs on the CPU: no TensorRT"
    ]


def test_tensorrt_caches_engines_per_version_for_every_batch_size(onnx_file, tmp_path):
    options = tensorrt_options(config(runtime={"tensorrt": True, "tensorrt_precision": "fp16"}), onnx_file)
    assert options["trt_engine_cache_enable"] and options["trt_fp16_enable"] and not options["trt_int8_enable"]
    assert options["trt_engine_cache_path"] == str(onnx_file.parent / TENSORRT_CACHE_FOLDER)
    assert (onnx_file.parent / TENSORRT_CACHE_FOLDER).is_dir()
    # One profile from 1 row to max_batch_size, tuned for a full dynamic batch.
    assert (
        options["trt_profile_min_shapes"],
        options["trt_profile_opt_shapes"],
        options["trt_profile_max_shapes"],
    ) == (
        "x:1x4",
        "x:16x4",
        "x:64x4",
    )
    elsewhere = tensorrt_options(
        config(runtime={"tensorrt": True, "tensorrt_cache_dir": str(tmp_path / "c")}), onnx_file
    )
    assert elsewhere["trt_engine_cache_path"] == str(tmp_path / "c" / "tiny" / "3")


def test_no_profile_when_a_dimension_besides_the_batch_varies(onnx_file):
    varying = config(inputs=[{"name": "x", "datatype": "FP32", "dims": [-1, -1]}], runtime={"tensorrt": True})
    assert not any(key.startswith("trt_profile") for key in tensorrt_options(varying, onnx_file))


def test_pytorch_given_a_gpu_it_cannot_use_warns_and_runs_on_the_cpu(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this PyTorch can use CUDA")
    path = tmp_path / "model.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Flatten(0))).save(str(path))
    with caplog.at_level(logging.WARNING, logger="serve_app.runtime"):
        runner = load_runner(config(platform="pytorch_libtorch"), path, gpus_given=1)
    assert runner.device == "cpu"
    assert (
        len(caplog.records) == 1 and "model tiny: given a GPU, but this PyTorch build" in caplog.records[0].getMessage()
    )
    with pytest.raises(RepositoryError, match=r"model 'tiny': runtime.device is 'cuda' but this PyTorch build"):
        load_runner(config(platform="pytorch_libtorch", runtime={"device": "cuda"}), path, gpus_given=1)


def test_a_pytorch_model_without_torch_names_the_extra(onnx_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` meets where it is not installed
    with pytest.raises(
        MissingExtra, match=r"model 'tiny' \(platform pytorch_libtorch\) needs torch.*serve-app\[torch\]"
    ):
        load_runner(config(platform="pytorch_libtorch"), onnx_file.with_name("model.pt"))
    with pytest.raises(MissingExtra, match=r"serve-app export needs torch, which is not installed"):
        require("torch", "serve-app export")


def test_the_gpu_check_tells_a_missing_environment_from_a_failure(tmp_path):
    """scripts/gpu_check.sh here, where there is no GPU: exit 2, and the file names what is missing."""
    script = Path(__file__).parents[2] / "scripts" / "gpu_check.sh"
    command = ["bash", str(script), "--out", str(tmp_path)]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    (path,) = tmp_path.glob("gpu-check-*.json")
    report = json.loads(path.read_text())
    assert report["verdict"] == "environment" and "tests" not in report
    assert report["blockers"] == ["the CUDA driver reports no device (no GPU, or no driver)"]
    assert report["environment"]["onnxruntime"]["built_for_cuda"] == build_cuda_major()
