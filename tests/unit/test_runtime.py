from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from serve_app.config import ModelConfig
from serve_app.demo import dense_onnx, score_layers
from serve_app.errors import InvalidInput, RepositoryError
from serve_app.runtime import load_runner
from serve_app.runtime.batching import BatchStats, predict_many
from serve_app.runtime.onnx import choose_providers

RNG = np.random.default_rng(0)
LAYERS = [(RNG.normal(size=(4, 8)), RNG.normal(size=8)), (RNG.normal(size=(8, 1)), RNG.normal(size=1))]


def config(**changes) -> ModelConfig:
    document = {
        "name": "tiny",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 16,
        "dynamic_batching": {"max_batch_size": 8},
        "inputs": [{"name": "x", "datatype": "FP32", "dims": [-1, 4]}],
        "outputs": [{"name": "score", "datatype": "FP32", "dims": [-1]}],
    }
    return ModelConfig.model_validate({**document, **changes})


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    onnx.save(dense_onnx(LAYERS, "x", "score", "tiny"), path)
    return path


def test_onnx_runner_matches_the_arithmetic(onnx_file):
    runner = load_runner(config(), onnx_file)
    x = RNG.normal(size=(10, 4)).astype(np.float32)
    out = runner.predict({"x": x})["score"]
    assert out.dtype == np.float32 and out.shape == (10,)
    np.testing.assert_allclose(out, score_layers(LAYERS, x), rtol=1e-5, atol=1e-6)


def test_cpu_is_chosen_without_a_usable_gpu(onnx_file, monkeypatch):
    # The driver is asked for devices; here it answers none, as it does on a machine without a GPU.
    monkeypatch.setattr("serve_app.runtime.devices.cuda_device_count", lambda: 0)
    monkeypatch.setattr("serve_app.runtime.onnx.cuda_device_count", lambda: 0)
    assert choose_providers(config(), "cpu", onnx_file) == ["CPUExecutionProvider"]
    runner = load_runner(config(instances={"num_gpus": 0.5}), onnx_file, gpus_given=1)
    # A GPU was given, none is usable: the runner falls back to the CPU.
    assert runner.describe()["providers"] == ["CPUExecutionProvider"] and runner.device == "cpu"


def test_rows_beyond_max_batch_size_run_in_chunks(onnx_file):
    runner = load_runner(config(max_batch_size=3, dynamic_batching={"max_batch_size": 2}), onnx_file)
    x = RNG.normal(size=(10, 4)).astype(np.float32)
    np.testing.assert_allclose(runner.predict({"x": x})["score"], score_layers(LAYERS, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((2, 4), dtype=np.float64)}, "datatype FP64, the model expects FP32"),
        ({"x": np.zeros((2, 5), dtype=np.float32)}, r"shape \[2, 5\]"),
        ({"y": np.zeros((2, 4), dtype=np.float32)}, "missing input"),
    ],
)
def test_inputs_are_checked_before_the_runtime(onnx_file, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        load_runner(config(), onnx_file).predict(inputs)


def test_config_that_does_not_describe_the_graph_fails_at_load(onnx_file):
    with pytest.raises(RepositoryError, match=r"field 'inputs.0'.*no tensor 'features'"):
        load_runner(config(inputs=[{"name": "features", "datatype": "FP32", "dims": [-1, 4]}]), onnx_file)
    with pytest.raises(RepositoryError, match=r"field 'outputs.0': datatype FP64"):
        load_runner(config(outputs=[{"name": "score", "datatype": "FP64", "dims": [-1]}]), onnx_file)


def test_corrupt_model_file_is_named(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(RepositoryError, match=r"model.onnx: ONNX Runtime cannot load"):
        load_runner(config(), path)


def test_batched_requests_get_their_own_rows_back(onnx_file):
    runner = load_runner(config(), onnx_file)
    requests = [{"x": RNG.normal(size=(n, 4)).astype(np.float32)} for n in (1, 3, 2)]
    stats = BatchStats()
    answers = predict_many(runner, requests, stats)
    for request, answer in zip(requests, answers):
        np.testing.assert_allclose(answer["score"], runner.predict(request)["score"], rtol=1e-6)
    assert stats.as_dict()["execution_count"] == 1 and stats.as_dict()["max_requests_per_batch"] == 3
    assert stats.inference_count == 6


def test_an_onnx_replica_never_imports_torch(onnx_file):
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from serve_app.config import ModelConfig\n"
        "from serve_app.runtime import load_runner\n"
        "from serve_app.deployments import model\n"
        f"config = ModelConfig.model_validate({config().model_dump()!r})\n"
        f"runner = load_runner(config, Path({str(onnx_file)!r}))\n"
        "runner.predict({'x': np.zeros((1, 4), np.float32)})\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


torch = pytest.importorskip("torch")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x):
        return torch.sigmoid(self.linear(x)).reshape(-1)


@pytest.mark.parametrize("kind", ["torchscript", "exported"])
def test_torch_runner_loads_both_formats(tmp_path, kind):
    torch.manual_seed(0)
    module = Tiny().eval()
    x = torch.randn(5, 4)
    if kind == "torchscript":
        path = tmp_path / "model.pt"
        torch.jit.save(torch.jit.script(module), path)
    else:
        path = tmp_path / "model.pt2"
        batch = torch.export.Dim("batch", min=1, max=256)
        torch.export.save(torch.export.export(module, (x,), dynamic_shapes=({0: batch},)), path)
    runner = load_runner(config(platform="pytorch_libtorch"), path)
    out = runner.predict({"x": x.numpy()})["score"]
    assert runner.device == "cpu" and out.dtype == np.float32
    np.testing.assert_allclose(out, module(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_torch_runner_runs_in_bfloat16(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), path)
    runner = load_runner(config(platform="pytorch_libtorch", runtime={"dtype": "bfloat16"}), path)
    out = runner.predict({"x": np.ones((2, 4), np.float32)})["score"]
    assert out.dtype == np.float32 and out.shape == (2,)
    with pytest.raises(RepositoryError, match="float16 needs a GPU"):
        load_runner(config(platform="pytorch_libtorch", runtime={"dtype": "float16"}), path)
