"""configs/local.yaml's layout in a running graph: its models run inside the routers' own processes
(in_router), two routers, no model deployments. An app of its own beside the session's graph, which
runs every model on replicas (production.yaml's layout)."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import numpy as np
import pytest
import yaml
from ray import serve

from graphs.champion_challenger import build_app
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.predlog import PREDICTIONS, read_table
from serve_app.protocol.dataplane import LocalEndpoint
from serve_app.protocol.http import HEADER_LENGTH
from serve_app.protocol.rest import request_body
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from tests.conftest import LOCAL_CONFIG
from tests.helpers import binary_body, wait_until
from tests.reliability.harness import Load, app_processes

APP = "in-router"
PREFIX = "/in-router"
BURST = 48
WAIT_S = 60
MAX_ERROR_RATE = 0.01


@pytest.fixture(scope="module")
def app(ray_cluster, demo_repository, tmp_path_factory):
    args = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]["args"]
    storage = tmp_path_factory.mktemp("in-router-storage")
    args.update(repository=str(demo_repository), storage_uri=str(storage))
    assert args["in_router"] and args["num_replicas_ingress"] == 2  # what this module is about
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield {"url": ray_cluster.http_url + PREFIX, "storage": str(storage)}
    serve.delete(APP)


@pytest.fixture(scope="module")
def reference(demo_repository):
    repo = ModelRepository(demo_repository)
    return {v.version: LocalEndpoint(v, load_runner(v.config, v.model_file)) for v in repo.served_versions("fraud")}


async def _burst(url: str, bodies: list[dict | tuple[bytes, int]]) -> list[httpx.Response]:
    """Every body at once; a (bytes, header length) body goes as Triton's binary extension."""
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        def post(body):
            if isinstance(body, dict):
                return client.post("/v2/models/fraud/infer", json=body)
            content, header_length = body
            return client.post("/v2/models/fraud/infer", content=content, headers={HEADER_LENGTH: str(header_length)})

        return await asyncio.gather(*(post(body) for body in bodies))


def _bodies(prefix: str, count: int = BURST) -> list[tuple[dict, dict]]:
    columns = [request_columns(synthetic_transactions(1, seed=seed)) for seed in range(count)]
    return [(c, {**request_body(c), "id": f"{prefix}-{i}"}) for i, c in enumerate(columns)]


def test_no_model_deployments_only_the_routers_and_the_shared_parts(app):
    deployments = serve.status().applications[APP].deployments
    assert set(deployments) == {"Router", "experiments", "drift-monitor"}
    metadata = httpx.get(f"{app['url']}/v2/models/fraud").json()
    assert metadata["parameters"]["execution_provider"] == "CPUExecutionProvider"


def test_a_burst_is_answered_row_for_row_as_the_model_in_process(app, reference):
    requests = _bodies("burst")
    responses = asyncio.run(_burst(app["url"], [body for _, body in requests]))
    assert [r.status_code for r in responses] == [200] * BURST, [r.text for r in responses if r.status_code != 200]
    for (columns, body), response in zip(requests, responses):
        answer = response.json()
        assert answer["id"] == body["id"]
        expected = reference[int(answer["model_version"])].predict(columns)["fraud_probability"]
        np.testing.assert_allclose(answer["outputs"][0]["data"], expected, rtol=1e-5)


def test_requests_that_arrive_together_share_a_model_call(app):
    """How many merge depends on timing, so bursts go until a router reports a merged call."""

    def merged() -> bool:
        asyncio.run(_burst(app["url"], [body for _, body in _bodies("merge")]))
        merging = [httpx.get(f"{app['url']}/health").json()["merging"] for _ in range(4)]  # both routers
        return any(m[version]["largest"] > 1 for m in merging for version in m if version.startswith("fraud-"))

    assert wait_until(merged, WAIT_S)


def test_a_bad_request_in_a_burst_fails_alone(app):
    """A NaN amount (binary tensors carry it; JSON cannot) passes the protocol and fails in the
    preprocessor, inside whichever model call it joined."""
    bodies: list = [body for _, body in _bodies("bad", 24)]
    columns = request_columns(synthetic_transactions(1, seed=99))
    columns["amount"][0] = np.nan
    bodies[7] = binary_body(columns, id="bad-nan")
    responses = asyncio.run(_burst(app["url"], bodies))
    assert responses[7].status_code == 422 and "'amount'" in responses[7].json()["error"]
    assert [r.status_code for i, r in enumerate(responses) if i != 7] == [200] * 23


def test_every_answer_is_in_the_prediction_log(app):
    requests = _bodies("logged", 16)
    responses = asyncio.run(_burst(app["url"], [body for _, body in requests]))
    assert [r.status_code for r in responses] == [200] * 16
    expected = {body["id"] for _, body in requests}

    def logged() -> bool:
        table = read_table(app["storage"], PREDICTIONS, "fraud").to_pandas()
        return expected <= set(table["request_id"])

    assert wait_until(logged, WAIT_S)


def test_one_of_two_routers_killed_under_load_costs_at_most_one_percent(app, reliability):
    """HAProxy sends a request that finds the dead router's port closed to the other one; only the
    requests the killed router held fail. Load runs on until enough answers came after the kill."""
    row = reliability("Faults", "one of local.yaml's two Routers (models inside) SIGKILLed under 16 clients")

    def routers() -> list[int]:
        return [pid for name, pid in app_processes(APP).items() if "#Router#" in name]

    killed = routers()[0]
    with Load(app["url"], 16, prefix="kill-in-router") as load:
        assert wait_until(lambda: len(load.answered) >= 200, WAIT_S)
        os.kill(killed, signal.SIGKILL)
        answered_at_kill = len(load.answered)
        assert wait_until(lambda: len(load.answered) >= answered_at_kill + 2000, 4 * WAIT_S)
        assert wait_until(lambda: len(routers()) == 2 and killed not in routers(), 4 * WAIT_S)
    failed = load.failures()
    row.measured["client errors"] = f"{len(failed)} of {len(load.answers):,}"
    assert len(failed) <= MAX_ERROR_RATE * len(load.answers), load.summary()
