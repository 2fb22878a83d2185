"""Triton's binary tensor extension on REST, and the raw tensor bytes it shares with gRPC."""

from __future__ import annotations

import contextlib
import json
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.errors import InvalidInput
from serve_app.protocol.messages import InferenceResponse
from serve_app.protocol.raw import tensor_from_raw, tensor_to_raw
from serve_app.protocol.rest import binary_outputs, parse_infer_request, render_infer_response
from serve_app.protocol.tensors import NUMPY_DTYPES
from tests.helpers import binary_body
from tests.strategies import decoded_in_bounded_memory

RNG = np.random.default_rng(3)


def sample(datatype: str, shape=(2, 3)) -> np.ndarray:
    if datatype == "BYTES":
        values = [b"", b"a", "ü€".encode(), b"\x00\xff", b"x" * 300, b"end"]
        return np.array(values[: int(np.prod(shape))], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return RNG.random(shape) < 0.5
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        return RNG.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("datatype", sorted(NUMPY_DTYPES))
def test_every_datatype_round_trips_exactly_in_binary(datatype):
    array = sample(datatype)
    body, header_length = binary_body({"t": array})
    decoded = parse_infer_request(body, header_length).inputs["t"]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes() if datatype != "BYTES" else decoded.tolist() == array.tolist()


def test_raw_layouts_follow_the_protocol():
    assert tensor_to_raw(np.array([b"ab", b""], dtype=object)) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    assert tensor_to_raw(np.array([True, False])) == b"\x01\x00"
    assert tensor_to_raw(np.array([1], dtype=np.int32)) == b"\x01\x00\x00\x00"  # little-endian
    assert tensor_to_raw(np.array([1], dtype=">i4")) == b"\x01\x00\x00\x00"


def test_any_byte_but_zero_is_a_true_bool():
    """As in C and Triton: Triton's perf_analyzer fills BOOL inputs with random bytes."""
    array = tensor_from_raw(b"\x02\x00\xff\x01", "BOOL", [2, 2], "input 'b'")
    assert array.dtype == np.bool_ and array.tolist() == [[True, False], [True, True]]


def test_binary_and_json_inputs_mix():
    body, header_length = binary_body({"b": np.arange(4, dtype=np.float32)}, id="mixed")
    document = json.loads(body[:header_length])
    document["inputs"].append({"name": "j", "datatype": "INT64", "shape": [2], "data": [7, 8]})
    header = json.dumps(document).encode()
    request = parse_infer_request(header + body[header_length:], len(header))
    assert request.inputs["b"].tolist() == [0, 1, 2, 3] and request.inputs["j"].tolist() == [7, 8]
    assert request.id == "mixed"


def test_outputs_go_binary_when_asked():
    request = parse_infer_request(
        json.dumps(
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
            }
        ).encode()
    )
    assert binary_outputs(request, ["a", "b"]) == {"a"}
    outputs = {"a": np.arange(3, dtype=np.float16), "b": np.array([b"x"], dtype=object)}
    body, header_length = render_infer_response(InferenceResponse("m", "1", outputs), {"a"})
    header = json.loads(body[:header_length])
    assert header["outputs"][0] == {
        "name": "a",
        "datatype": "FP16",
        "shape": [3],
        "parameters": {"binary_data_size": 6},
    }
    assert header["outputs"][1]["data"] == ["x"]
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], np.float16), outputs["a"])


def test_fp16_output_as_json_is_refused():
    with pytest.raises(InvalidInput, match="FP16"):
        render_infer_response(InferenceResponse("m", "1", {"a": np.zeros(1, np.float16)}))


def _header(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


FLOATS = {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (_header([FLOATS]) + b"\x00" * 8, 10_000, "Inference-Header-Content-Length is 10000"),
        (_header([FLOATS]) + b"\x00" * 4, None, "runs past the end"),
        (_header([FLOATS]) + b"\x00" * 12, None, "4 bytes after the JSON header"),
        (_header([{**FLOATS, "parameters": {"binary_data_size": 4}}]) + b"\x00" * 4, None, "needs 8 bytes"),
        (_header([{**FLOATS, "parameters": {"binary_data_size": -1}}]), None, "non-negative integer"),
        (_header([{**FLOATS, "data": [1, 2]}]) + b"\x00" * 8, None, "not both"),
        (
            _header([{"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}])
            + struct.pack("<I", 9)
            + b"ab",
            None,
            "claims 9 bytes, only 2 remain",
        ),
        (
            _header([{"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 6}}])
            + struct.pack("<I", 2)
            + b"ab",
            None,
            "2 BYTES elements need at least 8 bytes",
        ),
    ],
)
def test_bad_binary_bodies_name_the_problem(body, header_length, message):
    if header_length is None:
        header_length = body.index(b"}]}") + 3
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(body, header_length)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), cut=st.integers(min_value=0, max_value=400))
def test_random_bodies_raise_only_the_protocol_error(body, cut):
    with contextlib.suppress(InvalidInput):
        parse_infer_request(body, min(cut, len(body)))


@settings(max_examples=300, deadline=None)
@given(
    datatype=st.sampled_from(sorted(NUMPY_DTYPES)),
    rows=st.integers(min_value=0, max_value=6),
    cut=st.integers(min_value=0, max_value=200),
    noise=st.binary(max_size=16),
)
def test_truncated_or_padded_binary_raises_only_the_protocol_error(datatype, rows, cut, noise):
    body, header_length = binary_body({"t": sample(datatype, (rows,))})
    for candidate in (body[: header_length + cut], body + noise):
        with contextlib.suppress(InvalidInput):
            parse_infer_request(candidate, header_length)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64), count=st.integers(min_value=0, max_value=8))
def test_raw_bytes_parser_never_raises_anything_else(raw, count):
    with contextlib.suppress(InvalidInput):
        tensor_from_raw(raw, "BYTES", [count], "input 's'")


@settings(max_examples=300, deadline=None)
@given(
    datatype=st.sampled_from(sorted(NUMPY_DTYPES)),
    shape=st.lists(st.integers(0, 2**40), max_size=3),
    raw=st.binary(max_size=64),
)
def test_raw_tensors_never_allocate_more_than_their_bytes_claim(datatype, shape, raw):
    """A shape may claim 2^40 elements; the decoder checks it against the bytes before allocating
    (a BYTES tensor of 2^40 elements once took a router to 20 GB)."""
    array = decoded_in_bounded_memory(lambda: tensor_from_raw(raw, datatype, shape, "x"))
    assert array is None or array.size == math.prod(shape)
