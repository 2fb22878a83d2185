"""A replica runs where Ray placed it: a GPU reserved by the Serve config (config.yaml says
num_gpus: 0) is the replica's GPU; CUDA demanded without one fails the deploy, naming the model.

The session's cluster has one logical GPU (tests/conftest.py); on a machine without one, the
replica given it finds no usable device and says so in one warning line, then serves on the CPU."""

from __future__ import annotations

import shutil

import httpx
import pytest
from ray import serve

from serve_app.demo import request_columns, synthetic_transactions
from serve_app.protocol.rest import request_body
from serve_app.runtime.devices import cuda_device_count
from tests.helpers import replica_log_lines, serve_deploy

APP = "placement"


@pytest.fixture
def repository(demo_repository, tmp_path):
    root = tmp_path / "repository"
    shutil.copytree(demo_repository / "fraud", root / "fraud")
    return root


def application(root, **deployment) -> dict:
    return {
        "name": APP,
        "route_prefix": f"/{APP}",
        "import_path": "graphs.single_model:build_app",
        "args": {"repository": str(root), "models": ["fraud"], "versions": {"fraud": [1]}},
        "deployments": [{"name": "fraud-v1-model", **deployment}],
    }


def test_a_gpu_reserved_by_the_serve_config_is_the_replicas(ray_cluster, repository, tmp_path):
    assert "num_gpus: 0" in (repository / "fraud" / "config.yaml").read_text()
    override = {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0.5}}
    try:
        serve_deploy(ray_cluster.dashboard_url, application(repository, **override), tmp_path / "c.yaml", lambda: True)
        described = serve.get_deployment_handle("fraud-v1-model", app_name=APP).describe.remote().result()
        assert described["gpu_ids"] == ["0"]  # Ray gave it the GPU the Serve config reserved
        assert described["placed_on"] == "cuda"  # and the runner was told of it
        body = request_body(request_columns(synthetic_transactions(3, seed=5)))
        answer = httpx.post(f"{ray_cluster.http_url}/{APP}/v2/models/fraud/infer", json=body, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["outputs"][0]["data"]) == 3
        if cuda_device_count() == 0:
            assert described["device"] == "cpu" and described["providers"] == ["CPUExecutionProvider"]
            log = "\n".join(replica_log_lines(APP, "fraud-v1-model"))
            assert "model fraud: given a GPU, but the CUDA driver reports no usable device" in log
            assert "model fraud: ONNX Runtime providers ['CPUExecutionProvider']" in log
        else:
            assert described["device"] == "cuda:0" and described["providers"][0] == "CUDAExecutionProvider"
    finally:
        serve.delete(APP)


def test_cuda_demanded_without_a_gpu_fails_the_deploy_naming_the_model(ray_cluster, repository, tmp_path):
    config = repository / "fraud" / "config.yaml"
    assert "runtime:" not in config.read_text()
    config.write_text(config.read_text() + "runtime:\n  device: cuda\n")
    try:
        with pytest.raises(RuntimeError) as failed:
            serve_deploy(ray_cluster.dashboard_url, application(repository), tmp_path / "c.yaml", lambda: True)
        message = str(failed.value).replace("\\'", "'")  # Serve's status quotes the replica's error
        assert "model 'fraud': runtime.device is 'cuda' but this replica was given no GPU" in message
    finally:
        serve.delete(APP)
