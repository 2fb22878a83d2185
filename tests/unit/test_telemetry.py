"""The router's own counts behind the status page: per version and arm, and per shadow version."""

from __future__ import annotations

from serve_app.telemetry import LATENCY_WINDOW, RequestStats, disagrees


def test_a_shadow_disagrees_when_its_decision_differs():
    assert disagrees(0.2, 0.7) is True and disagrees(0.7, 0.9) is False and disagrees(0.49, 0.1) is False
    assert disagrees(None, 0.3) is None and disagrees(0.3, None) is None


def test_counts_and_percentiles_per_version_and_arm():
    stats = RequestStats()
    for latency in range(1, 101):
        stats.request("fraud", 1, "champion", float(latency), ok=True)
    stats.request("fraud", 1, "champion", 999.0, ok=False)  # a failure counts, its latency does not
    stats.request("fraud", 2, "challenger", 5.0, ok=True)
    stats.shadow("fraud", 3, disagreed=True, ok=True)
    stats.shadow("fraud", 3, disagreed=False, ok=True)
    stats.shadow("fraud", 3, disagreed=None, ok=False)
    fraud = stats.snapshot()["fraud"]
    champion, challenger = fraud["arms"]
    assert (champion["version"], champion["arm"], champion["requests"], champion["failures"]) == (1, "champion", 101, 1)
    assert champion["p50_ms"] == 50.5 and champion["p99_ms"] == 99.01
    assert challenger["p50_ms"] == challenger["p99_ms"] == 5.0
    assert fraud["shadows"] == [
        {"version": 3, "calls": 3, "failures": 1, "compared": 2, "disagreements": 1, "agreement": 0.5}
    ]


def test_the_latency_window_keeps_the_latest_answers():
    stats = RequestStats()
    for _ in range(LATENCY_WINDOW):
        stats.request("m", 1, "direct", 1000.0, ok=True)
    for _ in range(LATENCY_WINDOW):
        stats.request("m", 1, "direct", 1.0, ok=True)
    arm = stats.snapshot()["m"]["arms"][0]
    assert arm["requests"] == 2 * LATENCY_WINDOW and arm["p99_ms"] == 1.0
