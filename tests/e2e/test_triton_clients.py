"""Real Triton clients (tritonclient.http and tritonclient.grpc) against the running app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve_app.protocol.dataplane import LocalEndpoint
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from tests.e2e.clients.triton_checks import dense_input, fraud_inputs

CHECKS = Path(__file__).parent / "clients" / "triton_checks.py"


@pytest.fixture(scope="module")
def expected(demo_repository, tmp_path_factory) -> Path:
    """The models' answers computed in this process, for the client to compare with the server's."""
    repository = ModelRepository(demo_repository)
    scores = {}
    for version in repository.served_versions("fraud"):
        endpoint = LocalEndpoint(version, load_runner(version.config, version.model_file))
        scores[f"fraud_v{version.version}"] = endpoint.predict(fraud_inputs())["fraud_probability"]
    dense = repository.version("dense", 1)
    scores["dense"] = load_runner(dense.config, dense.model_file).predict({"INPUT": dense_input()})["OUTPUT"]
    path = tmp_path_factory.mktemp("expected") / "expected.npz"
    np.savez(path, **scores)
    return path


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_works_unchanged(protocol, served, grpc_target, expected):
    url = served.removeprefix("http://") if protocol == "http" else grpc_target
    command = [sys.executable, str(CHECKS), "--protocol", protocol, "--url", url, "--expected", str(expected)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("ok:") >= 20
