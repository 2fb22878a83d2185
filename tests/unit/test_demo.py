from __future__ import annotations

import json

import pandas as pd

from serve_app.demo import LABEL, build_demo_repository


def test_demo_versions_differ_and_the_second_is_better(demo_repository):
    metrics = json.loads((demo_repository / "fraud" / "metrics.json").read_text())
    assert metrics["1"]["architecture"] != metrics["2"]["architecture"]
    assert 0.7 < metrics["1"]["auc"] < metrics["2"]["auc"]
    validation = pd.read_parquet(demo_repository / "fraud" / "validation.parquet")
    assert 0.01 < validation[LABEL].mean() < 0.1  # imbalanced, as fraud is
    reference = pd.read_parquet(demo_repository / "fraud" / "1" / "reference.parquet")
    assert LABEL not in reference and len(reference) == 2_000


def test_demo_build_is_deterministic_by_seed(demo_repository, tmp_path):
    build_demo_repository(tmp_path)
    for relative in ("fraud/1/model.onnx", "fraud/2/model.onnx", "fraud/2/preprocessor.json", "fraud/config.yaml"):
        assert (tmp_path / relative).read_bytes() == (demo_repository / relative).read_bytes(), relative
