"""gRPC messages <-> the data plane, and the generated code being reproducible from the .proto."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from serve_app.errors import InvalidInput
from serve_app.protocol import grpc_codec
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.messages import InferenceResponse
from serve_app.protocol.raw import tensor_to_raw
from serve_app.protocol.tensors import NUMPY_DTYPES, datatype_of
from tests.strategies import decoded_in_bounded_memory, grpc_infer_requests

ROOT = Path(__file__).parents[2]
GENERATED = ROOT / "serve_app" / "protocol" / "generated"


def _request(**tensors) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", id="req-9")
    for name, array in tensors.items():
        message.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        message.raw_input_contents.append(tensor_to_raw(array))
    return message


@pytest.mark.parametrize("datatype", sorted(NUMPY_DTYPES))
def test_raw_contents_round_trip_every_datatype(datatype):
    array = (
        np.array([[b"a", b""], [b"\xff", "ü".encode()]], dtype=object)
        if datatype == "BYTES"
        else np.arange(4).reshape(2, 2).astype(NUMPY_DTYPES[datatype])
    )
    request = grpc_codec.request_from_proto(_request(t=array))
    assert request.id == "req-9"
    assert request.inputs["t"].dtype == array.dtype and request.inputs["t"].tolist() == array.tolist()
    response = grpc_codec.response_to_proto(InferenceResponse("m", "1", {"t": array}, id="req-9"))
    assert response.outputs[0].datatype == datatype and list(response.outputs[0].shape) == [2, 2]
    assert response.raw_output_contents[0] == tensor_to_raw(array)


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("INT8", "int_contents", [-3, 4]),
        ("UINT64", "uint64_contents", [0, 2**64 - 1]),
        ("FP64", "fp64_contents", [0.5, -1.25]),
        ("BOOL", "bool_contents", [True, False]),
        ("BYTES", "bytes_contents", [b"x", b"yz"]),
    ],
)
def test_typed_contents_are_read(datatype, field, values):
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="t", datatype=datatype, shape=[2])
    getattr(tensor.contents, field).extend(values)
    assert grpc_codec.request_from_proto(message).inputs["t"].tolist() == values


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.raw_input_contents.append(b"extra"), "2 entries for 1 inputs"),
        (lambda m: m.inputs[0].shape.append(5), "needs 80 bytes"),
        (lambda m: setattr(m.inputs[0], "datatype", "FP99"), "unknown datatype 'FP99'"),
    ],
)
def test_bad_raw_requests_name_the_problem(mutate, message):
    request = _request(x=np.zeros(4, np.float32))
    mutate(request)
    with pytest.raises(InvalidInput, match=message):
        grpc_codec.request_from_proto(request)


def test_fp16_needs_raw_contents_and_ranges_are_checked():
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInput, match="FP16 travels only in raw_input_contents"):
        grpc_codec.request_from_proto(message)
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="i", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(InvalidInput, match="outside the range of INT8"):
        grpc_codec.request_from_proto(message)


def test_parameters_round_trip():
    message = pb.ModelInferRequest()
    grpc_codec.parameters_to_proto(message.parameters, {"a": True, "b": 3, "c": 0.5, "d": "x"})
    assert grpc_codec.parameters_from_proto(message.parameters) == {"a": True, "b": 3, "c": 0.5, "d": "x"}


def test_generated_code_is_reproducible_from_the_proto(tmp_path):
    """`make proto` regenerates byte-identical modules with the pinned grpcio-tools."""
    pytest.importorskip("grpc_tools")
    target = tmp_path / "serve_app" / "protocol" / "generated"
    target.mkdir(parents=True)
    shutil.copy(GENERATED / "grpc_predict_v2.proto", target)
    proto = "serve_app/protocol/generated/grpc_predict_v2.proto"
    command = [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--grpc_python_out=.", proto]
    subprocess.run(command, cwd=tmp_path, check=True)
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2_grpc.py"):
        assert filecmp.cmp(target / name, GENERATED / name, shallow=False), f"{name} is stale: run make proto"


@settings(max_examples=300, deadline=None)
@given(request=grpc_infer_requests)
def test_any_grpc_request_decodes_or_is_refused_without_allocating_its_claim(request):
    decoded = decoded_in_bounded_memory(lambda: grpc_codec.request_from_proto(request))
    assert decoded is None or len(decoded.inputs) == len(request.inputs)
