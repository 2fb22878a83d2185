"""The REST body: JSON, optionally followed by raw tensor bytes (Triton's binary tensor extension).

A request whose JSON is followed by binary data says how long the JSON part is in the
Inference-Header-Content-Length header; each binary input names its byte count in
parameters.binary_data_size, in the order of the inputs. A response carries outputs as
binary when the request asks (binary_data per output, binary_data_output for all).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np

from serve_app.errors import InvalidInput, PayloadTooLarge
from serve_app.protocol.messages import InferenceRequest, InferenceResponse
from serve_app.protocol.raw import tensor_from_raw, tensor_to_raw
from serve_app.protocol.tensors import datatype_of, element_count, numpy_dtype

_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_TENSOR_KEYS = {"name", "shape", "datatype", "parameters", "data"}
# The Python types json.loads gives that each kind of datatype accepts (bool is not an int here).
_JSON_TYPES = {"b": {bool}, "u": {int}, "i": {int}, "f": {int, float}, "O": {str}}


# zlib window bits: gzip framing, and the zlib framing that HTTP calls "deflate".
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decode_content(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo a request's Content-Encoding (tritonclient's request compression), never past max_bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in _WBITS:
        raise InvalidInput(f"Content-Encoding '{encoding}' is not supported; use gzip, deflate or none")
    decompressor = zlib.decompressobj(_WBITS[encoding])
    try:
        plain = decompressor.decompress(body, max_bytes + 1)
    except zlib.error as error:
        raise InvalidInput(f"the {encoding} body cannot be decompressed: {error}") from None
    if len(plain) > max_bytes:
        raise PayloadTooLarge(f"the decompressed request body exceeds the limit of {max_bytes} bytes")
    if not decompressor.eof:
        raise InvalidInput(f"the {encoding} body is truncated")
    return plain


def _reject_constant(name: str):
    raise InvalidInput(f"the JSON body contains {name}, which JSON does not allow; send a finite number")


def parse_json_body(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except InvalidInput:
        raise
    except RecursionError:
        raise InvalidInput("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"the body is not valid JSON: {error}") from None


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """Parse a REST inference body; header_length is Inference-Header-Content-Length, if sent."""
    if header_length is None:
        header_length = len(body)
    elif not 0 <= header_length <= len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length}, but the body has only {len(body)} bytes"
        )
    document = parse_json_body(body[:header_length])
    if not isinstance(document, dict):
        raise InvalidInput("the inference request must be a JSON object with an 'inputs' list")
    unknown = set(document) - _REQUEST_KEYS
    if unknown:
        raise InvalidInput(f"unknown field(s) in the inference request: {sorted(unknown)}")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    binary = _BinarySection(memoryview(body)[header_length:])
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(raw_inputs):
        name, array = decode_tensor(tensor, f"inputs[{index}]", binary)
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given more than once")
        inputs[name] = array
    binary.check_consumed()
    request_id = document.get("id")
    if request_id is not None and not (isinstance(request_id, str) and _encodable(request_id)):
        raise InvalidInput("'id' must be a UTF-8 string")
    outputs = _requested_outputs(document.get("outputs"))
    return InferenceRequest(
        inputs=inputs,
        id=request_id,
        parameters=_parameters(document.get("parameters"), "parameters"),
        requested_outputs=None if outputs is None else list(outputs),
        output_parameters=outputs or {},
    )


class _BinarySection:
    """The raw bytes after the JSON header, handed out to binary inputs in order."""

    def __init__(self, data: memoryview):
        self.data = data
        self.offset = 0

    def take(self, size: Any, where: str) -> memoryview:
        if type(size) is not int or size < 0:
            raise InvalidInput(f"{where}: parameters.binary_data_size must be a non-negative integer")
        if self.offset + size > len(self.data):
            raise InvalidInput(
                f"{where}: binary_data_size {size} runs past the end of the body "
                f"({len(self.data) - self.offset} binary bytes remain)"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def check_consumed(self) -> None:
        if self.offset != len(self.data):
            raise InvalidInput(
                f"the body has {len(self.data) - self.offset} bytes after the JSON header that no input claims "
                "(check Inference-Header-Content-Length and each binary_data_size)"
            )


def decode_tensor(tensor: Any, where: str, binary: _BinarySection) -> tuple[str, np.ndarray]:
    if not isinstance(tensor, dict):
        raise InvalidInput(f"{where} must be an object with name, shape, datatype and data")
    unknown = set(tensor) - _TENSOR_KEYS
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {sorted(unknown)}")
    name = tensor.get("name")
    if not isinstance(name, str) or not name or not _encodable(name):
        raise InvalidInput(f"{where}: 'name' must be a non-empty UTF-8 string")
    where = f"input '{name}'"
    parameters = _parameters(tensor.get("parameters"), f"{where}: parameters")
    is_binary = "binary_data_size" in parameters
    for key in ("shape", "datatype") if is_binary else ("shape", "datatype", "data"):
        if key not in tensor:
            raise InvalidInput(f"{where}: missing '{key}'")
    shape = tensor["shape"]
    if not isinstance(shape, list):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
    expected = element_count(shape, where)
    datatype = tensor["datatype"]
    if not isinstance(datatype, str):
        raise InvalidInput(f"{where}: 'datatype' must be a string")
    dtype = numpy_dtype(datatype)
    if is_binary:
        if "data" in tensor:
            raise InvalidInput(f"{where}: give either 'data' or parameters.binary_data_size, not both")
        return name, tensor_from_raw(binary.take(parameters["binary_data_size"], where), datatype, shape, where)
    if datatype == "FP16":
        raise InvalidInput(f"{where}: FP16 data cannot be sent as JSON; send it as a binary tensor")
    flat = _flatten(tensor["data"], shape, where)
    if len(flat) != expected:
        raise InvalidInput(f"{where}: shape {shape} needs {expected} elements, 'data' has {len(flat)}")
    return name, _to_array(flat, datatype, dtype, where).reshape(shape)


def _flatten(data: Any, shape: list[int], where: str) -> list:
    """Data may be flat, or nested in row-major order; nested data must follow the shape."""
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: 'data' must be a list")
    if data and isinstance(data[0], list):
        return _flatten_nested(data, shape, where)
    if any(isinstance(item, list) for item in data):
        raise InvalidInput(f"{where}: 'data' mixes nested lists and values")
    return data


def _flatten_nested(data: list, shape: list[int], where: str) -> list:
    if not shape or len(data) != shape[0]:
        raise InvalidInput(f"{where}: nested 'data' does not follow the shape {shape}")
    if len(shape) == 1:
        if any(isinstance(item, list) for item in data):
            raise InvalidInput(f"{where}: nested 'data' does not follow the shape {shape}")
        return data
    flat: list = []
    for item in data:
        if not isinstance(item, list):
            raise InvalidInput(f"{where}: nested 'data' does not follow the shape {shape}")
        flat.extend(_flatten_nested(item, shape[1:], where))
    return flat


def _to_array(flat: list, datatype: str, dtype: np.dtype, where: str) -> np.ndarray:
    kinds = set(map(type, flat))
    if not kinds <= _JSON_TYPES[dtype.kind]:
        expected = "strings" if datatype == "BYTES" else f"{datatype} values"
        raise InvalidInput(f"{where}: 'data' must hold {expected} only")
    if datatype == "BYTES":
        array = np.empty(len(flat), dtype=object)
        try:
            array[:] = [item.encode("utf-8") for item in flat]
        except UnicodeEncodeError:
            raise InvalidInput(f"{where}: a string is not valid UTF-8") from None
        return array
    if not flat:
        return np.empty(0, dtype=dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if min(flat) < info.min or max(flat) > info.max:
            raise InvalidInput(f"{where}: a value lies outside the range of {datatype}")
        return np.array(flat, dtype=dtype)
    if dtype.kind == "f":
        try:
            with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
                array = np.array(flat, dtype=np.float64).astype(dtype)
        except OverflowError:
            array = np.array([np.inf])
        if not np.isfinite(array).all():
            raise InvalidInput(f"{where}: a value is too large for a finite {datatype}")
        return array
    return np.array(flat, dtype=dtype)


def _encodable(text: str) -> bool:
    """JSON escapes can smuggle in lone surrogates, which no UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{where}' must be an object")
    return value


def _requested_outputs(value: Any) -> dict[str, dict] | None:
    """Requested output names with their parameters, in the order asked."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) and _encodable(o["name"]) for o in value
    ):
        raise InvalidInput("'outputs' must be a list of objects, each with a 'name'")
    requested = {}
    for output in value:
        parameters = _parameters(output.get("parameters"), f"output '{output['name']}': parameters")
        if "classification" in parameters:
            raise InvalidInput(f"output '{output['name']}': the classification extension is not supported")
        requested[output["name"]] = parameters
    return requested


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = datatype_of(array)
    if datatype == "BYTES":
        data = [_text(item) for item in array.ravel().tolist()]
    else:
        data = array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _text(item: Any) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)


def request_body(columns: dict[str, np.ndarray], request_id: str | None = None) -> dict[str, Any]:
    """A JSON inference request for named numpy columns, as a KServe client sends it."""
    body: dict[str, Any] = {"inputs": [encode_tensor(name, np.asarray(v)) for name, v in columns.items()]}
    if request_id is not None:
        body["id"] = request_id
    return body


def binary_outputs(request: InferenceRequest, names: list[str]) -> set[str]:
    """Outputs to send as raw bytes: binary_data per output, else binary_data_output for all."""
    default = request.parameters.get("binary_data_output", False) is True
    return {n for n in names if request.output_parameters.get(n, {}).get("binary_data", default) is True}


def render_infer_response(response: InferenceResponse, binary: set[str] = frozenset()) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    outputs, chunks = [], []
    for name, array in response.outputs.items():
        if name in binary:
            raw = tensor_to_raw(array)
            chunks.append(raw)
            outputs.append(
                {
                    "name": name,
                    "datatype": datatype_of(array),
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        elif array.dtype == np.float16:
            raise InvalidInput(f"output '{name}' is FP16, which only travels as binary: ask for binary_data")
        else:
            outputs.append(encode_tensor(name, array))
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
