"""The shadow report over a real log: the demo's v1 in production, v2 in shadow, labels as feedback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from serve_app.cli import main
from serve_app.demo import LABEL, request_columns
from serve_app.predlog import FEEDBACK, PREDICTIONS, ParquetLog, tensors_as_json, utc_now
from serve_app.protocol.dataplane import LocalEndpoint
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.shadow.report import compare, load_logs, ndcg_at_k, relevant_items

ROWS = 1_500
NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "shadow_evaluation.ipynb"


@pytest.fixture(scope="module")
def logged(demo_repository, tmp_path_factory) -> tuple[str, pd.DataFrame, dict[int, np.ndarray]]:
    """A storage URI whose log holds v1's production answers, v2's shadow answers and the labels."""
    storage = str(tmp_path_factory.mktemp("shadow-storage"))
    validation = pd.read_parquet(demo_repository / "fraud" / "validation.parquet").head(ROWS)
    repository = ModelRepository(demo_repository)
    scores = {}
    for version in (1, 2):
        model = repository.version("fraud", version)
        endpoint = LocalEndpoint(model, load_runner(model.config, model.model_file))
        scores[version] = endpoint.predict(request_columns(validation))["fraud_probability"]
    log = ParquetLog(storage, "test")
    for i, row in enumerate(validation.itertuples()):
        for version, role in ((1, "champion"), (2, "shadow")):
            failed = role == "shadow" and i % 100 == 0  # a few shadow calls failed
            log.record(
                PREDICTIONS,
                {
                    "request_id": row.transaction_id,
                    "time": utc_now(),
                    "model": "fraud",
                    "version": version,
                    "role": role,
                    "inputs": tensors_as_json({}),
                    "outputs": "{}",
                    "score": None if failed else float(scores[version][i]),
                    "latency_ms": 2.0 + version,
                    "status": "RayTaskError" if failed else "ok",
                },
            )
        log.record(
            FEEDBACK,
            {
                "request_id": row.transaction_id,
                "time": utc_now(),
                "model": "fraud",
                "reward": None,
                "label": str(bool(getattr(row, LABEL))),
                "known": True,
            },
        )
    log.flush()
    return storage, validation, scores


def test_report_compares_shadow_and_production_on_the_same_requests(logged):
    storage, validation, scores = logged
    report = compare(*load_logs(storage, "fraud"))
    entry = report["shadow_versions"]["2"]
    ok = np.arange(ROWS) % 100 != 0
    assert (entry["mirrored"], entry["shadow_failures"], entry["compared"]) == (ROWS, ROWS // 100, ok.sum())
    expected_agreement = np.mean((scores[2][ok] >= 0.5) == (scores[1][ok] >= 0.5))
    assert entry["agreement_rate"] == pytest.approx(expected_agreement)
    y = validation[LABEL].to_numpy()[ok]
    assert entry["auc"]["shadow"] == pytest.approx(roc_auc_score(y, scores[2][ok]), abs=1e-6)
    assert entry["auc"]["production"] == pytest.approx(roc_auc_score(y, scores[1][ok]), abs=1e-6)
    assert entry["auc"]["delta"] > 0  # v2 is the better model
    assert 0 < entry["ks_statistic"] < 1
    assert report["latency_ms"]["shadow v2"]["failures"] == ROWS // 100
    assert report["latency_ms"]["champion v1"]["p50"] == pytest.approx(3.0)


def test_cli_writes_an_html_report_with_plots(logged, tmp_path, capsys):
    storage, _, _ = logged
    out = tmp_path / "report.html"
    assert main(["shadow-report", "--storage", storage, "--model", "fraud", "--out", str(out)]) == 0
    page = out.read_text()
    assert "Shadow report: fraud" in page and page.count("data:image/png;base64,") == 2
    assert '"agreement_rate"' in capsys.readouterr().out
    assert main(["shadow-report", "--storage", storage, "--model", "nope", "--out", str(out)]) == 1


def test_the_notebook_runs_and_shows_the_same_numbers(logged, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    storage, _, _ = logged
    monkeypatch.setenv("SHADOW_STORAGE", storage)  # the kernel inherits this process's environment
    monkeypatch.setenv("SHADOW_MODEL", "fraud")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(
        "".join(output.get("text", "")) + json.dumps(output.get("data", {}))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    report = compare(*load_logs(storage, "fraud"))
    assert f"{report['shadow_versions']['2']['agreement_rate']:.4f}" in text
    assert "image/png" in text


def test_ndcg_at_k_follows_its_definition():
    scores = np.array([0.1, 0.9, 0.5, 0.3])  # ranking: 1, 2, 3, 0
    assert ndcg_at_k(scores, {1}) == pytest.approx(1.0)
    assert ndcg_at_k(scores, {2}) == pytest.approx(1 / np.log2(3))
    assert ndcg_at_k(scores, {0, 1}) == pytest.approx((1 + 1 / np.log2(5)) / (1 + 1 / np.log2(3)))
    assert ndcg_at_k(scores, {0}, k=2) == 0.0
    assert relevant_items("[1, 3]") == {1, 3} and relevant_items("2") == {2}
    assert relevant_items("True") is None and relevant_items("x") is None


def test_rankers_are_compared_by_ndcg(tmp_path):
    """A ranker scores 8 candidates per request; the shadow ranks the relevant one higher more often."""
    rng = np.random.default_rng(0)
    log = ParquetLog(str(tmp_path), "test")
    expected = {"shadow": [], "production": []}
    for i in range(200):
        relevant = int(rng.integers(8))
        production = rng.random(8)
        shadow = production.copy()
        shadow[relevant] += 0.5  # the better ranker
        for version, role, scores in ((1, "champion", production), (2, "shadow", shadow)):
            log.record(
                PREDICTIONS,
                {
                    "request_id": f"q{i}",
                    "time": utc_now(),
                    "model": "ranker",
                    "version": version,
                    "role": role,
                    "inputs": "{}",
                    "outputs": json.dumps({"scores": scores.tolist()}),
                    "score": float(scores[0]),
                    "latency_ms": 1.0,
                    "status": "ok",
                },
            )
            expected[role if role == "shadow" else "production"].append(ndcg_at_k(scores, {relevant}))
        log.record(
            FEEDBACK,
            {
                "request_id": f"q{i}",
                "time": utc_now(),
                "model": "ranker",
                "reward": None,
                "label": str(relevant),
                "known": True,
            },
        )
    log.flush()
    entry = compare(*load_logs(str(tmp_path), "ranker"))["shadow_versions"]["2"]
    assert entry["ndcg"]["labelled"] == 200 and "auc" not in entry
    assert entry["ndcg"]["shadow"] == pytest.approx(np.mean(expected["shadow"]), abs=1e-6)
    assert entry["ndcg"]["production"] == pytest.approx(np.mean(expected["production"]), abs=1e-6)
    assert entry["ndcg"]["delta"] > 0.1


def test_agreement_is_row_by_row_at_the_models_threshold(tmp_path):
    """Two 3-row requests: their first rows agree, two of their other four rows do not."""
    log = ParquetLog(str(tmp_path), "test")
    answers = {"a": ([0.1, 0.6, 0.7], [0.2, 0.4, 0.9]), "b": ([0.9, 0.2, 0.3], [0.8, 0.6, 0.1])}
    for request_id, (production, shadow) in answers.items():
        for version, role, scores in ((1, "champion", production), (2, "shadow", shadow)):
            row = {"request_id": request_id, "time": utc_now(), "model": "m", "version": version, "role": role}
            log.record(
                PREDICTIONS,
                {**row, "inputs": "{}", "outputs": "{}", "score": scores[0], "scores": np.array(scores)}
                | {"latency_ms": 1.0, "status": "ok"},
            )
    log.flush()
    predictions, feedback = load_logs(str(tmp_path), "m")
    entry = compare(predictions, feedback)["shadow_versions"]["2"]
    assert (entry["compared"], entry["compared_rows"], entry["agreement_rate"]) == (2, 6, pytest.approx(4 / 6))
    lenient = compare(predictions, feedback, decision_threshold=0.05)["shadow_versions"]["2"]
    assert lenient["agreement_rate"] == 1.0  # every score is a positive decision at 0.05
