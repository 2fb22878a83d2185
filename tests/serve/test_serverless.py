"""Serverless: a model deployment with Serve autoscaling from zero replicas (min_replicas: 0) runs
no replica while idle, comes back on the first request, which waits for it and is answered, and
goes back to zero when idle again. The cold start is printed (docs/operations.md, "Scale to zero")."""

from __future__ import annotations

import time

import httpx
import numpy as np
from ray import serve

from serve_app.demo import DENSE_IN
from tests.helpers import serve_deploy, wait_until

APP = "serverless"
MODEL_DEPLOYMENT = "dense-v1-model"
BODY = {
    "inputs": [
        {"name": "INPUT", "datatype": "FP32", "shape": [2, DENSE_IN], "data": np.linspace(-1, 1, 2 * DENSE_IN).tolist()}
    ]
}


def _running_replicas() -> int:
    deployment = serve.status().applications[APP].deployments[MODEL_DEPLOYMENT]
    return deployment.replica_states.get("RUNNING", 0)


def test_a_model_scales_to_zero_and_back_on_the_first_request(ray_cluster, demo_repository, tmp_path):
    autoscaling = {
        "min_replicas": 0,
        "initial_replicas": 0,
        "max_replicas": 1,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 0,
        "downscale_delay_s": 3,
    }
    application = {
        "name": APP,
        "route_prefix": f"/{APP}",
        "import_path": "graphs.single_model:build_app",
        "args": {"repository": str(demo_repository), "models": ["dense"]},
        "deployments": [{"name": MODEL_DEPLOYMENT, "autoscaling_config": autoscaling}],
    }
    url = f"{ray_cluster.http_url}/{APP}/v2/models/dense/infer"
    try:
        serve_deploy(ray_cluster.dashboard_url, application, tmp_path / "serverless.yaml", lambda: True)
        assert wait_until(lambda: _running_replicas() == 0, 30), "no model replica while idle"

        start = time.perf_counter()
        cold = httpx.post(url, json=BODY, timeout=120)
        cold_s = time.perf_counter() - start
        assert cold.status_code == 200, cold.text
        assert cold.json()["outputs"][0]["shape"] == [2, 64]
        assert _running_replicas() == 1

        start = time.perf_counter()
        warm = httpx.post(url, json=BODY, timeout=30)
        warm_s = time.perf_counter() - start
        assert warm.status_code == 200 and warm.json()["outputs"] == cold.json()["outputs"]
        print(f"scale from zero: first request {cold_s:.2f} s (cold start), the next {1000 * warm_s:.1f} ms")
        assert cold_s > warm_s

        assert wait_until(lambda: _running_replicas() == 0, 90), "back to zero replicas when idle"
    finally:
        serve.delete(APP)
