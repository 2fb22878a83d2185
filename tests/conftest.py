from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.demo import build_demo_repository


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory) -> Path:
    """The demo repository, built once per test session by the project's own code."""
    root = tmp_path_factory.mktemp("model_repository")
    build_demo_repository(root)
    return root
