"""Every Serve config file in configs/ is valid for Ray Serve and for our builders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import GraphArgs

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
        GraphArgs.model_validate(app["args"])
