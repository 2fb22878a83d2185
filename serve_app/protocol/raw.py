"""Raw tensor bytes, shared by the REST binary extension and gRPC's raw contents.

Fixed-size datatypes are little-endian, row-major; BOOL is one byte per element; BYTES
elements are each a 4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from serve_app.errors import InvalidInput
from serve_app.protocol.tensors import element_count, numpy_dtype

_LENGTH = struct.Struct("<I")


def tensor_from_raw(raw: bytes | memoryview, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """Decode raw bytes into an array of the given datatype and shape, or raise InvalidInput."""
    dtype = numpy_dtype(datatype)
    count = element_count(shape, where)
    if datatype == "BYTES":
        return _bytes_elements(raw, count, where).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"{where}: shape {shape} of {datatype} needs {expected} bytes, the binary data has {len(raw)}"
        )
    if datatype == "BOOL":  # any byte but 0 is true, as in C and in Triton (its perf_analyzer sends random bytes)
        return (np.frombuffer(raw, dtype=np.uint8, count=count) != 0).reshape(shape)
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count)
    return array.astype(dtype, copy=False).reshape(shape)


def _bytes_elements(raw: bytes | memoryview, count: int, where: str) -> np.ndarray:
    view = memoryview(raw)
    if count * _LENGTH.size > len(view):  # checked before allocating: a shape can claim 2^40 elements
        raise InvalidInput(
            f"{where}: {count} BYTES elements need at least {count * _LENGTH.size} bytes "
            f"(a 4-byte length each), the binary data has {len(view)}"
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"{where}: BYTES element {index} has no 4-byte length prefix (data ends)")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"{where}: BYTES element {index} claims {length} bytes, only {len(view) - offset} remain"
            )
        elements[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"{where}: {len(view) - offset} bytes left over after {count} BYTES elements")
    return elements


def tensor_to_raw(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
