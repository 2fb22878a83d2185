"""Request builders the tests share."""

from __future__ import annotations

import json

import numpy as np

from serve_app.protocol.raw import tensor_to_raw
from serve_app.protocol.tensors import datatype_of


def binary_body(tensors: dict[str, np.ndarray], **document) -> tuple[bytes, int]:
    """A binary-extension request as tritonclient.http builds it: JSON header, then each tensor's bytes."""
    inputs, chunks = [], []
    for name, array in tensors.items():
        raw = tensor_to_raw(array)
        shape = list(array.shape)
        parameters = {"binary_data_size": len(raw)}
        inputs.append({"name": name, "datatype": datatype_of(array), "shape": shape, "parameters": parameters})
        chunks.append(raw)
    header = json.dumps({"inputs": inputs, **document}).encode()
    return header + b"".join(chunks), len(header)
