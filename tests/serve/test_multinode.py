"""A Ray cluster of two nodes on this machine, run as ops run one: `ray start --head`, a second node
joining it, `serve deploy` of a config, `serve status` healthy with replicas on both nodes, then the
weights and the batching changed by another `serve deploy` while a client sends: no request fails.

The cluster is its own (its own ports), apart from the session's, and driven only through the
`ray` and `serve` commands and HTTP, as ops do."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.config import free_port, haproxy_side_ports_env
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.protocol.rest import request_body
from tests.conftest import LOCAL_CONFIG
from tests.helpers import Traffic

pytestmark = pytest.mark.live_changes  # make test-live-changes: a session of its own

BIN = Path(sys.executable).parent
BODY = request_body(request_columns(synthetic_transactions(1, seed=91)))
START_TIMEOUT_S = 180
HAPROXY_SIDE_PORTS = haproxy_side_ports_env(free_port(), free_port())
"""This cluster's HAProxy beside the session's."""


def _env() -> dict[str, str]:
    """Ray's token authentication on for every node and command (a joining node assumes it is off)."""
    inherited = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**inherited, **HAPROXY_SIDE_PORTS, "RAY_AUTH_MODE": "token"}


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start --block`: stopping this process stops the node's processes (never `ray stop`,
    which would stop every Ray node on the machine, the test session's too)."""
    env = _env()
    ports = ["--dashboard-agent-listen-port", str(free_port())]  # the session's node holds the default
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--num-cpus=4", *ports, *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _dashboard(cluster_url: str, path: str) -> dict:
    """The dashboard's HTTP API, with the token Ray's token authentication put in ~/.ray (the CLI's too)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token is None and _token_file().exists():
        token = _token_file().read_text().strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{cluster_url}{path}", headers=headers, timeout=10)
    response.raise_for_status()
    return response.json()


def _token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def _wait_for(condition, what: str, timeout_s: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (httpx.HTTPError, KeyError, subprocess.CalledProcessError):
            result = None
        if result:
            return result
        time.sleep(1)
    raise TimeoutError(f"{what} within {timeout_s} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-nodes")
    gcs, dashboard = free_port(), free_port()
    # Its own temp dir: the address file `ray start` leaves there must not send a later ray.init() here.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray2-"))
    head = _start_node(
        [
            "--head",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={temp_dir}",
        ],
        folder / "head.log",
    )
    nodes = [head]
    try:
        dashboard_url = f"http://127.0.0.1:{dashboard}"
        _wait_for(lambda: _dashboard(dashboard_url, "/api/version"), "the head answers")
        nodes.append(_start_node([f"--address=127.0.0.1:{gcs}"], folder / "second.log"))
        _wait_for(lambda: len(_alive_nodes(dashboard_url)) == 2, "the second node joins")
        yield {"dashboard": dashboard_url, "folder": folder}
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _alive_nodes(dashboard_url: str) -> list[str]:
    nodes = _dashboard(dashboard_url, "/nodes?view=summary")["data"]["summary"]
    return [n["raylet"]["nodeId"] for n in nodes if n["raylet"]["state"] == "ALIVE"]


def _config(repository: Path, storage: Path, http_port: int, grpc_port: int, weight: float, batch: int) -> dict:
    local = yaml.safe_load(LOCAL_CONFIG.read_text())
    traffic = {"champion": 1, "challenger": 2, "challenger_weight": weight}
    initial = {"champion": 1, "challenger": 2, "challenger_weight": 0.05}
    return {
        "proxy_location": "HeadOnly",  # one machine: a proxy per node would fight over the port
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "grpc_options": {**local["grpc_options"], "port": grpc_port},
        "applications": [
            {
                "name": "serve-app",
                "route_prefix": "/",
                "import_path": "graphs.champion_challenger:build_app",
                "args": {
                    "repository": str(repository),
                    "storage_uri": str(storage),
                    "models": ["fraud"],
                    "experiments": {"fraud": {"traffic": initial}},
                },
                "deployments": [
                    {"name": "Router", "num_replicas": 2},
                    {
                        "name": "fraud-v1-model",
                        "num_replicas": 2,
                        "user_config": {"max_batch_size": batch, "batch_wait_timeout_s": 0.0},
                    },
                    {"name": "experiments", "user_config": {"traffic": {"fraud": traffic}}},
                ],
            }
        ],
    }


def _deploy(cluster: dict, config: dict) -> None:
    path = cluster["folder"] / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([str(BIN / "serve"), "deploy", str(path), "--address", cluster["dashboard"]], check=True, env=_env())


def _status(cluster: dict) -> dict:
    """What `serve status` prints, read as ops read it."""
    out = subprocess.run(
        [str(BIN / "serve"), "status", "--address", cluster["dashboard"]],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
    ).stdout
    return yaml.safe_load(out)


def _healthy(cluster: dict) -> bool:
    app = _status(cluster)["applications"].get("serve-app", {})
    deployments = app.get("deployments", {})
    return app.get("status") == "RUNNING" and all(d["status"] == "HEALTHY" for d in deployments.values())


def _replicas(cluster: dict) -> dict[str, list[dict]]:
    details = _dashboard(cluster["dashboard"], "/api/serve/applications/")
    deployments = details["applications"]["serve-app"]["deployments"]
    return {name: [r for r in d["replicas"] if r["state"] == "RUNNING"] for name, d in deployments.items()}


def test_serve_deploy_on_two_nodes_then_a_live_change_under_traffic(cluster, demo_repository, tmp_path):
    http_port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    storage = tmp_path / "storage"
    _deploy(cluster, _config(demo_repository, storage, http_port, grpc_port, weight=0.05, batch=32))
    _wait_for(lambda: _healthy(cluster), "serve status: RUNNING, every deployment HEALTHY")

    replicas = _replicas(cluster)
    assert len(replicas["Router"]) == 2 and len(replicas["fraud-v1-model"]) == 2
    nodes = {r["node_id"] for rs in replicas.values() for r in rs}
    assert len(nodes) == 2, f"replicas on {len(nodes)} node(s): {replicas}"
    pids = {r["pid"] for r in replicas["fraud-v1-model"]}

    with httpx.Client(base_url=url, timeout=60) as http, Traffic(url, BODY) as client:
        _wait_for(lambda: sum(client.answers.values()) > 20, "answers before the change", 60)
        _deploy(cluster, _config(demo_repository, storage, http_port, grpc_port, weight=0.5, batch=8))

        def changed() -> bool:
            summary = http.get("/v2/models/fraud/experiment").json()
            return summary["traffic"]["challenger"]["weight"] == 0.5 and _healthy(cluster)

        _wait_for(changed, "the new weight in the experiment", 120)
        seen = client.answers.copy()
        _wait_for(lambda: client.answers["2"] - seen["2"] >= 10, "the challenger's larger share", 60)

    assert client.failures == [], client.failures[:5]
    assert {r["pid"] for r in _replicas(cluster)["fraud-v1-model"]} == pids  # batching changed in place
