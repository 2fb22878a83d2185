"""numpy <-> protocol tensors: datatypes, and checking tensors against declared specs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from serve_app.config import TensorSpec
from serve_app.errors import InvalidInput

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_DATATYPES_BY_DTYPE = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
MAX_DIMS = 32
"""numpy 1's limit on an array's dimensions."""


def element_count(shape: Sequence[int], where: str) -> int:
    """The elements a client's shape claims, checked before anything is allocated for it: whole
    non-negative numbers, and a shape numpy can hold even where a 0 makes it empty."""
    if not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers, got {list(shape)!r}")
    if len(shape) > MAX_DIMS or math.prod(d for d in shape if d) >= 2**59:  # numpy: at most 2^63 bytes
        raise InvalidInput(f"{where}: shape {list(shape)} is larger than any tensor can be")
    return math.prod(shape)


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype '{datatype}'; the protocol's datatypes are {', '.join(NUMPY_DTYPES)}"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of an array; strings and bytes are BYTES."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPES_BY_DTYPE[array.dtype]
    except KeyError:
        raise InvalidInput(f"numpy dtype {array.dtype} has no protocol datatype") from None


def shape_matches(shape: Sequence[int], dims: Sequence[int]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims))


def declared_dims(spec: TensorSpec) -> list[int]:
    """An input's shape as metadata and Triton's config declare it: one scalar per row is [-1, 1],
    Triton's convention for a batched model (its tools build requests from a per-row shape)."""
    return [-1, 1] if spec.dims == [-1] else spec.dims


def conform_scalar_columns(inputs: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Inputs of one scalar per row are accepted as [n] and as [n, 1]: each is given the shape its
    spec names (a view, nothing copied). Other inputs are left for check_inputs to judge."""
    conformed = dict(inputs)
    for spec in specs:
        array = inputs.get(spec.name)
        if array is None or not spec.one_value_per_row or array.ndim not in (1, 2):
            continue
        if spec.dims == [-1] and array.ndim == 2 and array.shape[1] == 1:
            conformed[spec.name] = array.reshape(-1)
        elif spec.dims == [-1, 1] and array.ndim == 1:
            conformed[spec.name] = array.reshape(-1, 1)
    return conformed


def batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """Rows in a request whose inputs were already checked to agree."""
    return next(iter(inputs.values())).shape[0]


def check_inputs(
    inputs: Mapping[str, np.ndarray],
    specs: Sequence[TensorSpec],
    max_batch_size: int | None = None,
) -> None:
    """Raise InvalidInput naming the first input that does not match the declared specs.

    Checks names, datatypes, shapes, that every input carries the same number of
    rows, and (when given) that the rows stay within max_batch_size.
    """
    expected = {spec.name: spec for spec in specs}
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidInput(f"missing input(s) {_quoted(missing)}; the model takes {_quoted(expected)}")
    unknown = [name for name in inputs if name not in expected]
    if unknown:
        raise InvalidInput(f"unknown input(s) {_quoted(unknown)}; the model takes {_quoted(expected)}")
    rows: dict[str, int] = {}
    for name, spec in expected.items():
        array = inputs[name]
        actual = datatype_of(array)
        if actual != spec.datatype:
            raise InvalidInput(f"input '{name}' has datatype {actual}, the model expects {spec.datatype}")
        if not shape_matches(array.shape, spec.dims):
            raise InvalidInput(
                f"input '{name}' has shape {list(array.shape)}, the model expects {spec.dims} (-1: any size)"
            )
        rows[name] = array.shape[0]
    if len(set(rows.values())) > 1:
        described = ", ".join(f"'{n}' has {r}" for n, r in rows.items())
        raise InvalidInput(f"inputs disagree on the batch size (first dimension): {described}")
    count = next(iter(rows.values()))
    if count == 0:
        raise InvalidInput("the request has an empty batch: every input has 0 rows")
    if max_batch_size is not None and count > max_batch_size:
        raise InvalidInput(f"the request has {count} rows; this model takes at most {max_batch_size}")


def _quoted(names) -> str:
    return ", ".join(f"'{n}'" for n in names)
