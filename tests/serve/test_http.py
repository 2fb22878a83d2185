"""The Open Inference Protocol over HTTP, against the deployed graph, compared with the model in-process."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from serve_app.demo import request_columns, synthetic_transactions
from serve_app.protocol.dataplane import LocalEndpoint
from serve_app.protocol.rest import request_body
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner


@pytest.fixture(scope="module")
def in_process(demo_repository):
    repo = ModelRepository(demo_repository)
    return {v.version: LocalEndpoint(v, load_runner(v.config, v.model_file)) for v in repo.served_versions("fraud")}


@pytest.fixture(scope="module")
def columns():
    return request_columns(synthetic_transactions(16, seed=21))


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    metadata = client.get("/v2").json()
    assert metadata["name"] == "serve-app" and isinstance(metadata["extensions"], list)


def test_model_metadata_and_readiness(client, in_process):
    metadata = client.get("/v2/models/fraud").json()
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == in_process[2].metadata()["inputs"]
    assert client.get("/v2/models/fraud/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/fraud/ready").json() == {"ready": True}
    assert client.get("/v2/models/fraud/versions/2/ready").status_code == 200
    assert client.get("/v2/models/fraud/config").json()["max_batch_size"] == 256


@pytest.mark.parametrize("version", [None, "1", "2"])
def test_batched_request_matches_the_model_in_process(client, in_process, columns, version):
    path = "/v2/models/fraud/infer" if version is None else f"/v2/models/fraud/versions/{version}/infer"
    response = client.post(path, json=request_body(columns, request_id="abc-123"))
    assert response.status_code == 200, response.text
    body = response.json()
    # Without a version, the experiment's sticky split picks champion (v1) or challenger (v2).
    expected_version = version or body["model_version"]
    assert (body["model_name"], body["model_version"], body["id"]) == ("fraud", expected_version, "abc-123")
    assert response.headers["x-model-version"] == expected_version
    assert (
        body["parameters"]["arm"]
        == response.headers["x-serve-arm"]
        == ("direct" if version else body["parameters"]["arm"])
    )
    [output] = body["outputs"]
    assert output["name"] == "fraud_probability" and output["shape"] == [16] and output["datatype"] == "FP32"
    expected = in_process[int(expected_version)].predict(columns)["fraud_probability"]
    np.testing.assert_allclose(output["data"], expected, rtol=1e-6, atol=1e-7)


def _inputs(columns, **changes):
    body = request_body(columns)
    for tensor in body["inputs"]:
        tensor.update(changes.get(tensor["name"], {}))
    return body


def _drop(columns, name):
    return request_body({k: v for k, v in columns.items() if k != name})


@pytest.mark.parametrize(
    ("path", "make_body", "status", "message"),
    [
        ("/v2/models/fraud/infer", lambda c: b"{broken", 400, "not valid JSON"),
        ("/v2/models/fraud/infer", lambda c: _drop(c, "country"), 400, "missing input.*'country'"),
        ("/v2/models/fraud/infer", lambda c: request_body({**c, "extra": c["hour"]}), 400, "unknown input.*'extra'"),
        (
            "/v2/models/fraud/infer",
            lambda c: _inputs(c, hour={"datatype": "FP32"}),
            400,
            "'hour' has datatype FP32, the model expects INT64",
        ),
        ("/v2/models/fraud/infer", lambda c: request_body({k: v[:0] for k, v in c.items()}), 400, "empty batch"),
        (
            "/v2/models/fraud/infer",
            lambda c: request_body(request_columns(synthetic_transactions(257, seed=22))),
            400,
            "257 rows; this model takes at most 256",
        ),
        (
            "/v2/models/fraud/infer",
            lambda c: _inputs(c, amount={"shape": [4, 4]}),
            400,
            r"'amount' has shape \[4, 4\]",
        ),
        (
            "/v2/models/fraud/infer",
            lambda c: request_body({**c, "hour": c["hour"][:3]}),
            400,
            "disagree on the batch size",
        ),
        ("/v2/models/fraud/infer", lambda c: _inputs(c, amount={"shape": [3]}), 400, "needs 3 elements"),
        ("/v2/models/nope/infer", request_body, 404, "model 'nope'"),
        ("/v2/models/fraud/versions/7/infer", request_body, 404, "no version '7'"),
        ("/v2/models/fraud/versions/%C2%B2/infer", request_body, 404, "no version"),
        ("/v2/models/fraud/versions/7/ready", None, 404, "no version '7'"),
        ("/v2/models/nope", None, 404, "model 'nope'"),
        ("/v2/nowhere", None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem_and_serving_goes_on(
    client, columns, path, make_body, status, message
):
    if make_body is None:
        response = client.get(path)
    else:
        body = make_body(columns)
        response = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert re.search(message, response.json()["error"]), response.json()
    follow_up = client.post("/v2/models/fraud/infer", json=request_body(columns))
    assert follow_up.status_code == 200


def test_nan_literal_is_not_json(client, columns):
    body = request_body(columns)
    text = json.dumps(body).replace(str(body["inputs"][0]["data"][0]), "NaN", 1)
    response = client.post("/v2/models/fraud/infer", content=text)
    assert response.status_code == 400 and "NaN, which JSON does not allow" in response.json()["error"]
