from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings

from serve_app.errors import InvalidInput
from serve_app.protocol.messages import InferenceResponse
from serve_app.protocol.rest import (
    encode_tensor,
    parse_infer_request,
    render_infer_response,
    request_body,
)
from tests.strategies import decoded_in_bounded_memory, infer_documents

JSON_DATATYPES = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 2, 65535],
    "UINT32": [0, 1, 2, 4294967295],
    "UINT64": [0, 1, 2, 2**64 - 1],
    "INT8": [-128, 0, 1, 127],
    "INT16": [-32768, 0, 1, 32767],
    "INT32": [-(2**31), 0, 1, 2**31 - 1],
    "INT64": [-(2**63), 0, 1, 2**63 - 1],
    "FP32": [-1.5, 0.0, 3.25, 2.0**100],
    "FP64": [-1.5, 0.0, 3.25, 1e300],
    "BYTES": ["a", "", "ü", "long text"],
}


def _body(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


@pytest.mark.parametrize("datatype", sorted(JSON_DATATYPES))
def test_every_json_datatype_round_trips_exactly(datatype):
    data = JSON_DATATYPES[datatype]
    request = parse_infer_request(_body({"name": "t", "datatype": datatype, "shape": [2, 2], "data": data}))
    array = request.inputs["t"]
    assert array.shape == (2, 2)
    encoded = encode_tensor("t", array)
    assert encoded == {"name": "t", "datatype": datatype, "shape": [2, 2], "data": data}


def test_nested_data_id_parameters_and_outputs():
    request = parse_infer_request(
        _body(
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
            id="abc",
            parameters={"routing_key": "u1"},
            outputs=[{"name": "y"}],
        )
    )
    np.testing.assert_array_equal(request.inputs["x"], np.array([[1, 2], [3, 4]], np.float32))
    assert (request.id, request.parameters, request.requested_outputs) == ("abc", {"routing_key": "u1"}, ["y"])


def test_request_body_is_what_a_client_sends():
    columns = {"a": np.array([1.5, 2.5], np.float32), "b": np.array([b"x", b"y"], dtype=object)}
    request = parse_infer_request(json.dumps(request_body(columns, "id-1")).encode())
    assert request.id == "id-1"
    np.testing.assert_array_equal(request.inputs["a"], columns["a"])
    assert request.inputs["b"].tolist() == [b"x", b"y"]


def test_response_echoes_id_and_names_the_model():
    response = InferenceResponse("m", "2", {"y": np.array([0.5], np.float32)}, id="r1")
    body, header_length = render_infer_response(response)
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "2",
        "id": "r1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [0.5]}],
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (b'{"inputs": [1]}', "inputs\\[0\\] must be an object"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}', "NaN"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e999]}]}', "too large"),
        (b'{"input": []}', "unknown field"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_malformed_bodies_name_the_problem(body, message):
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(body)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}, r"shape \[3\] needs 3 elements"),
        ({"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}, "unknown datatype 'FP99'"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}, "INT32 values only"),
        ({"name": "x", "datatype": "INT32", "shape": [2], "data": [1, True]}, "INT32 values only"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, True]}, "FP32 values only"),
        ({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}, "BOOL values only"),
        ({"name": "x", "datatype": "UINT8", "shape": [1], "data": [256]}, "outside the range of UINT8"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [1, "a"]}, "FP32 values only"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": [1e39]}, "too large for a finite FP32"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}, "strings only"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}, "not valid UTF-8"),
        ({"name": "x", "datatype": "FP16", "shape": [1], "data": [1]}, "binary tensor"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative integers"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [1, [2]]}, "mixes nested lists"),
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": [[1, 2], [3]]}, "does not follow the shape"),
        ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2, 3], [4]]}, "does not follow the shape"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": 3}, "parameters"),
        ({"name": "x", "datatype": "FP32", "shape": [1]}, "missing 'data'"),
        ({"datatype": "FP32", "shape": [1], "data": [1]}, "'name'"),
        ({"name": "\ud800", "datatype": "FP32", "shape": [1], "data": [1]}, "UTF-8"),
    ],
)
def test_bad_tensors_name_the_input_and_problem(tensor, message):
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(_body(tensor))


def test_huge_integers_are_valid_floats():
    request = parse_infer_request(_body({"name": "x", "datatype": "FP64", "shape": [1], "data": [2**70]}))
    assert request.inputs["x"][0] == 2.0**70


def test_id_must_be_valid_text():
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}
    with pytest.raises(InvalidInput, match="'id'"):
        parse_infer_request(_body(tensor, id="\ud800"))


def test_duplicate_inputs_are_refused():
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}
    with pytest.raises(InvalidInput, match="more than once"):
        parse_infer_request(_body(tensor, tensor))


@settings(max_examples=300, deadline=None)
@given(document=infer_documents(["a", "b"]))
def test_any_json_body_parses_or_is_refused_without_allocating_its_claim(document):
    request = decoded_in_bounded_memory(lambda: parse_infer_request(json.dumps(document).encode()))
    assert request is None or all(isinstance(array, np.ndarray) for array in request.inputs.values())
