"""Management needs the token, names cannot reach outside the repository, nothing unpickles what it
is given, and neither answers nor logs repeat a secret."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, APP_NAME
from tests.helpers import replica_log_lines, wait_until

ROOT = Path(__file__).parents[2]
MANAGEMENT = {  # each call, and the action its refusal names in the log
    ("POST", "/v2/models/fraud/experiment/promote"): "promote fraud",
    ("POST", "/v2/models/fraud/experiment/rollback"): "roll back fraud",
    ("PUT", "/v2/models/fraud/experiment/traffic"): "set the traffic of fraud",
    ("POST", "/v2/repository/models/fraud/load"): "load fraud",
    ("POST", "/v2/repository/models/fraud/unload"): "unload fraud",
}
WRONG_TOKEN = "wrong-token-4f1d9c"


def _router_logs() -> str:
    return "\n".join(replica_log_lines(APP_NAME))


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
    refusals = [f"refused an unauthenticated request to {action} from" for action in MANAGEMENT.values()]
    logs = wait_until(lambda: all(r in (text := _router_logs()) for r in refusals) and text, 10)
    assert logs, f"not every refusal is in the router's log: {refusals}"
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


NO_ROUTE = "Not Found"
"""A decoded %2F leaves no route: a name or version never holds a separator."""
TRAVERSALS = [  # each request, and the error that must answer it
    ("GET", "/v2/models/..%2F..%2Fetc%2Fpasswd", NO_ROUTE),
    ("GET", "/v2/models/fraud/versions/..%2F..%2F1", NO_ROUTE),
    ("POST", "/v2/models/fraud%2F..%2Fecho/infer", NO_ROUTE),
    ("POST", "/v2/repository/models/..%2Ffraud/load", NO_ROUTE),
    ("GET", "/v2/models/%2E%2E/config", "model '..' is not served here"),
    ("GET", "/v2/models/fraud/versions/%2E%2E", "model 'fraud' has no version '..'"),
    ("POST", "/v2/models/fraud/versions/-1/infer", "model 'fraud' has no version '-1'"),
    ("POST", "/v2/repository/models/%2E%2E/load", "no path characters"),
    ("POST", "/v2/repository/models/fraud%00/unload", "fraud"),
]


@pytest.mark.parametrize(("method", "path", "error"), TRAVERSALS)
def test_names_and_versions_cannot_reach_outside_the_repository(client, method, path, error, reliability):
    row = reliability("Security", f"path traversal: {method} {path}")
    response = client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json={})
    row.measured["answer"] = f"{response.status_code} {response.text[:80]}"
    assert response.status_code in (400, 404), response.text
    assert error in response.json()["error"]


# Calls that turn bytes into arbitrary objects; serve-app must not make them (docs/reliability.md, "Security").
UNSAFE_CALLS = {
    "pickle.load",
    "pickle.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "pandas.read_pickle",
    "marshal.loads",
    "shelve.open",
    "yaml.load",
    "yaml.unsafe_load",
}
SOURCES = [p for folder in ("serve_app", "graphs", "batch", "scripts") for p in (ROOT / folder).rglob("*.py")]


def _keyword(call: ast.Call, name: str):
    value = next((k.value for k in call.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else value


def _imports(tree: ast.AST) -> dict[str, str]:
    """What each imported name stands for: `import numpy as np` gives np -> numpy, and
    `from pickle import loads as l` gives l -> pickle.loads."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update({alias.asname or alias.name: alias.name for alias in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update({alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names})
    return names


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, call) for each call in the tree that can unpickle, imports resolved."""
    imports, found = _imports(tree), []
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        function = call.func
        if isinstance(function, ast.Name):
            name = imports.get(function.id, function.id)
        elif isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
            name = f"{imports.get(function.value.id, function.value.id)}.{function.attr}"
        else:
            continue
        unsafe = (
            name in UNSAFE_CALLS
            or (name == "torch.load" and _keyword(call, "weights_only") is not True)
            or (name == "numpy.load" and _keyword(call, "allow_pickle") not in (None, False))
            or (name.endswith("load_detector") and _keyword(call, "enable_unsafe_loading") is not False)
        )
        if unsafe:
            found.append((call.lineno, name))
    return found


def test_the_scan_sees_unsafe_calls_however_they_are_imported():
    snippet = """
import pickle as pk, numpy as np, torch
from joblib import load as restore
from alibi_detect.saving import load_detector
pk.loads(b""); restore("m"); np.load("a", allow_pickle=True); torch.load("m"); load_detector("d")
np.load("a"); torch.load("m", weights_only=True); load_detector("d", enable_unsafe_loading=False)
"""
    found = [name for _, name in unsafe_calls(ast.parse(snippet))]
    assert found == ["pickle.loads", "joblib.load", "numpy.load", "torch.load", "alibi_detect.saving.load_detector"]


def test_nothing_unpickles_what_it_is_given(reliability):
    row = reliability("Security", "the code scanned for unsafe deserialisation (pickle, torch.load, allow_pickle, ...)")
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in SOURCES
        for line, name in unsafe_calls(ast.parse(path.read_text()))
    ]
    row.measured["files scanned"] = str(len(SOURCES))
    assert not found, found
    assert len(SOURCES) > 40


def test_the_token_is_compared_in_constant_time():
    """One check of the token, for REST and gRPC alike."""
    source = (ROOT / "serve_app" / "protocol" / "management.py").read_text()
    authorize = next(
        node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef) and node.name == "check_token"
    )
    calls = {ast.unparse(node.func) for node in ast.walk(authorize) if isinstance(node, ast.Call)}
    assert "hmac.compare_digest" in calls
    assert not any(isinstance(node, ast.Compare) and "token" in ast.unparse(node) for node in ast.walk(authorize))
