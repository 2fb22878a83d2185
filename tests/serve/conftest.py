"""One local Ray cluster and one deployed demo graph for the whole test session."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from ray import serve

from graphs.single_model import build_app

LOCAL_CONFIG = Path(__file__).parents[2] / "configs" / "local.yaml"
APP_NAME = "serve-app"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    http_url: str
    """Serve's HTTP proxy."""
    dashboard_url: str
    """Where `serve deploy --address` sends a config, as ops do."""


@pytest.fixture(scope="session")
def ray_cluster() -> Cluster:
    dashboard_port = _free_port()
    # More logical CPUs than cores: replicas mostly wait, and CI has two cores.
    ray.init(
        num_cpus=8,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield Cluster(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}")
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def app_args(demo_repository) -> dict:
    """The args of configs/local.yaml, pointed at the test's demo repository."""
    application = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]
    return {**application["args"], "repository": str(demo_repository)}


@pytest.fixture(scope="session")
def served(ray_cluster, app_args) -> str:
    """Base URL of the demo graph, deployed once."""
    serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
    return ray_cluster.http_url


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served, timeout=30) as http:
        yield http
