"""Every Serve config file in configs/ is valid for Ray Serve and for our builders."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import DynamicBatching, ExperimentGraphArgs, GraphArgs, TrafficSettings
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


def _deployments(node) -> dict:
    """Every deployment an application binds, by name (walking the bound init args)."""
    if hasattr(node, "_bound_deployment"):
        deployment = node._bound_deployment
        found = {deployment.name: deployment}
        for arg in (*deployment.init_args, *deployment.init_kwargs.values()):
            found.update(_deployments(arg))
        return found
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        return {k: v for item in node for k, v in _deployments(item).items()}
    return {}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_deployment_overrides_name_real_deployments_with_valid_settings(path, demo_repository):
    for app in yaml.safe_load(path.read_text())["applications"]:
        build_app = importlib.import_module(app["import_path"].split(":")[0]).build_app
        built = _deployments(build_app({**app["args"], "repository": str(demo_repository)}))
        for override in app.get("deployments", []):
            assert override["name"] in built, f"{path.name}: no deployment '{override['name']}' in {sorted(built)}"
            if override["name"] == "experiments":
                for traffic in override["user_config"]["traffic"].values():
                    TrafficSettings.model_validate(traffic)
            if "user_config" in override and override["name"].endswith("-model"):
                settings = DynamicBatching.model_validate(override["user_config"])
                model = ModelRepository(demo_repository).config(override["name"].rsplit("-v", 1)[0])
                assert settings.max_batch_size <= model.max_batch_size
