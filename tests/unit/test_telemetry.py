"""The router's own counts behind the status page: per version and arm, and per shadow version."""

from __future__ import annotations

import numpy as np

from serve_app.scores import disagreements, row_scores
from serve_app.telemetry import LATENCY_WINDOW, RequestStats


def test_a_shadow_disagrees_row_by_row_where_its_decision_differs():
    production, shadow = np.array([0.2, 0.7, 0.49, 0.5]), np.array([0.7, 0.9, 0.1, 0.49])
    assert disagreements(production, shadow, threshold=0.5) == (4, 2)  # rows 0 and 3 differ
    assert disagreements(production, shadow, threshold=0.15) == (4, 1)  # the model's own threshold
    assert disagreements(None, shadow, 0.5) == disagreements(production, shadow[:2], 0.5) == (0, 0)


def test_a_score_per_row_is_the_first_value_of_each_row_of_the_first_numeric_output():
    outputs = {"label": np.array([b"x", b"y"], dtype=object), "p": np.array([[0.75, 0.25], [0.1, 0.9]], np.float32)}
    assert row_scores(outputs).tolist() == [0.75, 0.10000000149011612] and row_scores(outputs, rows=3) is None
    assert row_scores({"s": np.array([b"x"], dtype=object)}) is None


def test_counts_and_percentiles_per_version_and_arm():
    stats = RequestStats()
    for latency in range(1, 101):
        stats.request("fraud", 1, "champion", float(latency), ok=True)
    stats.request("fraud", 1, "champion", 999.0, ok=False)  # a failure counts, its latency does not
    stats.request("fraud", 2, "challenger", 5.0, ok=True)
    stats.shadow("fraud", 3, ok=True, compared=1, disagreed=1)
    stats.shadow("fraud", 3, ok=True, compared=3, disagreed=0)  # a 3-row request: each row compared
    stats.shadow("fraud", 3, ok=False)
    fraud = stats.snapshot()["fraud"]
    champion, challenger = fraud["arms"]
    assert (champion["version"], champion["arm"], champion["requests"], champion["failures"]) == (1, "champion", 101, 1)
    assert champion["p50_ms"] == 50.5 and champion["p99_ms"] == 99.01
    assert challenger["p50_ms"] == challenger["p99_ms"] == 5.0
    assert fraud["shadows"] == [
        {"version": 3, "calls": 3, "failures": 1, "compared": 4, "disagreements": 1, "agreement": 0.75}
    ]


def test_the_latency_window_keeps_the_latest_answers():
    stats = RequestStats()
    for _ in range(LATENCY_WINDOW):
        stats.request("m", 1, "direct", 1000.0, ok=True)
    for _ in range(LATENCY_WINDOW):
        stats.request("m", 1, "direct", 1.0, ok=True)
    arm = stats.snapshot()["m"]["arms"][0]
    assert arm["requests"] == 2 * LATENCY_WINDOW and arm["p99_ms"] == 1.0
