"""The full graph the reliability tests load, break and restart: fraud v1 champion and v2 challenger
at 50/50, every request mirrored to v3 (a copy of v2), the drift monitor watching, and the
prediction log and experiment state in a storage folder."""

from __future__ import annotations

import shutil

import pytest
from ray import serve

from graphs.champion_challenger import build_app
from tests.reliability.harness import APP, PREFIX


@pytest.fixture(scope="package")
def full_graph_args(demo_repository, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reliability") / "repository"
    shutil.copytree(demo_repository / "fraud", root / "fraud")
    shutil.copytree(root / "fraud" / "2", root / "fraud" / "3")
    traffic = {"champion": 1, "challenger": 2, "challenger_weight": 0.5, "shadows": [3], "shadow_fraction": 1.0}
    return {
        "repository": str(root),
        "storage_uri": str(tmp_path_factory.mktemp("reliability-storage")),
        "models": ["fraud"],
        "experiments": {"fraud": {"traffic": traffic, "settings": {"min_samples_per_arm": 10**9}}},
        "drift": {"fraud": {"window_size": 500, "window_s": 5}},
        # Bounded buffers fill during the soak's warm-up, so what grows after it is a leak.
        "feedback_window_requests": 1000,
    }


@pytest.fixture(scope="package")
def full_graph(ray_cluster, full_graph_args) -> str:
    """Base URL of the full graph, deployed once for the package."""
    serve.run(build_app(full_graph_args), name=APP, route_prefix=PREFIX)
    yield ray_cluster.http_url + PREFIX
    serve.delete(APP)
