"""GPU paths: ONNX Runtime on CUDA (IO binding), variants on the GPU, fractional GPUs in Serve.

Marked `gpu` and skipped, with the reason, where no CUDA device is usable; scripts/gpu_check.sh
runs them on a GPU machine."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from ray import serve

from graphs.single_model import build_app
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.large_models import WIDE_MODEL_NAME, build_torch_copy, build_wide_model
from serve_app.protocol.rest import request_body
from serve_app.quantize import quantize
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.runtime.devices import cuda_device_count

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        cuda_device_count() == 0 or "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="no usable CUDA device (the CUDA driver reports none, or this ONNX Runtime has no CUDA provider)",
    ),
]


@pytest.fixture(scope="module")
def wide(demo_repository, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu") / "repository"
    shutil.copytree(demo_repository / "fraud", root / "fraud")
    build_wide_model(root, epochs=2)
    for model in ("fraud", WIDE_MODEL_NAME):
        config = (root / model / "config.yaml").read_text()
        (root / model / "config.yaml").write_text(config.replace("num_gpus: 0", "num_gpus: 0.5"))
    return root


def runner_of(root, version: int, device: str):
    model = ModelRepository(root).version(WIDE_MODEL_NAME, version)
    config = model.config.model_copy(update={"runtime": model.config.runtime.model_copy(update={"device": device})})
    return model, load_runner(config, model.model_file, model.precision)


def test_onnx_runtime_runs_on_cuda_with_io_binding_and_matches_the_cpu(wide):
    model, gpu = runner_of(wide, 1, "cuda")
    _, cpu = runner_of(wide, 1, "cpu")
    assert gpu.device == "cuda:0" and gpu.describe()["providers"][0] == "CUDAExecutionProvider"
    rows = model.preprocessor.transform(request_columns(synthetic_transactions(256, seed=3)))
    np.testing.assert_allclose(
        gpu.predict(rows)["fraud_probability"], cpu.predict(rows)["fraud_probability"], atol=1e-4
    )


def test_an_fp16_variant_runs_on_the_gpu_and_keeps_its_accuracy(wide):
    report = quantize(wide, WIDE_MODEL_NAME, 1, "fp16", max_accuracy_drop=0.005)
    model, gpu = runner_of(wide, report["version"], "cuda")
    rows = model.preprocessor.transform(request_columns(synthetic_transactions(64, seed=4)))
    assert gpu.device == "cuda:0" and gpu.predict(rows)["fraud_probability"].shape == (64,)


def test_two_models_share_one_gpu_in_serve(ray_cluster, wide):
    """fraud v1 and fraud-wide v1, half a GPU each. Named versions: the fp16 test above adds a newer
    version of fraud-wide, which `latest: 1` would serve instead of v1."""
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the Ray cluster sees no GPU")
    args = {
        "repository": str(wide),
        "models": ["fraud", WIDE_MODEL_NAME],
        "versions": {"fraud": [1], WIDE_MODEL_NAME: [1]},
    }
    serve.run(build_app(args), name="gpu", route_prefix="/gpu")
    try:
        with httpx.Client(base_url=ray_cluster.http_url + "/gpu", timeout=60) as http:
            body = request_body(request_columns(synthetic_transactions(8, seed=5)))
            for model in ("fraud", WIDE_MODEL_NAME):
                metadata = http.get(f"/v2/models/{model}/versions/1").json()
                assert metadata["parameters"]["execution_provider"] == "CUDAExecutionProvider", metadata
                assert http.post(f"/v2/models/{model}/versions/1/infer", json=body).status_code == 200
    finally:
        serve.delete("gpu")


def test_pytorch_fp16_and_bf16_variants_run_on_cuda(wide):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA (the project installs the CPU build)")
    build_torch_copy(wide, WIDE_MODEL_NAME, "wide-torch")
    rows = (
        ModelRepository(wide)
        .version(WIDE_MODEL_NAME, 1)
        .preprocessor.transform(request_columns(synthetic_transactions(64, seed=4)))
    )
    for target, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        report = quantize(wide, "wide-torch", 1, target, max_accuracy_drop=0.005)
        assert report["measured_on"]["device"] == "cuda:0"
        version = ModelRepository(wide).version("wide-torch", report["version"])
        runner = load_runner(version.config, version.model_file, version.precision, gpus_given=1)
        assert runner.device == "cuda:0" and runner._dtype is dtype
        assert runner.predict(rows)["fraud_probability"].shape == (64,)
