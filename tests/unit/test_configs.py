"""Every Serve config file in configs/ is valid for Ray Serve and for our builders."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app import ray_compat
from serve_app.config import RAY_SERVE_ENV, DynamicBatching, ExperimentGraphArgs, GraphArgs, TrafficSettings
from serve_app.repository import ModelRepository

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_serve_schema_and_builder_args(path):
    document = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(document)
    assert schema.applications
    for app in document["applications"]:
        assert app["import_path"].startswith("graphs.") and app["import_path"].endswith(":build_app")
        args_model = ExperimentGraphArgs if "champion_challenger" in app["import_path"] else GraphArgs
        args_model.model_validate(app["args"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_deployment_overrides_name_real_deployments_with_valid_settings(path, demo_repository):
    for app in yaml.safe_load(path.read_text())["applications"]:
        build_app = importlib.import_module(app["import_path"].split(":")[0]).build_app
        graph = build_app({**app["args"], "repository": str(demo_repository)})
        built = {deployment.name: deployment for deployment in ray_compat.bound_deployments(graph)}
        for override in app.get("deployments", []):
            assert override["name"] in built, f"{path.name}: no deployment '{override['name']}' in {sorted(built)}"
            if override["name"] == "experiments":
                for traffic in override["user_config"]["traffic"].values():
                    TrafficSettings.model_validate(traffic)
            if "user_config" in override and override["name"].endswith("-model"):
                settings = DynamicBatching.model_validate(override["user_config"])
                model = ModelRepository(demo_repository).config(override["name"].rsplit("-v", 1)[0])
                assert settings.max_batch_size <= model.max_batch_size


CLUSTER = Path(__file__).parents[2] / "cluster.yaml"


def test_cluster_config_passes_rays_own_schema_with_cpu_and_gpu_workers():
    """What `ray up cluster.yaml` checks first: the provider's defaults filled in, then Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert any(t["node_config"]["InstanceType"].startswith("g") for t in workers.values())  # a GPU group
    assert any(t["node_config"]["InstanceType"].startswith("c") for t in workers.values())  # a CPU group
    ports = {p["FromPort"] for p in config["provider"]["security_group"]["IpPermissions"]}
    assert {8000, 9000, 8080} <= ports  # Serve HTTP and gRPC, Prometheus
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])  # the project on each node
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("--metrics-export-port=8080" in c for c in commands)
        start = next(c for c in commands if "ray start" in c)
        assert all(f"{key}={value}" in start for key, value in RAY_SERVE_ENV.items())  # Serve's settings, as tested
    makefile = (CLUSTER.parent / "Makefile").read_text()
    assert all(f"{key}={value}" in makefile for key, value in RAY_SERVE_ENV.items())
    serve = yaml.safe_load((CLUSTER.parent / "configs" / "production.yaml").read_text())
    assert serve["http_options"]["port"] == 8000 and serve["grpc_options"]["port"] == 9000


def test_grafana_dashboard_queries_only_metrics_the_code_declares():
    root = Path(__file__).parents[2]
    dashboard = json.loads((root / "configs" / "grafana-dashboard.json").read_text())
    declared = set()
    for source in (root / "serve_app" / "deployments").glob("*.py"):
        declared |= set(re.findall(r'"(serve_app_\w+)"', source.read_text()))
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"ray_(serve_app_\w+?)(?:_total|_bucket|_count|_sum)?\b", target["expr"]))
    assert queried and queried <= declared, sorted(queried - declared)
    assert {"serve_app_requests", "serve_app_inference_count", "serve_app_drift_p_value"} <= queried
