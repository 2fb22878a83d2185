"""The seed's stories lived end to end by `serve-app simulate` against a real application of the
demo ranker (configs/local.yaml's ranker settings, in the router, windows and samples scaled down):
a shadow judged by NDCG@10, a CTR challenger promoted on its own (and one without a lift that is
not), and drift that runs the real retraining hook once, whose new version then takes traffic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from ray import serve

from serve_app.onboarding import register
from serve_app.ranking import world
from tests.conftest import ADMIN_TOKEN, LOCAL_CONFIG
from tests.helpers import graph_application, serve_deploy

APP = "stories"
ROOT = Path(__file__).parents[2]
HOOK = ROOT / "examples" / "retrain_on_drift.py"
WINDOW = 200  # rows: one candidate of each of 200 ranked requests


@pytest.fixture(scope="module")
def stories(ray_cluster, demo_repository, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stories")
    repository, storage = folder / "repository", folder / "storage"
    shutil.copytree(demo_repository / world.MODEL_NAME, repository / world.MODEL_NAME)
    local = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]["args"]
    url = ray_cluster.http_url + f"/{APP}"
    hook_env = {
        "SERVE_APP_ADMIN_TOKEN": ADMIN_TOKEN,
        "SERVE_APP_URL": url,
        "SERVE_APP_STORAGE": str(storage),
        "SERVE_APP_REPOSITORY": str(repository),
        "RETRAIN_LOG": str(folder / "retrain.jsonl"),
        "PYTHONPATH": str(ROOT),  # the hook's `serve-app` commands run this checkout's code
    }
    drift = {
        **local["drift"][world.MODEL_NAME],
        "window_size": WINDOW,
        # Small windows, and many of them before the drift story: a false alert (about one window
        # pair in a hundred at 0.05) would run the hook in another story. The new platform's
        # windows have p-values far below this.
        "p_val": 0.001,
        "alert": {"command": [sys.executable, str(HOOK)], "pass_env": sorted(hook_env), "timeout_s": 30},
    }
    args = {
        "repository": str(repository),
        "storage_uri": str(storage),
        "models": [world.MODEL_NAME],
        "in_router": [world.MODEL_NAME],
        "experiments": {world.MODEL_NAME: local["experiments"][world.MODEL_NAME]},
        "drift": {world.MODEL_NAME: drift},
    }
    application = graph_application(APP, args, runtime_env={"env_vars": hook_env})

    def ready() -> bool:
        return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200

    serve_deploy(ray_cluster.dashboard_url, application, folder / "stories.yaml", ready)
    yield {"url": url, "storage": str(storage), "repository": repository, "log": folder / "retrain.jsonl"}
    serve.delete(APP)


def simulate(stories: dict, scenario: str, *options: str) -> dict:
    """`serve-app simulate` as a person runs it; what it found (its --json line)."""
    command = [sys.executable, "-m", "serve_app.cli", "simulate", "--scenario", scenario, "--url", stories["url"]]
    command += ["--storage", stories["storage"], "--minutes", "4", "--json", *options]
    env = {**os.environ, "SERVE_APP_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.stories
def test_the_shadow_is_judged_by_ndcg_at_10_as_the_ground_truth_implies(stories, demo_repository):
    found = simulate(stories, "shadow", "--requests", "300")
    ndcg = found["ndcg"]
    metrics = json.loads((demo_repository / world.MODEL_NAME / "metrics.json").read_text())
    margin = metrics["2"]["ndcg@10"] - metrics["1"]["ndcg@10"]  # on 2000 validation requests
    assert ndcg["labelled"] >= 250 and ndcg["shadow"] > ndcg["production"]
    # 300 requests of the same truth: within sampling error of the validation margin (about 0.015).
    assert abs(ndcg["delta"] - margin) < 0.06, (ndcg, margin)


@pytest.mark.stories
def test_a_challenger_without_a_lift_is_not_promoted(stories, demo_repository):
    same = demo_repository / world.MODEL_NAME / "1"
    copy = register(stories["repository"], world.MODEL_NAME, same / "model.onnx", same / "preprocessor.json")
    assert copy["version"] == 3
    found = simulate(stories, "challenger", "--requests", "600", "--seed", "5", "--challenger", "3")
    assert found["status"] == "running" and found["champion_now"] == 1
    assert min(arm["outcomes"] for arm in found["arms"].values()) >= 200  # the test had its samples


@pytest.mark.stories
def test_a_ctr_challenger_with_a_lift_is_promoted_on_its_own(stories):
    found = simulate(stories, "challenger", "--requests", "1500", "--seed", "5")
    assert found["status"] == "promoted" and found["champion_now"] == 2, found
    arms = found["arms"]
    assert arms["challenger"]["mean"] > arms["champion"]["mean"] and found["p_value"] < 0.05


@pytest.mark.stories
def test_drift_alerts_once_retrains_once_and_the_new_version_takes_traffic(stories):
    found = simulate(stories, "drift", "--requests", "3000", "--warm-requests", "40")
    assert len(found["alerts"]) == 1 and found["new_version"] == 4 and found["new_version_requests"] > 0
    # Retrained on what was served since the drift began: its own windows are clean.
    assert found["new_version_windows"] >= 1 and found["new_version_clean_windows"] == found["new_version_windows"]
    steps = [json.loads(line) for line in stories["log"].read_text().splitlines()]
    assert [s["step"] for s in steps] == ["alert", "trained", "registered", "started"], steps
    assert steps[-1]["traffic"]["challenger"] == 4 and (stories["repository"] / world.MODEL_NAME / "4").is_dir()


def test_a_server_without_the_model_is_told_how_to_build_it(served):
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "simulate", "--scenario", "shadow", "--url", served],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "serves no model 'ranker': build it with `serve-app demo build`" in done.stderr
