"""Hypothesis strategies the codec tests and the live fuzzers share."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from serve_app.errors import InvalidInput
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb

DATATYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "NOPE"]
"""The protocol's datatypes, one it lacks (BF16 is Triton's) and nonsense."""

PARAMETER_NAMES = st.sampled_from(["binary_data_size", "binary_data", "x"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def infer_documents(names: list[str]) -> st.SearchStrategy[dict]:
    """REST inference bodies with inputs named from `names` (or not), any datatypes, shapes and data."""
    tensor = st.fixed_dictionaries(
        {
            "name": st.sampled_from([*names, "", "x"]),
            "datatype": st.sampled_from(DATATYPES),
            "shape": st.lists(st.integers(-2, 2**40), max_size=3),
            "data": json_values,
        },
        optional={"parameters": st.dictionaries(PARAMETER_NAMES, json_values)},
    )
    return st.fixed_dictionaries(
        {"inputs": st.lists(tensor, max_size=4) | json_values},
        optional={"id": json_values, "parameters": json_values, "outputs": json_values},
    )


tensors = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.sampled_from(["amount", "hour", "country", "card_present", "x"]),
    datatype=st.sampled_from(DATATYPES),
    shape=st.lists(st.integers(-2, 2**40), max_size=3),
    contents=st.builds(
        pb.InferTensorContents,
        fp32_contents=st.lists(st.floats(width=32), max_size=4),
        int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
        bytes_contents=st.lists(st.binary(max_size=8), max_size=4),
    ),
)
grpc_infer_requests = st.builds(
    pb.ModelInferRequest,
    model_name=st.sampled_from(["fraud", "", "../fraud", "nope"]),
    model_version=st.sampled_from(["", "1", "0", "x", "../../1"]),
    inputs=st.lists(tensors, max_size=4),
    raw_input_contents=st.lists(st.binary(max_size=32), max_size=4),
)
"""ModelInfer requests with any names, datatypes, shapes (up to 2^40 elements a dimension) and bytes."""


def decoded_in_bounded_memory(decode: Callable[[], Any], limit_bytes: int = 1 << 20) -> Any | None:
    """What decode() gives (None where it refuses the input), failing if it allocated more than
    limit_bytes on the way: what a shape claims must be checked before it is allocated."""
    tracemalloc.start()
    try:
        return decode()
    except InvalidInput:
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < limit_bytes, f"decoding allocated {peak:,} bytes"
