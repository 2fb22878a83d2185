"""What ops watch, on an app with an experiment, a shadow and drift monitoring: Prometheus metrics
scraped from Ray after traffic, the status page rendered by headless Chromium with data in every
chart (a screenshot is kept), and the router's one structured line per request at debug level."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from ray import serve

from serve_app.demo import request_columns, synthetic_transactions
from serve_app.protocol.rest import request_body
from tests.conftest import ADMIN_TOKEN
from tests.helpers import metric_total, replica_log_lines, scrape_metrics, serve_deploy

APP = "ops"
PREFIX = f"/{APP}"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(__file__).parents[2] / "test-output"
LOG_BUFFER = "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"
CHARTS = ("traffic", "experiment", "latency", "batching", "drift", "shadow")


@pytest.fixture(scope="module")
def ops_app(ray_cluster, demo_repository, tmp_path_factory):
    """fraud v1 champion, v2 challenger at 50%, v3 (a copy of v2) shadowing every request, drift
    checked every 50 rows; the router logs at debug level."""
    folder = tmp_path_factory.mktemp("ops")
    root = folder / "repository"
    shutil.copytree(demo_repository / "fraud", root / "fraud")
    shutil.copytree(root / "fraud" / "2", root / "fraud" / "3")
    traffic = {"champion": 1, "challenger": 2, "challenger_weight": 0.5, "shadows": [3], "shadow_fraction": 1.0}
    application = {
        "name": APP,
        "route_prefix": PREFIX,
        "import_path": "graphs.champion_challenger:build_app",
        "args": {
            "repository": str(root),
            "storage_uri": str(folder / "storage"),
            "models": ["fraud"],
            "experiments": {"fraud": {"traffic": traffic}},
            "drift": {"fraud": {"window_size": 50, "min_window_size": 20}},
        },
        # Each line written at once: Ray's throughput mode (RAY_SERVE_ENV) buffers 1,000 request-path lines.
        "deployments": [
            {
                "name": "Router",
                "logging_config": {"log_level": "DEBUG", "encoding": "JSON"},
                "ray_actor_options": {"runtime_env": {"env_vars": {LOG_BUFFER: "1"}}},
            }
        ],
    }
    serve_deploy(ray_cluster.dashboard_url, application, folder / "ops.yaml", lambda: True)
    ids = []
    with httpx.Client(base_url=ray_cluster.http_url + PREFIX, timeout=60) as http:
        for i in range(240):
            body = request_body(request_columns(synthetic_transactions(1, seed=500 + i)))
            response = http.post("/v2/models/fraud/infer", json=body, headers={"x-routing-key": f"user-{i}"})
            assert response.status_code == 200, response.text
            ids.append((response.json()["id"], response.headers["x-serve-arm"]))
        missing = http.post("/v2/models/fraud/versions/9/infer", json=body)
        assert missing.status_code == 404
    yield {"url": ray_cluster.http_url + PREFIX, "ids": ids}
    serve.delete(APP)


def _total(series: dict, name: str, **labels) -> float:
    """This app's total of a metric."""
    return metric_total(series, APP, name, **labels)


def _metric_problems(series: dict) -> list[str]:
    """What is wrong with the scraped metrics after the module's 240 requests (empty: all is right)."""
    problems = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    champion = _total(series, "ray_serve_app_requests_total", model="fraud", version=1, arm="champion")
    challenger = _total(series, "ray_serve_app_requests_total", model="fraud", version=2, arm="challenger")
    shadowed = _total(series, "ray_serve_app_shadow_requests_total", model="fraud", version=3)
    expect(champion + challenger == 240 and 60 < challenger < 180, f"answers {champion} + {challenger}")
    expect(_total(series, "ray_serve_app_request_failures_total", model="fraud") == 0, "failures")
    latencies = _total(series, "ray_serve_app_request_latency_ms_count", model="fraud", version=1)
    expect(latencies == champion, f"latency count {latencies}")
    expect(
        shadowed == 240 and _total(series, "ray_serve_app_shadow_failures_total", model="fraud") == 0,
        "shadow",
    )
    # v3 is v2's copy: it decides as v2 does, and differs from v1 on a few of v1's rows at most
    disagreed = _total(series, "ray_serve_app_shadow_disagreements_total", model="fraud", version=3)
    compared = _total(series, "ray_serve_app_shadow_compared_rows_total", model="fraud", version=3)
    expect(compared == 240 and disagreed < compared * 0.2, f"disagreements {disagreed} of {compared} rows")
    for version, answered_by in ((1, champion), (2, challenger), (3, shadowed)):
        rows = _total(series, "ray_serve_app_inference_count_total", model="fraud", version=version)
        calls = _total(series, "ray_serve_app_execution_count_total", model="fraud", version=version)
        expect(rows == answered_by and 1 <= calls <= rows, f"v{version}: {rows} rows, {calls} calls")
        computed = _total(series, "ray_serve_app_compute_ms_count", model="fraud", version=version)
        expect(computed == calls, f"v{version}: {computed} compute times")
        expect(
            _total(series, "ray_serve_app_queue_ms_count", model="fraud", version=version) >= 1,
            "queue times",
        )
    weights = {
        labels["arm"]: v
        for labels, v in series.get("ray_serve_app_experiment_weight", [])
        if labels.get("application") == APP and labels.get("model") == "fraud"
    }
    expect(weights == {"champion": 0.5, "challenger": 0.5}, f"weights {weights}")
    drift = series.get("ray_serve_app_drift_p_value", [])
    expect(any(labels.get("application") == APP for labels, _ in drift), "drift p-values")
    return problems


def test_metrics_by_model_version_and_arm_after_traffic(ops_app, ray_cluster):
    deadline = time.monotonic() + 90  # Ray exports each process's metrics every few seconds
    while (problems := _metric_problems(scrape_metrics(ray_cluster.metrics_url))) and time.monotonic() < deadline:
        time.sleep(2)
    assert problems == []


def _dashboard_dom(url: str, screenshot: Path) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1500",
        "--virtual-time-budget=15000",
    ]
    profile = screenshot.parent / "chromium-profile"
    subprocess.run(
        [CHROMIUM, *flags, f"--user-data-dir={profile}", f"--screenshot={screenshot}", url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [CHROMIUM, *flags, f"--user-data-dir={profile}", "--dump-dom", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return dom.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_status_page_renders_every_chart_with_data_in_headless_chromium(ops_app):
    with httpx.Client(base_url=ops_app["url"], timeout=30) as http:
        data = http.get("/dashboard/data").json()
        page = http.get("/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # every asset is local
    fraud = data["models"]["fraud"]
    assert {(a["version"], a["arm"]) for a in fraud["arms"]} == {(1, "champion"), (2, "challenger")}
    assert fraud["drift"] and fraud["batching"] and fraud["shadows"][0]["agreement"] is not None

    OUTPUT.mkdir(exist_ok=True)
    screenshot = OUTPUT / "dashboard.png"
    dom = _dashboard_dom(f"{ops_app['url']}/dashboard?refresh_s=2", screenshot)
    for chart in CHARTS:
        card = re.search(rf'<div class="card" id="fraud-{chart}">(.*?)</div>\s*(?=<div class="card"|</div>)', dom, re.S)
        assert card, f"no {chart} card in the page"
        points = [int(n) for n in re.findall(r'data-points="(\d+)"', card.group(1))]
        assert points and min(points) > 0, f"the {chart} chart has no data: {card.group(1)[:300]}"
    assert fraud["experiment"]["history_log"][0]["action"] == "start"
    history = re.search(r'<div class="card" id="fraud-history">(.*?)</table>', dom, re.S)
    assert history and "<td>start</td><td>config</td>" in history.group(1), "no experiment history on the page"
    assert screenshot.stat().st_size > 10_000
    print(f"status page screenshot: {screenshot}")


def test_one_structured_log_line_per_request_at_debug_level(ops_app):
    wanted = dict(ops_app["ids"][:20])
    found = {}
    deadline = time.monotonic() + 30
    while len(found) < len(wanted) and time.monotonic() < deadline:
        for line in replica_log_lines(APP):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            match = re.search(r"id=(\w+)", record.get("message", ""))
            if record.get("levelname") == "DEBUG" and match and match.group(1) in wanted:
                found[match.group(1)] = record["message"]
        time.sleep(1)
    assert found.keys() == wanted.keys()
    for request_id, message in found.items():
        assert f"arm={wanted[request_id]}" in message and re.search(r"latency_ms=\d+\.\d+", message), message


def test_a_promotion_shows_in_the_decision_and_weight_metrics(ops_app, ray_cluster):
    """Last in this module: it changes the app's experiment."""
    with httpx.Client(base_url=ops_app["url"], timeout=30) as http:
        response = http.post(
            "/v2/models/fraud/experiment/promote",
            json={"reason": "ops test"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 90
    while True:
        series = scrape_metrics(ray_cluster.metrics_url)
        promoted = _total(series, "ray_serve_app_experiment_decisions_total", model="fraud", decision="promote")
        weights = {
            (labels["version"], labels["arm"]): v
            for labels, v in series["ray_serve_app_experiment_weight"]
            if labels.get("application") == APP
        }
        if (promoted == 1 and weights.get(("2", "champion")) == 1.0) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert promoted == 1
    assert weights == {("2", "champion"): 1.0, ("1", "champion"): 0.0, ("2", "challenger"): 0.0}
