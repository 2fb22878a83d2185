"""A model version in the router's own process (serve_app/runtime/in_process.py), over the demo's
real fraud model: the same answers as the reference, requests that arrive while a call runs merged
into the next, a bad request failing alone, a full queue shed. No Ray; no clock: every request is
queued before the first call's thread can report back (asyncio runs ready tasks first)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import yaml

from graphs.single_model import build_app
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.errors import RepositoryError, UnprocessableInput
from serve_app.protocol.dataplane import LocalEndpoint
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.runtime.in_process import InProcessEndpoint
from serve_app.runtime.merging import QueueFull


@pytest.fixture(scope="module")
def fraud(demo_repository):
    version = ModelRepository(demo_repository).version("fraud", 1)
    return version, load_runner(version.config, version.model_file)


def requests(count: int) -> list[dict[str, np.ndarray]]:
    return [request_columns(synthetic_transactions(1, seed=seed)) for seed in range(count)]


async def all_at_once(endpoint: InProcessEndpoint, inputs: list[dict]) -> list:
    return await asyncio.gather(*(endpoint.infer(i) for i in inputs), return_exceptions=True)


def test_requests_arriving_during_a_call_share_the_next_and_answer_as_the_reference(fraud):
    version, runner = fraud
    endpoint = InProcessEndpoint(version, runner)
    inputs = requests(20)
    answers = asyncio.run(all_at_once(endpoint, inputs))
    reference = LocalEndpoint(version, runner)
    for request, answer in zip(inputs, answers):
        expected = reference.predict(request)
        assert set(answer) == set(expected)
        for name in expected:
            np.testing.assert_allclose(answer[name], expected[name], rtol=1e-6)
    stats = asyncio.run(endpoint.batch_stats())
    # The first request found the model idle and went alone; the other 19 queued behind it, one call.
    assert stats["requests_per_batch"] == {"1": 1, "19": 1}
    assert (stats["inference_count"], stats["request_count"], stats["execution_count"]) == (20, 20, 2)
    assert stats["max_batch_size"] == version.config.dynamic_batching.max_batch_size


def test_a_merged_call_is_cut_at_the_dynamic_batch_size(fraud):
    version, runner = fraud
    endpoint = InProcessEndpoint(version, runner)
    endpoint.merger.max_rows = 8
    asyncio.run(all_at_once(endpoint, requests(20)))
    assert asyncio.run(endpoint.batch_stats())["requests_per_batch"] == {"1": 1, "3": 1, "8": 2}


def test_a_bad_request_fails_alone_and_the_others_are_answered(fraud):
    version, runner = fraud
    endpoint = InProcessEndpoint(version, runner)
    inputs = requests(6)
    inputs[3]["amount"][0] = np.nan  # the preprocessor refuses it, in the merged call
    answers = asyncio.run(all_at_once(endpoint, inputs))
    assert isinstance(answers[3], UnprocessableInput) and "'amount' has a missing, NaN" in str(answers[3])
    assert all(isinstance(a, dict) for i, a in enumerate(answers) if i != 3)
    assert endpoint.merger.stats.retried_singly == 5  # the call it joined, again one request at a time


def test_a_full_queue_sheds_at_once(fraud):
    version, runner = fraud
    endpoint = InProcessEndpoint(version, runner, max_queued=2)
    answers = asyncio.run(all_at_once(endpoint, requests(5)))
    assert [type(a).__name__ for a in answers] == ["dict", "dict", "dict", "QueueFull", "QueueFull"]
    assert isinstance(answers[3], QueueFull)


def test_without_merging_each_request_is_a_call_of_its_own(fraud):
    version, runner = fraud
    endpoint = InProcessEndpoint(version, runner, merge=False)
    answers = asyncio.run(all_at_once(endpoint, requests(5)))
    assert all(isinstance(a, dict) for a in answers)
    stats = asyncio.run(endpoint.batch_stats())
    assert stats["requests_per_batch"] == {"1": 5} and stats["execution_count"] == 5


def _args(demo_repository, in_router: list[str]) -> dict:
    return {
        "repository": str(demo_repository),
        "models": ["fraud"],
        "in_router": in_router,
    }


def test_in_router_must_name_a_model_of_the_repository(demo_repository):
    with pytest.raises(RepositoryError, match=r"in_router: models \['dnse'\] are not in the repository"):
        build_app(_args(demo_repository, ["dnse"]))
    build_app(_args(demo_repository, ["dense"]))  # in the repository, not served (unloaded, say): fine


def test_a_model_that_asks_for_a_gpu_cannot_run_in_the_router(fraud_repository):
    path = fraud_repository / "fraud" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["instances"]["num_gpus"] = 0.5
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(RepositoryError, match=r"asks for a GPU .* cannot run in the router"):
        build_app(_args(fraud_repository, ["fraud"]))
