"""The protocol's gRPC messages <-> the data plane's numpy requests and responses."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format

from serve_app.errors import InvalidInput
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.messages import InferenceRequest, InferenceResponse
from serve_app.protocol.raw import tensor_from_raw, tensor_to_raw
from serve_app.protocol.tensors import datatype_of, element_count, numpy_dtype

# The typed field of InferTensorContents that carries each datatype; FP16 travels only raw.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_from_proto(parameters) -> dict[str, Any]:
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def from_json(document: dict, message: type):
    """A message from the JSON form REST answers with (Triton's field names): both say the same."""
    return json_format.ParseDict(document, message())


def parameters_to_proto(target, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


def request_from_proto(message: pb.ModelInferRequest) -> InferenceRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        where = f"input '{tensor.name}'"
        if not tensor.name:
            raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
        if tensor.name in inputs:
            raise InvalidInput(f"{where} is given more than once")
        shape = list(tensor.shape)
        element_count(shape, where)
        if raw:
            inputs[tensor.name] = tensor_from_raw(raw[index], tensor.datatype, shape, where)
        else:
            inputs[tensor.name] = _from_contents(tensor, shape, where)
    return InferenceRequest(
        inputs=inputs,
        id=message.id or None,
        parameters=parameters_from_proto(message.parameters),
        requested_outputs=[o.name for o in message.outputs] or None,
        output_parameters={o.name: parameters_from_proto(o.parameters) for o in message.outputs},
    )


def _from_contents(tensor, shape: list[int], where: str) -> np.ndarray:
    dtype = numpy_dtype(tensor.datatype)
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"{where}: {tensor.datatype} travels only in raw_input_contents")
    values = getattr(tensor.contents, field)
    expected = element_count(shape, where)
    if len(values) != expected:
        raise InvalidInput(f"{where}: shape {shape} needs {expected} elements, {field} has {len(values)}")
    if tensor.datatype == "BYTES":
        array = np.empty(expected, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    if dtype.kind in "iu" and expected:
        info = np.iinfo(dtype)
        if min(values) < info.min or max(values) > info.max:
            raise InvalidInput(f"{where}: a value lies outside the range of {tensor.datatype}")
    return np.array(values, dtype=dtype).reshape(shape)


def response_to_proto(response: InferenceResponse) -> pb.ModelInferResponse:
    """Outputs always go as raw_output_contents: every datatype, no per-element cost."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    parameters_to_proto(message.parameters, response.parameters)
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        message.raw_output_contents.append(tensor_to_raw(array))
    return message


def model_metadata_to_proto(metadata: dict) -> pb.ModelMetadataResponse:
    tensors = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in metadata["inputs"]],
        outputs=[tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in metadata["outputs"]],
    )
