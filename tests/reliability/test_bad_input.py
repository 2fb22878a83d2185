"""Hostile and broken requests over HTTP (JSON and binary) and gRPC: each gets a clear 4xx (or the
gRPC code of one) naming the problem, and the server goes on answering."""

from __future__ import annotations

import gzip
import http.client
import json
import select
import socket
import threading
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.demo import request_columns, synthetic_transactions
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.rest import request_body
from tests.conftest import ADMIN_TOKEN, MAX_PARSING_BYTES, MAX_REQUEST_BYTES
from tests.helpers import binary_body, wait_until
from tests.strategies import DATATYPES, grpc_infer_requests, infer_documents, json_values

FRAUD = "/v2/models/fraud/infer"
ROW = request_body(request_columns(synthetic_transactions(1, seed=5)))
LIVE = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def _with(name: str, /, **changes) -> dict:
    """The valid fraud row with fields of one input changed."""
    return {"inputs": [{**i, **changes} if i["name"] == name else i for i in ROW["inputs"]]}


def _fraud_binary(amount: float) -> tuple[bytes, dict]:
    columns = request_columns(synthetic_transactions(2, seed=6))
    columns["amount"] = np.full(2, amount, dtype=np.float32)
    body, header_length = binary_body(columns)
    return body, {"inference-header-content-length": str(header_length)}


CASES = {
    "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, {}, 400, "nested too deeply"),
    "data nested deeper than its shape": (
        json.dumps(_with("amount", data=[[[[[[[[53.5]]]]]]]])).encode(),
        {},
        400,
        "shape",
    ),
    "NaN as a JSON literal": (json.dumps(_with("amount", data=[float("nan")])).encode(), {}, 400, "NaN"),
    "Infinity as a JSON literal": (json.dumps(_with("amount", data=[float("inf")])).encode(), {}, 400, "Infinity"),
    "NaN in a binary tensor": (*_fraud_binary(float("nan")), 422, "amount"),
    "infinity in a binary tensor": (*_fraud_binary(float("inf")), 422, "amount"),
    "an empty batch": (
        json.dumps({"inputs": [{**i, "shape": [0], "data": []} for i in ROW["inputs"]]}).encode(),
        {},
        400,
        "empty",
    ),
    "no inputs": (b'{"inputs": []}', {}, 400, "inputs"),
    "a request id of 100,000 characters": (json.dumps({**ROW, "id": "x" * 100_000}).encode(), {}, 400, "'id'"),
    "a shape of 10^12 rows with one value": (json.dumps(_with("amount", shape=[10**12])).encode(), {}, 400, "shape"),
    "a shape whose product overflows": (json.dumps(_with("amount", shape=[2**62, 2**62])).encode(), {}, 400, "shape"),
    "a negative shape": (json.dumps(_with("amount", shape=[-1])).encode(), {}, 400, "shape"),
    "an unknown datatype": (json.dumps(_with("amount", datatype="FP128")).encode(), {}, 400, "FP128"),
    "an input given twice": (json.dumps({"inputs": ROW["inputs"] + ROW["inputs"][:1]}).encode(), {}, 400, "amount"),
    "bytes that are not UTF-8": (b'{"inputs": "\xff\xfe"}', {}, 400, "JSON"),
    "a header length beyond the body": (
        json.dumps(ROW).encode(),
        {"inference-header-content-length": "999999"},
        400,
        "Inference-Header-Content-Length",
    ),
    "a gzip body that inflates past the limit": (
        gzip.compress(b" " * (MAX_REQUEST_BYTES + 1)),
        {"content-encoding": "gzip"},
        413,
        "limit",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_requests_get_a_clear_4xx_and_serving_goes_on(client, case, reliability):
    body, headers, status, named = CASES[case]
    row = reliability("Bad input", f"HTTP: {case}")
    response = client.post(FRAUD, content=body, headers=headers)
    row.measured["answer"] = f"{response.status_code} {response.text[:90]}".replace("\n", " ")
    assert response.status_code == status, response.text
    assert named in response.json()["error"], response.text
    assert client.post(FRAUD, json=ROW).status_code == 200


def _oversized_chunks():
    yield b'{"inputs": ['
    for _ in range(MAX_REQUEST_BYTES // 65536 + 2):
        yield b" " * 65536


def test_a_chunked_body_past_the_limit_is_cut_off_with_413(client, reliability):
    row = reliability("Bad input", "HTTP: a chunked body (no Content-Length) past the limit")
    response = client.post(FRAUD, content=_oversized_chunks())
    row.measured["answer"] = f"{response.status_code}"
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert client.post(FRAUD, json=ROW).status_code == 200


@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_a_management_reason_past_the_limit_is_refused_with_413(client, action, reliability):
    row = reliability("Bad input", f"HTTP: a {action} reason past the body limit")
    before = client.get("/v2/models/fraud/experiment").json()["history"]
    body = b'{"reason": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    response = client.post(
        f"/v2/models/fraud/experiment/{action}", content=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    row.measured["answer"] = f"{response.status_code}"
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert client.get("/v2/models/fraud/experiment").json()["history"] == before  # nothing was decided


def _held_post(url: str, body: bytes, release: threading.Event) -> tuple[int, bytes]:
    """Headers and the first KiB at once, the rest once released (unless the answer came first); the
    status and body. Raw sockets: an answer sent before the body was read must not be lost to a write,
    and the answer is read by its length, without waiting for the connection to close."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=120) as sock:
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:1024])
        release.wait(120)
        answered_early = select.select([sock], [], [], 10)[0]  # a refusal is on its way already
        if not answered_early:
            sock.sendall(body[1024:])
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, answer.read()


def test_a_flood_of_large_bodies_is_parsed_within_the_budget_and_the_rest_refused(client, served, reliability):
    row = reliability("Bad input", "HTTP: 6 bodies of 2 MiB at once, 6 MiB of parsing budget per router")
    body = (json.dumps(ROW) + " " * (MAX_REQUEST_BYTES - 8192)).encode()  # valid JSON, just under the limit
    capacity = MAX_PARSING_BYTES // len(body)
    clients = 2 * capacity
    refused_before = client.get("/health").json()["body_parsing"]["refused"]

    def all_arrived() -> bool:
        parsing = client.get("/health").json()["body_parsing"]
        return parsing["in_use"] // len(body) + parsing["refused"] - refused_before == clients

    release = threading.Event()
    with ThreadPoolExecutor(clients) as pool:
        answers = [pool.submit(_held_post, served + FRAUD, body, release) for _ in range(clients)]
        arrived = wait_until(all_arrived, 60)  # every body is being read, or was refused
        release.set()
        answers = [answer.result() for answer in answers]
    statuses = Counter(status for status, _ in answers)
    row.measured["answers"] = ", ".join(f"{n}× {status}" for status, n in sorted(statuses.items()))
    parsing = client.get("/health").json()["body_parsing"]
    row.measured["peak bytes parsed at once"] = f"{parsing['peak']:,} of {parsing['max_bytes']:,}"
    assert arrived and statuses == {200: capacity, 503: clients - capacity}, answers
    refusal = next(body for status, body in answers if status == 503)
    assert "being parsed" in json.loads(refusal)["error"]
    assert parsing["peak"] <= MAX_PARSING_BYTES and parsing["in_use"] == 0
    assert client.post(FRAUD, json=ROW).status_code == 200


# -- generated requests ------------------------------------------------------------------------

documents = infer_documents([i["name"] for i in ROW["inputs"]])


def test_schema_driven_fuzzing_finds_no_5xx(served, reliability):
    """A bounded schemathesis run over every operation: generated requests never get a 5xx."""
    row = reliability("Bad input", "schemathesis: every operation in /openapi.json, 10 generated requests each")
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            response = case.call(base_url=served, timeout=30)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.operation.label, case.body, response.text)

        call()
    row.measured["requests"] = (
        f"{len(statuses)} over {len(operations)} operations, {sum(s >= 500 for s in statuses)} 5xx"
    )
    assert len(statuses) >= 5 * len(operations) and any(400 <= s < 500 for s in statuses)


near_valid = st.builds(
    lambda name, key, value: _with(name, **{key: value}),
    st.sampled_from([i["name"] for i in ROW["inputs"]]),
    st.sampled_from(["name", "datatype", "shape", "data", "parameters"]),
    json_values | st.sampled_from(DATATYPES) | st.lists(st.integers(-1, 3), max_size=3),
)


def test_generated_json_and_binary_requests_never_get_a_5xx(client, reliability):
    row = reliability(
        "Bad input", "hypothesis: generated JSON bodies, the valid one with a field changed, binary bodies"
    )
    statuses: Counter = Counter()

    @LIVE
    @given(document=documents)
    def json_body(document):
        response = client.post(FRAUD, json=document)
        statuses[response.status_code] += 1
        assert response.status_code < 500, response.text
        assert response.status_code == 200 or "error" in response.json()

    @LIVE
    @given(header=documents, tail=st.binary(max_size=64), cut=st.integers(0, 200))
    def binary_request(header, tail, cut):
        body = json.dumps(header).encode() + tail
        length = str(min(cut, len(body)))
        response = client.post(FRAUD, content=body, headers={"inference-header-content-length": length})
        statuses[response.status_code] += 1
        assert response.status_code < 500, response.text

    @LIVE
    @given(document=near_valid)
    def near_valid_body(document):
        json_body.hypothesis.inner_test(document)

    json_body()
    near_valid_body()
    binary_request()
    row.measured["answers"] = ", ".join(f"{n}× {status}" for status, n in sorted(statuses.items()))
    assert client.post(FRAUD, json=ROW).status_code == 200


CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_generated_grpc_requests_get_client_error_codes(stub, reliability):
    row = reliability("Bad input", "hypothesis: generated gRPC ModelInfer requests (names, types, shapes, raw bytes)")
    metadata = (("application", "serve-app"),)
    codes: Counter = Counter()

    @LIVE
    @given(request=grpc_infer_requests)
    def infer(request):
        try:
            stub.ModelInfer(request, metadata=metadata, timeout=30)
            codes["OK"] += 1
        except grpc.RpcError as error:
            codes[error.code().name] += 1
            assert error.code() in CLIENT_CODES, f"{error.code()}: {error.details()}"

    infer()
    row.measured["answers"] = ", ".join(f"{n}× {code}" for code, n in sorted(codes.items()))
    assert stub.ServerLive(pb.ServerLiveRequest(), metadata=metadata, timeout=30).live
