"""A quantised version served like any other: an ONNX INT8 challenger at 50% with the fp32 v2 as a
shadow, and a PyTorch model whose INT8 variant challenges its fp32 source."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from ray import serve

from graphs.champion_challenger import build_app
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.large_models import build_torch_copy
from serve_app.predlog import PREDICTIONS, read_table
from serve_app.protocol.rest import request_body
from serve_app.quantize import quantize

APP = "quantized"
PREFIX = "/quantized"


@pytest.fixture(scope="module")
def app(ray_cluster, demo_repository, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized") / "repository"
    shutil.copytree(demo_repository / "fraud", root / "fraud")
    version = quantize(root, "fraud", 2, "int8-dynamic")["version"]
    build_torch_copy(root, "fraud", "fraud-torch")
    torch_int8 = quantize(root, "fraud-torch", 1, "int8-dynamic")["version"]
    config = (root / "fraud-torch" / "config.yaml").read_text()
    (root / "fraud-torch" / "config.yaml").write_text(config.replace("latest: 1", "latest: 2"))
    storage = tmp_path_factory.mktemp("quantized-storage")
    traffic = {"champion": 1, "challenger": version, "challenger_weight": 0.5, "shadows": [2], "shadow_fraction": 1.0}
    torch_traffic = {"champion": 1, "challenger": torch_int8, "challenger_weight": 0.5}
    args = {
        "repository": str(root),
        "storage_uri": str(storage),
        "models": ["fraud", "fraud-torch"],
        "experiments": {"fraud": {"traffic": traffic}, "fraud-torch": {"traffic": torch_traffic}},
    }
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield {"url": ray_cluster.http_url + PREFIX, "version": version, "storage": storage}
    serve.delete(APP)


def test_an_int8_challenger_answers_and_an_fp32_shadow_is_compared(app):
    version = str(app["version"])
    with httpx.Client(base_url=app["url"], timeout=30) as http:
        metadata = http.get(f"/v2/models/fraud/versions/{version}").json()
        on_cpu = {"device": "cpu", "execution_provider": "CPUExecutionProvider"}
        assert metadata["parameters"] == {"precision": "int8", **on_cpu}
        assert http.get("/v2/models/fraud/versions/1").json()["parameters"] == {"precision": "fp32", **on_cpu}
        answered = set()
        for n in range(30):
            body = request_body(request_columns(synthetic_transactions(1, seed=70 + n)), f"q-{n}")
            response = http.post("/v2/models/fraud/infer", json=body)
            assert response.status_code == 200, response.text
            answered.add(response.headers["x-model-version"])
    assert answered == {"1", version}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = read_table(str(app["storage"]), PREDICTIONS, "fraud").to_pandas()
        if (log["role"] == "shadow").sum() >= 30:
            break
        time.sleep(0.5)
    assert set(log.loc[log["role"] == "shadow", "version"]) == {2}
    assert set(log.loc[log["role"] == "challenger", "version"]) == {int(version)}


def test_a_pytorch_int8_challenger_runs_on_the_cpu_beside_its_fp32_source(app):
    with httpx.Client(base_url=app["url"], timeout=30) as http:
        on_cpu = {"device": "cpu", "execution_provider": "pytorch_libtorch"}
        assert http.get("/v2/models/fraud-torch/versions/2").json()["parameters"] == {"precision": "int8", **on_cpu}
        assert http.get("/v2/models/fraud-torch/versions/1").json()["parameters"] == {"precision": "fp32", **on_cpu}
        body = request_body(request_columns(synthetic_transactions(16, seed=71)))
        scores = {}
        for version in ("1", "2"):
            response = http.post(f"/v2/models/fraud-torch/versions/{version}/infer", json=body)
            assert response.status_code == 200, response.text
            scores[version] = response.json()["outputs"][0]["data"]
        answered = {http.post("/v2/models/fraud-torch/infer", json=body).headers["x-model-version"] for _ in range(20)}
    assert answered == {"1", "2"}
    difference = [abs(a - b) for a, b in zip(scores["1"], scores["2"])]
    assert 0 < max(difference) < 0.05  # INT8 rounding of the same model
