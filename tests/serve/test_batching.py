"""Dynamic batching really forms batches, told by the replica's own record; knobs change live."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import numpy as np
import pytest
from ray import serve

from serve_app.demo import request_columns, synthetic_transactions
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.raw import tensor_to_raw
from serve_app.protocol.rest import request_body
from serve_app.runtime.batching import IdleGate
from tests.conftest import APP_NAME
from tests.helpers import binary_body, serve_deploy


async def _concurrent_requests(base_url: str, count: int, prefix: str = "") -> list[int]:
    body = request_body(request_columns(synthetic_transactions(1, seed=31)))
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        posts = (client.post(f"{prefix}/v2/models/fraud/versions/2/infer", json=body) for _ in range(count))
        responses = await asyncio.gather(*posts)
    return [r.status_code for r in responses]


def _largest_batch_during_burst(handle, base_url: str, count: int, prefix: str) -> int:
    """Requests in the largest batch the replica formed while `count` requests came at once."""
    before = handle.batch_stats.remote().result()["requests_per_batch"]
    assert asyncio.run(_concurrent_requests(base_url, count, prefix)) == [200] * count
    after = handle.batch_stats.remote().result()["requests_per_batch"]
    return max(int(size) for size, n in after.items() if n > before.get(size, 0))


def test_concurrent_requests_go_through_the_merger_and_the_replicas_batcher(served, client):
    """The router's merger, then the model replica's batcher: every row scored once, every call counted."""
    handle = serve.get_deployment_handle("fraud-v2-model", app_name=APP_NAME)
    before = handle.batch_stats.remote().result()
    health = client.get("/health")
    assert "merging" in health.json(), health.text
    merged_before = health.json()["merging"]["fraud-v2"]
    statuses = asyncio.run(_concurrent_requests(served, 96))
    assert statuses == [200] * 96
    after = handle.batch_stats.remote().result()
    merged = client.get("/health").json()["merging"]["fraud-v2"]
    assert after["inference_count"] - before["inference_count"] == 96  # one row each
    # Every request went through the router's merger (one router replica in this app), and the replica
    # received exactly the calls the router made, batched or not. How many were merged depends on how
    # fast they arrive, not asserted here: tests/unit/test_merging.py holds the call open to see it.
    assert merged["requests"] - merged_before["requests"] == 96
    calls = merged["calls"] - merged_before["calls"]
    assert after["request_count"] - before["request_count"] == calls <= 96
    assert after["execution_count"] - before["execution_count"] <= calls


def test_the_model_replica_preprocesses_and_matches_http(served, client):
    """preprocessing: in_model (the default): raw columns go to the model replica, no hop between."""
    columns = request_columns(synthetic_transactions(5, seed=32))
    model = serve.get_deployment_handle("fraud-v1-model", app_name=APP_NAME)
    assert "fraud-v1-preprocessor" not in serve.status().applications[APP_NAME].deployments
    scores = model.predict.remote(columns).result()["fraud_probability"]
    assert scores.shape == (5,) and scores.dtype == np.float32
    over_http = client.post("/v2/models/fraud/versions/1/infer", json=request_body(columns)).json()
    np.testing.assert_allclose(over_http["outputs"][0]["data"], scores, rtol=1e-6)


def _deploy(cluster, root, config_path, **batching) -> None:
    """`serve deploy` a config whose user_config sets the batching knobs, and wait until they apply."""
    application = {
        "name": "tuning",
        "route_prefix": "/tuning",
        "import_path": "graphs.single_model:build_app",
        # The replica's own batcher is what this tests: the router sends each request alone.
        "args": {"repository": str(root), "models": ["fraud"], "merge_before_hop": False},
        "deployments": [{"name": "fraud-v2-model", "user_config": batching}],
    }

    def applied() -> bool:
        handle = serve.get_deployment_handle("fraud-v2-model", app_name="tuning")
        return handle.batch_stats.remote().result()["max_batch_size"] == batching["max_batch_size"]

    serve_deploy(cluster.dashboard_url, application, config_path, applied)


@pytest.mark.live_changes
def test_batching_knobs_change_live_through_serve_deploy(ray_cluster, demo_repository, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(demo_repository, root)
    path = root / "fraud" / "config.yaml"
    path.write_text(path.read_text().replace("latest: 2", "specific: [2]"))
    try:
        _deploy(ray_cluster, root, tmp_path / "tuning.yaml", max_batch_size=4, batch_wait_timeout_s=0.05)
        handle = serve.get_deployment_handle("fraud-v2-model", app_name="tuning")
        pid = handle.describe.remote().result()["pid"]
        assert 1 < _largest_batch_during_burst(handle, ray_cluster.http_url, 32, "/tuning") <= 4
        _deploy(ray_cluster, root, tmp_path / "tuning.yaml", max_batch_size=16, batch_wait_timeout_s=0.05)
        assert _largest_batch_during_burst(handle, ray_cluster.http_url, 64, "/tuning") > 4
        assert handle.describe.remote().result()["pid"] == pid  # reconfigured in place, not restarted
    finally:
        serve.delete("tuning")


def test_a_request_that_fills_a_batch_runs_alone(served, client):
    handle = serve.get_deployment_handle("fraud-v2-model", app_name=APP_NAME)
    before = handle.batch_stats.remote().result()
    columns = request_columns(synthetic_transactions(40, seed=33))  # more rows than max_batch_size (32)
    response = client.post("/v2/models/fraud/versions/2/infer", json=request_body(columns))
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [40]
    after = handle.batch_stats.remote().result()
    assert after["inference_count"] - before["inference_count"] == 40
    assert after["execution_count"] - before["execution_count"] == 1


@serve.deployment(max_ongoing_requests=64)
class _SlowBatcher:
    """@serve.batch with no window over a 300 ms model call, behind IdleGate (as ModelDeployment) or not."""

    def __init__(self, gated: bool):
        self.gate = IdleGate() if gated else None
        self.batches: list[int] = []

    async def __call__(self, item: int) -> int:
        if self.gate is not None:
            await self.gate.wait()
        return await self._batch(item)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batch(self, items: list[int]) -> list[int]:
        self.batches.append(len(items))
        if self.gate is None:
            await asyncio.to_thread(time.sleep, 0.3)
        else:
            with self.gate.busy():
                await asyncio.to_thread(time.sleep, 0.3)
        return items

    def batches_formed(self) -> list[int]:
        return self.batches


def _batches_when_requests_arrive_while_busy(gated: bool) -> list[int]:
    handle = serve.run(_SlowBatcher.bind(gated), name="gate-probe", route_prefix=None)
    try:
        assert handle.remote(-1).result() == -1  # the handle knows its replica: no first-call delay below
        first = handle.remote(0)
        time.sleep(0.1)  # the first call runs alone, for 300 ms
        later = []
        for item in range(1, 9):  # eight more arrive one by one while it runs
            later.append(handle.remote(item))
            time.sleep(0.01)
        assert [r.result() for r in [first, *later]] == list(range(9))
        return handle.batches_formed.remote().result()[1:]
    finally:
        serve.delete("gate-probe")


def test_requests_arriving_while_the_model_runs_join_one_batch(ray_cluster):
    """With no batching window, IdleGate still batches: what queued during a model call goes in the
    next call together (Triton's dynamic batcher). Serve's @serve.batch alone closes a batch at once
    for every arrival, and those small batches wait in line behind the running one."""
    assert _batches_when_requests_arrive_while_busy(gated=True) == [1, 8]
    ungated = _batches_when_requests_arrive_while_busy(gated=False)
    assert len(ungated) > 2 and sum(ungated) == 9


async def _burst_with_one_bad_row(base_url: str, count: int, bad: int) -> list[tuple[int, dict]]:
    columns = request_columns(synthetic_transactions(1, seed=34))
    good = binary_body(columns)
    columns["amount"] = np.array([np.nan], dtype=np.float32)  # the router passes it; the model refuses it
    nan = binary_body(columns)

    def post(client, body: tuple[bytes, int]):
        headers = {"Inference-Header-Content-Length": str(body[1])}
        return client.post("/v2/models/fraud/versions/2/infer", content=body[0], headers=headers)

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        responses = await asyncio.gather(*(post(client, nan if i == bad else good) for i in range(count)))
    return [(r.status_code, r.json()) for r in responses]


def test_a_bad_request_in_a_burst_fails_alone(served, client):
    """Merged or not, the request with a NaN gets its 422 naming the feature and the others their 200s."""
    before = client.get("/health").json()["merging"]["fraud-v2"]
    answers = asyncio.run(_burst_with_one_bad_row(served, 48, bad=20))
    assert answers[20][0] == 422 and "amount" in answers[20][1]["error"]
    assert [status for i, (status, _) in enumerate(answers) if i != 20] == [200] * 47
    after = client.get("/health").json()["merging"]["fraud-v2"]
    assert after["requests"] - before["requests"] == 48  # every one through the merger


def test_grpc_requests_go_through_the_merger_each_with_its_own_answer(served, client, stub):
    """gRPC's ModelInfer takes the same path as HTTP: merged before the hop, split back per request."""
    rng = np.random.default_rng(41)
    matrices = [rng.normal(size=(1 + i % 3, 256)).astype(np.float32) for i in range(24)]
    before = client.get("/health").json()["merging"]["dense-v1"]
    futures = []
    for i, matrix in enumerate(matrices):
        message = pb.ModelInferRequest(model_name="dense", id=f"g-{i}")
        message.inputs.add(name="INPUT", datatype="FP32", shape=list(matrix.shape))
        message.raw_input_contents.append(tensor_to_raw(matrix))
        futures.append(stub.ModelInfer.future(message, timeout=60))
    answers = [future.result() for future in futures]
    after = client.get("/health").json()["merging"]["dense-v1"]
    assert after["requests"] - before["requests"] == len(matrices)
    for i, (matrix, answer) in enumerate(zip(matrices, answers)):
        assert answer.id == f"g-{i}" and list(answer.outputs[0].shape) == [len(matrix), 64]
        scores = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(len(matrix), 64)
        alone = client.post("/v2/models/dense/infer", json=request_body({"INPUT": matrix})).json()
        np.testing.assert_allclose(
            scores, np.array(alone["outputs"][0]["data"], np.float32).reshape(scores.shape), rtol=1e-5, atol=1e-6
        )
