"""Triton's model repository index over HTTP, and `serve-app models list` against the running app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_index_lists_every_version_with_its_state(client):
    entries = client.post("/v2/repository/index").json()
    fraud = [(e["version"], e["state"]) for e in entries if e["name"] == "fraud"]
    assert fraud == [("1", "READY"), ("2", "READY")]
    assert {e["name"] for e in entries} == {"fraud", "echo", "dense", "ranker"}
    # The ranker is in the repository, not served by this application (its stories have their own).
    assert {e["state"] for e in entries if e["name"] == "ranker"} == {"UNAVAILABLE"}
    ready = [e for e in entries if e["state"] == "READY"]
    assert client.post("/v2/repository/index", json={"ready": True}).json() == ready
    refused = client.post("/v2/repository/index", json={"ready": "yes"})
    assert refused.status_code == 400 and "'ready'" in refused.json()["error"]


def test_models_list_asks_the_running_server(served):
    serve_app = str(Path(sys.executable).parent / "serve-app")
    done = subprocess.run([serve_app, "models", "list", "--url", served], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert ["fraud", "2", "READY"] in rows and len(rows) == 6
    assert [row[2] for row in rows if row[0] == "ranker"] == ["UNAVAILABLE", "UNAVAILABLE"]
