"""Triton's model configuration and statistics, in Triton's JSON form and as its gRPC messages:
the configuration of every demo model, and statistics counted, reported and summed."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import json_format

from serve_app.config import GraphArgs
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.protocol.dataplane import LocalEndpoint
from serve_app.protocol.extensions import TritonExtensions
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.model_config import triton_model_config
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.runtime.in_process import InProcessEndpoint
from serve_app.statistics import Duration, StatisticsBoard, StatisticsBoards, StatisticsRecorder, VersionStatistics
from serve_app.statistics.recorder import report_statistics


@pytest.fixture(scope="module")
def versions(demo_repository):
    return {(v.name, v.version): v for v in ModelRepository(demo_repository).check()}


def config_of(versions, name, version, **settings):
    model = versions[(name, version)]
    endpoint = LocalEndpoint(model, load_runner(model.config, model.model_file))
    args = GraphArgs(repository="unused", **settings)
    return triton_model_config(endpoint, model.config, args)


def test_fraud_is_configured_as_a_client_calls_it(versions):
    config = config_of(versions, "fraud", 2)
    assert (config["name"], config["platform"], config["backend"]) == ("fraud", "onnxruntime_onnx", "onnxruntime")
    assert config["max_batch_size"] == 256 and config["version_policy"] == {"latest": {"num_versions": 2}}
    inputs = {tensor["name"]: tensor for tensor in config["input"]}
    assert {"amount", "hour", "merchant_category", "country", "card_present"} <= set(inputs)  # raw, not `features`
    assert "features" not in inputs
    assert inputs["country"]["data_type"] == "TYPE_STRING" and inputs["amount"]["data_type"] == "TYPE_FP32"
    # One value per row: dims [1] without the batch dimension, reshaped to a column for the model.
    assert all(t["dims"] == [1] and t["reshape"] == {"shape": []} for t in inputs.values())
    [output] = config["output"]
    assert (output["name"], output["data_type"], output["dims"]) == ("fraud_probability", "TYPE_FP32", [])
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [32] and batching["default_queue_policy"]["max_queue_size"] == 200
    assert config["instance_group"][0] | {"name": ""} == {"name": "", "kind": "KIND_CPU", "count": 1, "gpus": []}
    in_router = config_of(versions, "fraud", 2, in_router=["fraud"], num_replicas_ingress=2)
    assert in_router["instance_group"][0]["count"] == 2  # the routers run it
    assert in_router["parameters"]["runs_in"] == {"string_value": "router"}


@pytest.mark.parametrize(
    ("model", "inputs", "outputs"),
    [
        ("dense", {"INPUT": [256]}, {"OUTPUT": [64]}),
        ("echo", {"INPUT_FP16": [-1], "INPUT_BYTES": [-1]}, {"OUTPUT_FP16": [-1], "OUTPUT_BYTES": [-1]}),
    ],
)
def test_model_tensors_lose_only_the_batch_dimension(versions, model, inputs, outputs):
    config = config_of(versions, model, 1)
    declared = {t["name"]: t["dims"] for t in config["input"]}
    assert {name: declared[name] for name in inputs} == inputs
    assert all("reshape" not in t for t in config["input"])
    answered = {t["name"]: t["dims"] for t in config["output"]}
    assert {name: answered[name] for name in outputs} == outputs


def test_every_demo_config_is_a_valid_triton_message(versions):
    for name, version in versions:
        message = json_format.ParseDict(config_of(versions, name, version), pb.ModelConfig())  # no unknown field
        assert message.name == name and message.max_batch_size > 0 and message.input
        assert message.version_policy.WhichOneof("policy_choice") in ("latest", "specific")


def test_counts_add_up_over_replicas_and_reports_are_idempotent():
    router, model = StatisticsRecorder("router"), StatisticsRecorder("model")
    for ok in (True, True, False):
        router.request("fraud", 1, rows=4, ok=ok, ns=1000)
    model.execution("fraud", 1, rows=8, calls=2, queue_ns=300, input_ns=50, infer_ns=700)
    board = StatisticsBoard()
    board.report(router.take_report())
    first = model.take_report()
    model.execution("fraud", 1, rows=8, calls=2, queue_ns=300, input_ns=50, infer_ns=700)
    second = model.take_report()
    board.report(second)
    board.report(second)  # sent twice: counted once
    board.report(first)  # older, arriving late: ignored
    assert router.take_report() is None  # nothing new
    [total, unseen] = board.totals([("fraud", 1), ("fraud", 2)])
    triton = total.as_triton()
    assert (triton["inference_count"], triton["execution_count"]) == (8, 2)
    stats = triton["inference_stats"]
    assert stats["success"] == {"count": 2, "ns": 2000} and stats["fail"] == {"count": 1, "ns": 1000}
    assert stats["queue"] == {"count": 4, "ns": 600} and stats["compute_infer"] == {"count": 4, "ns": 2800}
    assert triton["batch_stats"] == [
        {
            "batch_size": 8,
            "compute_input": {"count": 2, "ns": 100},
            "compute_infer": {"count": 2, "ns": 1400},
            "compute_output": {"count": 2, "ns": 0},
        }
    ]
    assert triton["last_inference"] > 0
    assert unseen.as_triton()["inference_stats"]["success"] == {"count": 0, "ns": 0}  # zeros, not an error
    message = json_format.ParseDict({"model_stats": [triton, unseen.as_triton()]}, pb.ModelStatisticsResponse())
    assert message.model_stats[0].inference_stats.compute_infer.ns == 2800


def test_a_merger_adds_its_waiting_to_the_queue():
    recorder = StatisticsRecorder("router")
    recorder.count_waiting("fraud", 1, lambda: Duration(5, 900))
    recorder.request("fraud", 1, rows=1, ok=True, ns=10)
    [counters] = recorder.take_report().counters
    assert counters.queue == Duration(5, 900)


def test_a_failed_report_is_sent_again():
    class Board:
        def __init__(self):
            self.fail, self.reports = True, []

        async def report(self, report):
            if self.fail:
                raise ConnectionError("restarting")
            self.reports.append(report)

    async def run():
        recorder, board = StatisticsRecorder("model"), Board()
        recorder.request("fraud", 1, rows=1, ok=True, ns=10)
        await report_statistics(recorder, board)
        board.fail = False
        await report_statistics(recorder, board)
        await report_statistics(recorder, board)  # unchanged since: not sent
        return board.reports

    reports = asyncio.run(run())
    assert len(reports) == 1 and reports[0].counters[0].success == Duration(1, 10)


def test_an_in_router_model_counts_its_executions_and_the_statistics_answer(versions, demo_repository):
    from serve_app.gateway import Gateway
    from tests.unit.test_gateway import Metrics

    async def run():
        recorder = StatisticsRecorder("router")
        endpoints = []
        for key in (("fraud", 1), ("fraud", 2)):
            model = versions[key]
            runner = load_runner(model.config, model.model_file)
            endpoints.append(InProcessEndpoint(model, runner, recorder=recorder))
        settings = GraphArgs(repository=str(demo_repository), in_router=["fraud"])
        gateway = Gateway(settings, endpoints, Metrics(), recorder=recorder)
        columns = request_columns(synthetic_transactions(3, seed=5))
        from serve_app.protocol.messages import InferenceRequest

        await asyncio.gather(*(gateway.serve("fraud", "2", InferenceRequest(inputs=columns), None) for _ in range(4)))
        extensions = TritonExtensions(gateway)
        everything = await extensions.statistics(None, None)
        one = await extensions.statistics("fraud", "2")
        return everything, one

    everything, one = asyncio.run(run())
    assert [(s["name"], s["version"]) for s in everything["model_stats"]] == [("fraud", "1"), ("fraud", "2")]
    [v2] = one["model_stats"]
    assert v2["inference_count"] == 12 and v2["inference_stats"]["success"]["count"] == 4
    assert (
        1 <= v2["execution_count"] <= 4
        and sum(b["compute_infer"]["count"] for b in v2["batch_stats"]) == v2["execution_count"]
    )
    assert everything["model_stats"][0]["inference_count"] == 0


def test_versions_counters_sum_field_by_field():
    a, b = VersionStatistics("m", 1), VersionStatistics("m", 1)
    a.request(rows=3, ok=True, ns=10, now_ms=5)
    a.execution(rows=3, calls=1, queue_ns=1, input_ns=2, infer_ns=4)
    b.request(rows=2, ok=False, ns=20, now_ms=9)
    b.execution(rows=2, calls=2, queue_ns=8, input_ns=16, infer_ns=32)
    b.execution(rows=3, calls=1, queue_ns=1, input_ns=2, infer_ns=4)
    total = a + b
    for name in ("inference_count", "execution_count", "success", "fail", "queue", "compute_input"):
        assert getattr(total, name) == getattr(a, name) + getattr(b, name), name
    assert (total.compute_infer, total.compute_output) == (Duration(4, 72), Duration(4, 0))  # per call
    assert total.last_inference_ms == 5  # the last success: b's request failed
    assert total.batches[3].compute_infer == Duration(2, 8) and total.batches[2].compute_infer == Duration(1, 32)
    assert total.executed_rows == 3 + 2 + 3
    assert a.execution_count == 1 and a.batches[3].compute_infer == Duration(1, 4)  # the operands are unchanged


def test_each_deployment_of_an_application_has_its_own_board():
    def report(rows):
        recorder = StatisticsRecorder("router")
        recorder.request("fraud", 1, rows=rows, ok=True, ns=10)
        return recorder.take_report()

    def rows(app, build):
        return boards.totals(app, build, [("fraud", 1)])[0].inference_count

    boards = StatisticsBoards()
    boards.report("app", "build-1", report(1))
    boards.report("other-app", "build-1", report(2))  # the same key in another application
    boards.report("app", "build-2", report(4))
    assert (rows("app", "build-1"), rows("other-app", "build-1"), rows("app", "build-2")) == (1, 2, 4)
    boards.report("app", "build-3", report(8))
    assert rows("app", "build-3") == 8 and rows("app", "build-2") == 4  # the one before still drains
    assert rows("app", "build-1") == 0  # dropped: the application was deployed twice since
    assert rows("other-app", "build-1") == 2 and rows("nobody", "build-1") == 0
