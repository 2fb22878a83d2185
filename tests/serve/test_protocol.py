"""The protocol's binary extension, gRPC status codes, limits and OpenAPI, against the running app.

gRPC here uses serve-app's own stubs; tritonclient runs in its own process (tests/e2e)."""

from __future__ import annotations

import gzip
import json

import grpc
import numpy as np
import pytest

from serve_app.demo import ECHO_DATATYPES, request_columns, synthetic_transactions
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.raw import tensor_to_raw
from serve_app.protocol.rest import request_body
from serve_app.protocol.tensors import NUMPY_DTYPES, datatype_of
from tests.conftest import MAX_REQUEST_BYTES
from tests.helpers import binary_body

DENSE = np.random.default_rng(5).normal(size=(64, 256)).astype(np.float32)


def binary_request(tensors: dict[str, np.ndarray], **document) -> tuple[bytes, dict]:
    body, header_length = binary_body(tensors, **document)
    return body, {"Inference-Header-Content-Length": str(header_length)}


def test_server_lists_the_binary_extension(client):
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


def test_binary_request_and_binary_response(client):
    body, headers = binary_request({"INPUT": DENSE}, parameters={"binary_data_output": True})
    response = client.post("/v2/models/dense/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 64 * 64 * 4}
    binary = np.frombuffer(response.content[header_length:], np.float32).reshape(64, 64)
    as_json = client.post("/v2/models/dense/infer", json=request_body({"INPUT": DENSE})).json()
    np.testing.assert_array_equal(binary, np.array(as_json["outputs"][0]["data"], np.float32).reshape(64, 64))


def test_plain_json_echo_round_trips_every_json_datatype(client):
    arrays = {
        "BOOL": np.array([[True, False]]),
        "BYTES": np.array([[b"a", "ü".encode()]], dtype=object),
        **{d: np.array([[0, 7]], dtype=NUMPY_DTYPES[d]) for d in ECHO_DATATYPES if d not in ("BOOL", "BYTES", "FP16")},
    }
    # FP16 cannot travel in JSON: it goes binary while the rest go as JSON, in one request.
    json_part = request_body({f"INPUT_{d}": a for d, a in arrays.items()})
    fp16 = np.array([[0.5, -2.0]], np.float16)
    body, headers = binary_request({"INPUT_FP16": fp16})
    header = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    header["inputs"] += json_part["inputs"]
    header["outputs"] = [{"name": f"OUTPUT_{d}"} for d in arrays]  # FP16 not asked for: it has no JSON form
    encoded = json.dumps(header).encode()
    response = client.post(
        "/v2/models/echo/infer",
        content=encoded + tensor_to_raw(fp16),
        headers={"Inference-Header-Content-Length": str(len(encoded))},
    )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    for datatype, array in arrays.items():
        output = outputs[f"OUTPUT_{datatype}"]
        expected = [v.decode() for v in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
        assert (output["datatype"], output["shape"], output["data"]) == (datatype, [1, 2], expected)


def test_fp16_output_as_json_is_refused_with_advice(client):
    body, headers = binary_request({f"INPUT_{d}": _one(d) for d in ECHO_DATATYPES})
    response = client.post("/v2/models/echo/infer", content=body, headers=headers)
    assert response.status_code == 400 and "binary_data" in response.json()["error"]


def _one(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"x"]], dtype=object)
    return np.ones((1, 1), dtype=NUMPY_DTYPES[datatype])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda body, h: (body, {**h, "Inference-Header-Content-Length": "999999"}), "only"),
        (lambda body, h: (body[:-10], h), "runs past the end"),
        (lambda body, h: (body + b"xx", h), "2 bytes after the JSON header"),
        (lambda body, h: (body, {**h, "Inference-Header-Content-Length": "abc"}), "whole number"),
    ],
)
def test_bad_binary_requests_get_400_and_serving_goes_on(client, mutate, message):
    body, headers = binary_request({"INPUT": DENSE})
    response = client.post("/v2/models/dense/infer", content=mutate(body, headers)[0], headers=mutate(body, headers)[1])
    assert response.status_code == 400 and message in response.json()["error"], response.text
    assert client.post("/v2/models/dense/infer", content=body, headers=headers).status_code == 200


def test_gzip_request_body_is_accepted(client):
    body = gzip.compress(json.dumps(request_body({"INPUT": DENSE[:2]})).encode())
    response = client.post("/v2/models/dense/infer", content=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [2, 64]


def test_request_size_limit(client):
    too_big = b" " * (MAX_REQUEST_BYTES + 1)
    response = client.post("/v2/models/dense/infer", content=too_big)
    assert response.status_code == 413 and str(MAX_REQUEST_BYTES) in response.json()["error"]
    bomb = gzip.compress(b" " * (MAX_REQUEST_BYTES + 1))
    response = client.post("/v2/models/dense/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413


def test_request_timeout_parameter_is_honoured(client):
    body = request_body(request_columns(synthetic_transactions(2, seed=51)))
    response = client.post("/v2/models/fraud/infer", json={**body, "parameters": {"timeout": 1}})
    assert response.status_code == 504 and "timeout" in response.json()["error"]
    response = client.post("/v2/models/fraud/infer", json={**body, "parameters": {"timeout": "soon"}})
    assert response.status_code == 400 and "parameters.timeout" in response.json()["error"]


def _grpc_request(model: str, **tensors) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, id="g-1")
    for name, array in tensors.items():
        message.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        message.raw_input_contents.append(tensor_to_raw(array))
    return message


def test_grpc_infer_with_raw_contents(stub, client):
    response = stub.ModelInfer(_grpc_request("dense", INPUT=DENSE))
    assert (response.model_name, response.model_version, response.id) == ("dense", "1", "g-1")
    out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(64, 64)
    as_json = client.post("/v2/models/dense/infer", json=request_body({"INPUT": DENSE})).json()
    np.testing.assert_array_equal(out, np.array(as_json["outputs"][0]["data"], np.float32).reshape(64, 64))


def _with_timeout(message: pb.ModelInferRequest) -> pb.ModelInferRequest:
    message.parameters["timeout"].int64_param = 1  # microseconds: it cannot be met
    return message


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (_grpc_request("nope", INPUT=DENSE), grpc.StatusCode.NOT_FOUND, "model 'nope'"),
        (_grpc_request("dense", INPUT=DENSE[:, :10]), grpc.StatusCode.INVALID_ARGUMENT, "shape [64, 10]"),
        (_grpc_request("dense", WRONG=DENSE), grpc.StatusCode.INVALID_ARGUMENT, "missing input"),
        (
            _grpc_request("dense", INPUT=np.zeros((2100, 256), np.float32)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "exceeds the limit",
        ),
        (_with_timeout(_grpc_request("dense", INPUT=DENSE[:1])), grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
    ],
)
def test_grpc_errors_map_to_status_codes(stub, request_, code, words):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request_)
    assert caught.value.code() == code and words in caught.value.details()
    assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_grpc_metadata_and_readiness(stub):
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"))
    assert list(metadata.versions) == ["1", "2"] and metadata.inputs[0].name == "amount"
    assert stub.ModelReady(pb.ModelReadyRequest(name="fraud", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    assert "binary_tensor_data" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
    assert stub.ServerReady(pb.ServerReadyRequest()).ready


def test_openapi_describes_the_infer_body(client):
    schema = client.get("/openapi.json").json()
    infer = schema["paths"]["/v2/models/{model}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/InferenceRequest"}
    request = schema["components"]["schemas"]["InferenceRequest"]
    assert request["required"] == ["inputs"] and "RequestInput" in json.dumps(request)
    assert {"400", "404", "413", "422", "503", "504"} <= set(infer["responses"])


def test_grpc_requests_are_routed_by_the_routing_key_metadata(stub):
    columns = request_columns(synthetic_transactions(1, seed=71))
    message = pb.ModelInferRequest(model_name="fraud")
    for name, array in columns.items():
        message.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        message.raw_input_contents.append(tensor_to_raw(array))
    for key in ("user-1", "user-2", "user-3"):
        answers = [stub.ModelInfer(message, metadata=[("x-routing-key", key)]) for _ in range(4)]
        assert len({a.model_version for a in answers}) == 1  # sticky: one key, one arm
        assert all(a.id for a in answers)  # a request id is made when the client sends none
