"""Triton's tools, through tritonclient: model configuration, statistics, the repository index, and
load/unload with the admin token, over HTTP and gRPC. Against the main graph (models on replicas of
their own: statistics come from the model replicas) and against an application of local.yaml's
layout deployed from a config (models in two routers: statistics summed across them), whose every
demo model is unloaded and loaded again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from ray import serve

from tests.conftest import ADMIN_TOKEN
from tests.helpers import serve_deploy

TOOLS = Path(__file__).parent / "clients" / "triton_tools.py"
APP = "triton"
MODELS = ["fraud", "echo", "dense"]


def run_tools(protocol: str, url: str, *options: str) -> str:
    command = [sys.executable, str(TOOLS), "--protocol", protocol, "--url", url, *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def routed_app(ray_cluster, demo_repository, tmp_path_factory):
    args = {
        "repository": str(demo_repository),
        "models": MODELS,
        "in_router": MODELS,
        "num_replicas_ingress": 2,
    }
    application = {
        "name": APP,
        "route_prefix": f"/{APP}",
        "import_path": "graphs.single_model:build_app",
        "args": args,
        "runtime_env": {"env_vars": {"SERVE_APP_ADMIN_TOKEN": ADMIN_TOKEN}},
    }
    url = f"{ray_cluster.http_url}/{APP}"

    def ready() -> bool:
        return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200

    serve_deploy(ray_cluster.dashboard_url, application, tmp_path_factory.mktemp(APP) / "triton.yaml", ready)
    yield url
    serve.delete(APP)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_tools_read_config_and_statistics_of_model_replicas(protocol, served, grpc_target):
    url = served.removeprefix("http://") if protocol == "http" else grpc_target
    output = run_tools(protocol, url, "--application", "serve-app", "--models", "echo,dense")
    assert output.count("ok:") >= 20


@pytest.mark.live_changes
@pytest.mark.parametrize(("protocol", "control"), [("http", "echo"), ("grpc", "fraud,dense")])
def test_triton_tools_load_and_unload_every_demo_model(protocol, control, routed_app, ray_cluster):
    url = routed_app.removeprefix("http://") if protocol == "http" else ray_cluster.grpc_target
    options = ["--application", APP, "--models", ",".join(MODELS), "--token", ADMIN_TOKEN, "--control", control]
    options += ["--idle", "fraud:1"]  # requests without a version go to the newest
    output = run_tools(protocol, url, *options)
    assert f"ok: {control.split(',')[-1]} loaded again: ready" in output
