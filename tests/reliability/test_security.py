"""Management needs the token, names cannot reach outside the repository, nothing unpickles what it
is given, and neither answers nor logs repeat a secret."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import ray

from tests.conftest import ADMIN_TOKEN, APP_NAME

ROOT = Path(__file__).parents[2]
MANAGEMENT = [
    ("POST", "/v2/models/fraud/experiment/promote"),
    ("POST", "/v2/models/fraud/experiment/rollback"),
    ("PUT", "/v2/models/fraud/experiment/traffic"),
    ("POST", "/v2/repository/models/fraud/load"),
    ("POST", "/v2/repository/models/fraud/unload"),
]
WRONG_TOKEN = "wrong-token-4f1d9c"


def _router_logs() -> str:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(path.read_text(errors="replace") for path in logs.glob(f"replica_{APP_NAME}_Router_*.log"))


def test_management_needs_the_bearer_token_and_refusals_are_logged(client, reliability):
    row = reliability("Security", "management calls without a token, with a wrong one, with another scheme")
    answers = []
    for method, path in MANAGEMENT:
        for headers in ({}, {"Authorization": f"Bearer {WRONG_TOKEN}"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
            response = client.request(method, path, headers=headers, json={})
            answers.append(response.status_code)
            assert response.status_code == 401, (path, headers, response.text)
            assert WRONG_TOKEN not in response.text and ADMIN_TOKEN not in response.text
    row.measured["answers"] = f"{len(answers)}× 401"
    deadline = time.monotonic() + 10
    while "refused an unauthenticated request to roll back fraud" not in (logs := _router_logs()):
        assert time.monotonic() < deadline, "the refusal is not in the router's log"
        time.sleep(0.5)
    assert WRONG_TOKEN not in logs and ADMIN_TOKEN not in logs


def test_a_bad_request_carrying_secrets_does_not_echo_them(client, reliability):
    row = reliability("Security", "a broken request carrying the admin token and a credential-like id")
    secret = "sk-live-7e1c0d"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "x-api-key": secret}
    response = client.post("/v2/models/fraud/infer", headers=headers, json={"id": secret, "inputs": "nope"})
    row.measured["answer"] = f"{response.status_code} {response.text[:80]}"
    assert response.status_code == 400
    assert secret not in response.text and ADMIN_TOKEN not in response.text
    assert ADMIN_TOKEN not in _router_logs()


TRAVERSALS = [
    ("GET", "/v2/models/..%2F..%2Fetc%2Fpasswd"),
    ("GET", "/v2/models/fraud/versions/..%2F..%2F1"),
    ("POST", "/v2/models/fraud%2F..%2Fecho/infer"),
    ("POST", "/v2/models/fraud/versions/1%2F..%2F2/infer"),
    ("GET", "/v2/models/%2E%2E/config"),
    ("POST", "/v2/repository/models/..%2Ffraud/load"),
    ("POST", "/v2/repository/models/fraud%00/unload"),
]


@pytest.mark.parametrize(("method", "path"), TRAVERSALS)
def test_names_and_versions_cannot_reach_outside_the_repository(client, method, path, reliability):
    row = reliability("Security", f"path traversal: {method} {path}")
    response = client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json={})
    row.measured["answer"] = str(response.status_code)
    assert response.status_code in (400, 404, 422), response.text
    assert "passwd" not in response.text.replace(path, "") and "root:" not in response.text


# Calls that turn bytes into arbitrary objects; serve-app must not make them (README, "Security").
UNSAFE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
    ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
    ("marshal", "loads"), ("shelve", "open"),
}  # fmt: skip
SOURCES = [p for folder in ("serve_app", "graphs", "batch", "scripts") for p in (ROOT / folder).rglob("*.py")]


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _unsafe(call: ast.Call) -> str | None:
    function = call.func
    if not isinstance(function, ast.Attribute):
        return None
    owner = function.value.id if isinstance(function.value, ast.Name) else ast.unparse(function.value)
    if (owner, function.attr) in UNSAFE_CALLS:
        return f"{owner}.{function.attr}"
    if (owner, function.attr) == ("torch", "load"):
        weights_only = _keyword(call, "weights_only")
        return None if isinstance(weights_only, ast.Constant) and weights_only.value is True else "torch.load"
    if function.attr == "load" and owner in ("np", "numpy"):
        allow = _keyword(call, "allow_pickle")
        return "np.load(allow_pickle=True)" if isinstance(allow, ast.Constant) and allow.value else None
    if (owner, function.attr) == ("yaml", "load"):
        return "yaml.load (not safe_load)"
    if function.attr == "load_detector":
        unsafe = _keyword(call, "enable_unsafe_loading")
        return None if isinstance(unsafe, ast.Constant) and unsafe.value is False else "load_detector"
    return None


def test_nothing_unpickles_what_it_is_given(reliability):
    row = reliability("Security", "the code scanned for unsafe deserialisation (pickle, torch.load, allow_pickle, ...)")
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and (what := _unsafe(node)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {what}")
    row.measured["files scanned"] = str(len(SOURCES))
    assert not found, found
    assert len(SOURCES) > 40


def test_the_token_is_compared_in_constant_time():
    source = (ROOT / "serve_app" / "deployments" / "router.py").read_text()
    authorize = next(
        node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef) and node.name == "_authorize"
    )
    calls = {ast.unparse(node.func) for node in ast.walk(authorize) if isinstance(node, ast.Call)}
    assert "hmac.compare_digest" in calls
    assert not any(isinstance(node, ast.Compare) and "token" in ast.unparse(node) for node in ast.walk(authorize))
