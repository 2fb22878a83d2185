"""Session fixtures: the demo repository, one local Ray cluster, and the demo graph deployed once.

Unit tests use only the repository; the cluster starts the first time a test asks for it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import ray
import yaml
from ray import serve

from graphs.champion_challenger import build_app
from serve_app.config import RAY_SERVE_ENV, free_port, haproxy_side_ports_env
from serve_app.demo import build_demo_repository
from serve_app.protocol.generated.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from serve_app.ranking.train import build_ranker
from serve_app.runtime.devices import cuda_device_count
from tests.reliability_table import pytest_runtest_makereport, pytest_sessionfinish, reliability  # noqa: F401

LOCAL_CONFIG = Path(__file__).parents[1] / "configs" / "local.yaml"
APP_NAME = "serve-app"
ADMIN_TOKEN = "test-admin-token"
MAX_REQUEST_BYTES = 2 * 1024 * 1024
OBJECT_STORE_KEYS = {"AWS_ACCESS_KEY_ID": "tests", "AWS_SECRET_ACCESS_KEY": "tests", "AWS_DEFAULT_REGION": "us-east-1"}
MAX_PARSING_BYTES = 3 * MAX_REQUEST_BYTES
"""Smaller than the default, so tests can cross it cheaply (and stay under gRPC's 4 MiB default)."""


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory) -> Path:
    """The demo repository, built once per test session by the project's own code."""
    root = tmp_path_factory.mktemp("model_repository")
    build_demo_repository(root)
    build_ranker(root)
    return root


@pytest.fixture
def fraud_repository(demo_repository, tmp_path) -> Path:
    """A repository of its own holding a copy of the demo's fraud model, for tests that add versions."""
    root = tmp_path / "repository"
    shutil.copytree(demo_repository / "fraud", root / "fraud")
    return root


@dataclass(frozen=True)
class Cluster:
    http_url: str
    """Serve's HTTP proxy."""
    grpc_target: str
    """Serve's gRPC proxy, host:port."""
    dashboard_url: str
    """Where `serve deploy --address` sends a config, as ops do."""
    metrics_url: str
    """Ray's Prometheus endpoint on this node: every ray.serve.metrics metric, prefixed ray_."""


@pytest.fixture(scope="session")
def ray_cluster() -> Cluster:
    # Before Ray starts: every process it starts inherits them.
    for key, value in {**RAY_SERVE_ENV, **haproxy_side_ports_env(free_port(), free_port())}.items():
        os.environ.setdefault(key, value)
    # s3:// in the tests reaches the session's own S3-compatible server (object_store), never a real store.
    os.environ.update({**OBJECT_STORE_KEYS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    dashboard_port, metrics_port = free_port(), free_port()
    # More logical CPUs than cores: replicas mostly wait, and CI has two cores. One logical GPU
    # where there is none: Ray assigns it to a replica as it would a real one (its id, its
    # CUDA_VISIBLE_DEVICES), so placement by what Ray gave is tested (tests/serve/test_gpu_placement.py).
    ray.init(
        num_cpus=8,
        num_gpus=max(1, cuda_device_count()),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        runtime_env={"env_vars": {"SERVE_APP_ADMIN_TOKEN": ADMIN_TOKEN}},
    )
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    http_port, grpc_port = free_port(), free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options={**config["grpc_options"], "port": grpc_port},
    )
    yield Cluster(
        f"http://127.0.0.1:{http_port}",
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{dashboard_port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
    )
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def object_store(ray_cluster) -> str:
    """An S3-compatible server (moto's) on the loopback interface, where the session's
    AWS_ENDPOINT_URL points: pyarrow's S3 filesystem reaches it from every process of the cluster."""
    from moto.server import ThreadedMotoServer

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(endpoint.rpartition(":")[2]), verbose=False)
    server.start()
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def app_args(demo_repository, tmp_path_factory) -> dict:
    """The args of configs/local.yaml, pointed at the test's demo repository and storage, with its
    models on replicas of their own behind one router (production.yaml's layout, which most tests
    reach into through the model deployments; tests/serve/test_in_router.py serves local.yaml's).
    The ranker's stories have an application of their own (tests/e2e/test_stories.py)."""
    application = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]
    args = application["args"]
    return {
        **args,
        "models": [m for m in args["models"] if m != "ranker"],
        "experiments": {m: e for m, e in args["experiments"].items() if m != "ranker"},
        "drift": {m: d for m, d in args["drift"].items() if m != "ranker"},
        "in_router": [],
        "num_replicas_ingress": 1,
        "repository": str(demo_repository),
        "storage_uri": str(tmp_path_factory.mktemp("storage")),
        "max_request_bytes": MAX_REQUEST_BYTES,
        "max_parsing_bytes": MAX_PARSING_BYTES,
    }


@pytest.fixture(scope="session")
def served(ray_cluster, app_args) -> str:
    """Base URL of the demo graph, deployed once."""
    serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
    return ray_cluster.http_url


@pytest.fixture(scope="session")
def grpc_target(served, ray_cluster) -> str:
    return ray_cluster.grpc_target


@pytest.fixture(scope="session")
def stub(grpc_target) -> GRPCInferenceServiceStub:
    """A gRPC client of the demo graph, taking requests past gRPC's 4 MiB default."""
    options = [("grpc.max_send_message_length", 16 * 1024 * 1024)]
    with grpc.insecure_channel(grpc_target, options=options) as channel:
        yield GRPCInferenceServiceStub(channel)


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served, timeout=30) as http:
        yield http
