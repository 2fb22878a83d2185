"""The champion/challenger graph's args: bad experiment configs are refused at build, naming the problem."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from graphs.champion_challenger import build_app
from serve_app import ray_compat
from serve_app.errors import RepositoryError


def _args(demo_repository, tmp_path, **traffic) -> dict:
    return {
        "repository": str(demo_repository),
        "storage_uri": str(tmp_path),
        "models": ["fraud"],
        "experiments": {"fraud": {"traffic": {"champion": 1, "challenger": 2, **traffic}}},
    }


@pytest.mark.parametrize(
    ("traffic", "words"),
    [
        ({"challenger_weight": 1.5}, "less than or equal to 1"),
        ({"challenger_weight": -0.1}, "greater than or equal to 0"),
        ({"shadow_fraction": 2}, "less than or equal to 1"),
        ({"shadows": [2]}, "also serve production"),
        ({"challenger": 1}, "both champion and challenger"),
    ],
)
def test_bad_traffic_is_refused(demo_repository, tmp_path, traffic, words):
    with pytest.raises(ValidationError, match=words):
        build_app(_args(demo_repository, tmp_path, **traffic))


def test_a_version_that_does_not_exist_is_refused(demo_repository, tmp_path):
    with pytest.raises(RepositoryError, match="version 9 is not in the repository"):
        build_app(_args(demo_repository, tmp_path, shadows=[9], shadow_fraction=0.1))


def test_an_experiment_on_a_model_not_served_is_refused(demo_repository, tmp_path):
    args = _args(demo_repository, tmp_path)
    args["models"] = ["dense"]
    with pytest.raises(RepositoryError, match="'fraud': the model is not among those served"):
        build_app(args)


def test_the_graph_builds_with_the_experiment_store(demo_repository, tmp_path):
    app = build_app(_args(demo_repository, tmp_path, challenger_weight=0.05))
    router = ray_compat.bound_deployment(app)
    assert router.name == "Router" and ray_compat.bound_deployment(router.init_args[2]).name == "experiments"
