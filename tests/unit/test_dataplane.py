from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.demo import request_columns, synthetic_transactions
from serve_app.errors import InvalidInput, ModelNotFound, UnprocessableInput
from serve_app.protocol.dataplane import DataPlane, LocalEndpoint
from serve_app.protocol.messages import InferenceRequest
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner


@pytest.fixture(scope="module")
def dataplane(demo_repository) -> DataPlane:
    versions = ModelRepository(demo_repository).check()
    return DataPlane([LocalEndpoint(v, load_runner(v.config, v.model_file)) for v in versions])


def infer(dataplane, inputs, version=None, name="fraud", **fields):
    return asyncio.run(dataplane.infer(name, version, InferenceRequest(inputs=inputs, **fields)))


@pytest.fixture
def columns():
    return request_columns(synthetic_transactions(4, seed=11))


def test_newest_version_answers_by_default(dataplane, columns):
    response = infer(dataplane, columns, id="req-1")
    assert (response.model_name, response.model_version, response.id) == ("fraud", "2", "req-1")
    scores = response.outputs["fraud_probability"]
    assert scores.shape == (4,) and ((scores > 0) & (scores < 1)).all()
    older = infer(dataplane, columns, version="1").outputs["fraud_probability"]
    assert not np.allclose(scores, older)  # the versions really differ


def test_metadata_describes_raw_inputs(dataplane):
    metadata = dataplane.model_metadata("fraud")
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "onnxruntime_onnx"
    # One value per row is declared [-1, 1], as Triton declares it; [n] and [n, 1] are both taken.
    assert {"name": "country", "datatype": "BYTES", "shape": [-1, 1]} in metadata["inputs"]
    assert metadata["outputs"] == [{"name": "fraud_probability", "datatype": "FP32", "shape": [-1]}]
    assert dataplane.model_metadata("fraud", "1")["versions"] == ["1"]


def test_a_scalar_per_row_is_taken_as_n_and_as_n_by_1(dataplane, columns):
    flat = infer(dataplane, columns, version="2").outputs["fraud_probability"]
    request = InferenceRequest(inputs={name: column.reshape(-1, 1) for name, column in columns.items()})
    response = asyncio.run(dataplane.infer("fraud", "2", request))
    np.testing.assert_array_equal(response.outputs["fraud_probability"], flat)
    assert request.inputs["amount"].shape == (4,)  # what the log and the drift monitor see
    wide = {**columns, "amount": np.stack([columns["amount"]] * 2, axis=1)}
    with pytest.raises(InvalidInput, match=r"input 'amount' has shape \[4, 2\]"):
        infer(dataplane, wide)


@pytest.mark.parametrize(("name", "version"), [("nope", None), ("fraud", "3"), ("fraud", "x"), ("fraud", "-1")])
def test_unknown_model_or_version_is_not_found(dataplane, columns, name, version):
    with pytest.raises(ModelNotFound, match=r"not served|no version"):
        infer(dataplane, columns, version=version, name=name)


def _without(columns, name):
    return {k: v for k, v in columns.items() if k != name}


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda c: _without(c, "hour"), InvalidInput, "missing input.*'hour'"),
        (lambda c: {**c, "extra": c["hour"]}, InvalidInput, "unknown input.*'extra'"),
        (lambda c: {**c, "amount": c["amount"].astype(np.float64)}, InvalidInput, "'amount' has datatype FP64"),
        (lambda c: {**c, "amount": c["amount"].reshape(2, 2)}, InvalidInput, r"'amount' has shape \[2, 2\]"),
        (lambda c: {**c, "hour": c["hour"][:3]}, InvalidInput, "disagree on the batch size"),
        (lambda c: {k: v[:0] for k, v in c.items()}, InvalidInput, "empty batch"),
        (lambda c: {**c, "amount": np.array([1, np.inf, 2, 3], np.float32)}, UnprocessableInput, "'amount'.*row 1"),
    ],
)
def test_bad_inputs_name_the_problem(dataplane, columns, mutate, error, message):
    with pytest.raises(error, match=message):
        infer(dataplane, mutate(columns))
    assert infer(dataplane, columns).outputs["fraud_probability"].shape == (4,)


def test_rows_beyond_max_batch_size_are_refused(dataplane):
    too_many = request_columns(synthetic_transactions(257, seed=12))
    with pytest.raises(InvalidInput, match="257 rows; this model takes at most 256"):
        infer(dataplane, too_many)


def test_requested_outputs_are_checked(dataplane, columns):
    assert list(infer(dataplane, columns, requested_outputs=["fraud_probability"]).outputs) == ["fraud_probability"]
    with pytest.raises(InvalidInput, match="unknown output"):
        infer(dataplane, columns, requested_outputs=["nope"])


def test_server_is_ready_and_lists_extensions(dataplane):
    assert asyncio.run(dataplane.server_ready()) is True
    assert dataplane.server_metadata()["name"] == "serve-app"
