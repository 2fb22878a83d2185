"""The request pipeline without Ray: the Gateway over the demo's real ONNX models in this process,
with in-process fakes for the experiment store, the drift monitor and the metrics sink."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.config import GraphArgs, TrafficSettings
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.errors import InvalidInput, ModelNotFound, Unavailable
from serve_app.gateway import Gateway
from serve_app.messages import Routing
from serve_app.predlog import read_table
from serve_app.protocol.dataplane import LocalEndpoint
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.grpc_codec import CONTENTS_FIELDS
from serve_app.protocol.grpc_service import InferenceService
from serve_app.protocol.messages import InferenceRequest
from serve_app.protocol.tensors import datatype_of
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.runtime.merging import QueueFull, RequestMerger

SPLIT = {"champion": 1, "challenger": 2, "challenger_weight": 0.5}


class Endpoint(LocalEndpoint):
    """A real model version in this process that can be made to fail, shed, or merge before its call."""

    def __init__(self, version, merge_calls: int | None = None):
        super().__init__(version, load_runner(version.config, version.model_file))
        self.failure: Exception | None = None
        self.calls = 0
        if merge_calls is not None:
            self.merger = RequestMerger(self._call, self.max_batch_size, merge_calls)

    async def infer(self, inputs):
        return await (self.merger.infer(inputs) if self.merger else self._call(inputs))

    async def _call(self, inputs):
        self.calls += 1
        await asyncio.sleep(0.01)  # a call in flight, as a hop to a replica would be
        if self.failure is not None:
            raise self.failure
        return self.predict(inputs)

    async def batch_stats(self):
        return {"max_batch_size": 8}


class Experiments:
    def __init__(self, traffic: dict):
        self.events: list[dict] = []
        self.decided = traffic
        self.refuse = False

    async def record(self, events):
        if self.refuse:
            raise ConnectionError("the store is restarting")
        self.events.extend(events)

    async def traffic(self):
        return {model: Routing(traffic, salt=f"secret-of-{model}") for model, traffic in self.decided.items()}

    async def summary(self, model):
        return {"model": model, "events": len(self.events)}


class Drift:
    def __init__(self):
        self.batches: list[dict] = []

    async def observe(self, batches):
        self.batches.extend(batches)

    async def report(self, model):
        return {"versions": {"1": {"rows": sum(b.rows for b in self.batches)}}}


class Metrics:
    def __init__(self):
        self.requests: list[tuple] = []
        self.shed_models: list[str] = []
        self.shadows: list[tuple] = []
        self.flushes = 0

    def request(self, model, version, arm, latency_ms, ok):
        self.requests.append((model, version, arm, ok))

    def shed(self, model):
        self.shed_models.append(model)

    def shadow(self, model, version, ok, compared=0, disagreed=0):
        self.shadows.append((model, version, ok, compared))

    def log(self, stats):
        pass

    def flush(self):
        self.flushes += 1


@pytest.fixture
def parts(demo_repository, tmp_path):
    settings = GraphArgs(repository=str(demo_repository), storage_uri=str(tmp_path / "storage"), drift={"fraud": {}})
    endpoints = [Endpoint(v) for v in ModelRepository(demo_repository).check() if v.name == "fraud"]
    return settings, endpoints


def _gateway(parts, traffic=SPLIT, **kwargs) -> tuple[Gateway, Experiments, Drift, Metrics]:
    settings, endpoints = parts
    experiments, drift, metrics = Experiments({"fraud": traffic}), Drift(), Metrics()
    gateway = Gateway(settings, endpoints, metrics, experiments, {"fraud": traffic}, drift, **kwargs)
    return gateway, experiments, drift, metrics


def _request(rows: int = 1, seed: int = 3, **fields) -> InferenceRequest:
    return InferenceRequest(inputs=request_columns(synthetic_transactions(rows, seed=seed)), **fields)


def test_a_request_is_routed_answered_recorded_and_fed_to_drift(parts, tmp_path):
    async def run():
        gateway, experiments, drift, metrics = _gateway(parts)
        answers = [await gateway.serve("fraud", None, _request(seed=i), None) for i in range(40)]
        arms = {a.parameters["arm"] for a in answers}
        assert arms == {"champion", "challenger"}
        assert all(a.model_version == ("1" if a.parameters["arm"] == "champion" else "2") for a in answers)
        assert len(metrics.requests) == 40 and all(ok for *_, ok in metrics.requests)
        await gateway.sync_with_experiments()
        assert [e.request_id for e in experiments.events] == [a.id for a in answers]
        await gateway.ship_drift_rows()
        assert sum(b.rows for b in drift.batches) == 40
        assert {b.version for b in drift.batches} == {1, 2}
        await gateway.flush_log()
        return answers

    answers = asyncio.run(run())
    logged = read_table(str(tmp_path / "storage"), "predictions", "fraud").to_pylist()
    assert sorted(row["request_id"] for row in logged) == sorted(a.id for a in answers)


def test_events_the_store_refuses_wait_and_are_delivered_once(parts):
    async def run():
        gateway, experiments, _, _ = _gateway(parts)
        experiments.refuse = True
        for i in range(5):
            await gateway.serve("fraud", None, _request(seed=i), None)
        with pytest.raises(ConnectionError):
            await gateway.sync_with_experiments()
        assert gateway.traffic.pending_events == 5
        experiments.refuse = False
        await gateway.sync_with_experiments()
        await gateway.sync_with_experiments()
        assert len(experiments.events) == 5 and len({e.request_id for e in experiments.events}) == 5

    asyncio.run(run())


def test_the_stores_traffic_decision_takes_over(parts):
    async def run():
        gateway, experiments, _, _ = _gateway(parts)
        assert gateway.traffic.policies["fraud"].salt == "fraud"  # until the store has answered
        experiments.decided = {"fraud": {"champion": 2}}  # promoted
        await gateway.sync_with_experiments()
        assert gateway.traffic.policies["fraud"].salt == "secret-of-fraud"
        answers = [await gateway.serve("fraud", None, _request(seed=i), None) for i in range(10)]
        assert {(a.model_version, a.parameters["arm"]) for a in answers} == {("2", "champion")}

    asyncio.run(run())


def test_a_router_keeps_its_traffic_when_the_store_names_a_version_it_does_not_serve(parts):
    """A router of the graph before a load, still answering while the new graph's routers take
    over, hears of the loaded version from the store first: it routes on with what it serves."""

    async def run():
        gateway, experiments, _, _ = _gateway(parts)
        experiments.decided = {"fraud": {"champion": 1, "challenger": 9, "challenger_weight": 0.5}}
        await gateway.sync_with_experiments()
        assert gateway.traffic.traffic["fraud"] == TrafficSettings.model_validate(SPLIT)
        answers = [await gateway.serve("fraud", None, _request(seed=i), None) for i in range(20)]
        assert {a.model_version for a in answers} <= {"1", "2"}  # no request went to version 9

    asyncio.run(run())


def test_shadows_are_answered_apart_and_never_change_the_clients_answer(parts):
    async def run():
        traffic = {"champion": 2, "shadows": [1], "shadow_fraction": 1.0}
        gateway, _, _, metrics = _gateway(parts, traffic)
        answer = await gateway.serve("fraud", None, _request(rows=3), None)
        assert (answer.model_version, answer.parameters["arm"]) == ("2", "champion")
        gateway.shadows.send()
        await asyncio.gather(*gateway.shadows.calls)
        assert metrics.shadows == [("fraud", 1, True, 3)]  # each of the 3 rows compared
        assert gateway.stats.snapshot()["fraud"]["shadows"][0]["compared"] == 3
        shadow_endpoint = gateway.dataplane.endpoint("fraud", "1")
        shadow_endpoint.failure = RuntimeError("the shadow broke")
        again = await gateway.serve("fraud", None, _request(rows=2), None)
        gateway.shadows.send()
        await asyncio.gather(*gateway.shadows.calls)
        assert again.outputs["fraud_probability"].shape == (2,)
        assert gateway.traffic.shadow_failures == 1 and metrics.shadows[-1] == ("fraud", 1, False, 0)
        assert gateway.stats.snapshot()["fraud"]["shadows"]

    asyncio.run(run())


def test_a_failing_model_is_counted_a_clients_mistake_is_not_and_overload_is_shed(parts):
    async def run():
        gateway, _, _, metrics = _gateway(parts, {"champion": 1})
        endpoint = gateway.dataplane.endpoint("fraud", "1")
        endpoint.failure = RuntimeError("onnx failed")
        with pytest.raises(RuntimeError):
            await gateway.serve("fraud", None, _request(), None)
        assert metrics.requests[-1] == ("fraud", 1, "champion", False)
        endpoint.failure = QueueFull("200 requests are already waiting")
        with pytest.raises(Unavailable, match="overloaded"):
            await gateway.serve("fraud", None, _request(), None)
        assert metrics.shed_models == ["fraud"]
        endpoint.failure = None
        bad = _request()
        bad.inputs.pop("amount")
        with pytest.raises(InvalidInput, match="amount"):
            await gateway.serve("fraud", None, bad, None)
        assert len(metrics.requests) == 1  # refused before the model: nothing to count
        with pytest.raises(ModelNotFound):
            await gateway.serve("nope", None, _request(), None)

    asyncio.run(run())


def test_concurrent_requests_merge_before_the_hop_each_with_its_own_answer(demo_repository, tmp_path):
    versions = [v for v in ModelRepository(demo_repository).check() if v.name == "fraud"]
    settings = GraphArgs(repository=str(demo_repository))

    async def run():
        endpoints = [Endpoint(v, merge_calls=1) for v in versions]
        gateway = Gateway(settings, endpoints, Metrics())
        requests = [_request(rows=1 + i % 3, seed=i) for i in range(24)]
        answers = await asyncio.gather(*(gateway.serve("fraud", "2", r, None) for r in requests))
        alone = [endpoints[1].predict(r.inputs)["fraud_probability"] for r in requests]
        for answer, expected in zip(answers, alone):
            np.testing.assert_allclose(answer.outputs["fraud_probability"], expected, rtol=1e-5)
        merging = gateway.health()["merging"]["fraud-v2"]
        assert merging["requests"] == 24 and merging["calls"] < 24 and endpoints[1].calls == merging["calls"]
        await gateway.sync_merge_sizes()
        assert endpoints[1].merger.max_rows == 8

    asyncio.run(run())


def test_close_writes_the_log_and_delivers_the_last_events(parts, tmp_path):
    async def run():
        gateway, experiments, drift, metrics = _gateway(parts)
        await gateway.start()
        answer = await gateway.serve("fraud", None, _request(), None)
        await gateway.close()
        assert [e.request_id for e in experiments.events] == [answer.id]
        assert sum(b.rows for b in drift.batches) == 1 and metrics.flushes >= 1
        assert all(loop.cancelled() or loop.done() for loop in gateway._loops)
        return answer

    answer = asyncio.run(run())
    assert read_table(str(tmp_path / "storage"), "predictions", "fraud").column("request_id").to_pylist() == [answer.id]


def test_status_questions_answer_without_the_parts_that_do_not(parts):
    async def run():
        gateway, _, _, _ = _gateway(parts)
        await gateway.serve("fraud", None, _request(), None)
        data = await gateway.status_page_data()
        fraud = data["models"]["fraud"]
        assert fraud["experiment"] == {"model": "fraud", "events": 0}
        assert fraud["batching"] == {"1": {"max_batch_size": 8}, "2": {"max_batch_size": 8}}
        assert {s["arm"] for s in fraud["traffic"]} == {"champion", "challenger"}
        assert (await gateway.drift_report("fraud"))["versions"]
        assert (await gateway.metadata("fraud", None))["versions"] == ["1", "2"]  # describe() said nothing
        assert gateway.health()["status"] == "ok"
        with pytest.raises(ModelNotFound, match="not served"):
            gateway.experiment_store("nope")
        plain = Gateway(parts[0], parts[1], Metrics())
        with pytest.raises(ModelNotFound, match="no experiment"):
            plain.experiment_store("fraud")
        with pytest.raises(ModelNotFound, match="no drift monitoring"):
            await plain.drift_report("fraud")

    asyncio.run(run())


def request_to_proto(model: str, inputs: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        tensor = message.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        getattr(tensor.contents, CONTENTS_FIELDS[tensor.datatype]).extend(array.tolist())
    return message


class Context:
    def __init__(self, metadata=()):
        self.metadata, self.code, self.details = list(metadata), None, None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def test_grpc_answers_through_the_gateway_and_errors_become_status_codes(parts):
    async def run():
        gateway, _, _, _ = _gateway(parts)
        service = InferenceService(gateway, lambda error: getattr(error, "http_status", None) and error)
        request = request_to_proto("fraud", _request(rows=2).inputs)
        response = await service.model_infer(request, Context([("x-routing-key", "user-1")]))
        assert response.model_name == "fraud" and list(response.outputs[0].shape) == [2]
        context = Context()
        missing = await service.model_infer(request_to_proto("nope", _request().inputs), context)
        assert missing == pb.ModelInferResponse() and context.code.name == "NOT_FOUND" and "nope" in context.details
        assert (await service.model_ready(pb.ModelReadyRequest(name="nope"))).ready is False

    asyncio.run(run())
