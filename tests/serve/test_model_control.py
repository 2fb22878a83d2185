"""Live updates under traffic: a version registered, loaded, made challenger and shadow, and an old
one unloaded through the repository API, then the same app changed by `serve deploy`; a client
sending all along sees no failure. Bad load/unload requests change nothing."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
import tritonclient.http
from ray import serve
from tritonclient.utils import InferenceServerException

from serve_app import ray_compat
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.onboarding import register
from serve_app.protocol.rest import request_body
from tests.conftest import ADMIN_TOKEN
from tests.helpers import Traffic, graph_application, send_change, serve_deploy, wait_until

pytestmark = pytest.mark.live_changes  # make test-live-changes: a session of its own

APP = "control"
PREFIX = "/control"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BODY = request_body(request_columns(synthetic_transactions(1, seed=81)))
VERSION_2, VERSION_3 = {"parameters": {"version": 2}}, {"parameters": {"version": 3}}


@pytest.fixture(scope="module")
def deployed(ray_cluster, demo_repository, tmp_path_factory):
    root = tmp_path_factory.mktemp("control") / "repository"
    shutil.copytree(demo_repository / "fraud", root / "fraud")
    traffic = {"champion": 1, "challenger": 2, "challenger_weight": 0.5}
    args = {
        "repository": str(root),
        "storage_uri": str(tmp_path_factory.mktemp("control-storage")),
        "models": ["fraud"],
        "experiments": {"fraud": {"traffic": traffic}},
        "preprocessing": "replica",  # the other layout: a preprocessor replica per version
    }
    batching = {"max_batch_size": 8, "batch_wait_timeout_s": 0.002}
    overrides = [{"name": "experiments", "user_config": {"traffic": {"fraud": traffic}}}]  # as configs/ do
    overrides += [{"name": f"fraud-v{v}-model", "user_config": batching} for v in (1, 2)]
    token = {"env_vars": {"SERVE_APP_ADMIN_TOKEN": ADMIN_TOKEN}}
    application = graph_application(APP, args, runtime_env=token, deployments=overrides)
    config_path = tmp_path_factory.mktemp("control-config") / "control.yaml"
    url = ray_cluster.http_url + PREFIX

    def ready() -> bool:
        return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200

    serve_deploy(ray_cluster.dashboard_url, application, config_path, ready)
    yield {
        "root": root,
        "url": url,
        "application": application,
        "config": config_path,
        "ready": ready,
        "dashboard": ray_cluster.dashboard_url,
    }
    serve.delete(APP)


def index(http: httpx.Client) -> dict[str, str]:
    return {e["version"]: e["state"] for e in http.post("/v2/repository/index").json() if e["name"] == "fraud"}


def test_bad_control_requests_are_refused_and_change_nothing(deployed):
    with httpx.Client(base_url=deployed["url"], timeout=30) as http:
        before = index(http)
        assert before == {"1": "READY", "2": "READY"}
        refused = [
            ("load", "fraud", None, None, 401),  # no token
            ("load", "nope", AUTH, None, 404),
            ("load", "fraud", AUTH, {"parameters": {"version": 9}}, 404),
            ("load", "fraud", AUTH, {"parameters": {"version": 2}}, 409),  # already loaded
            ("load", "fraud", AUTH, {"parameters": {"config": "{}"}}, 400),  # changes go through register
            ("load", "fraud", AUTH, {"parameters": {"version": "2"}}, 400),
            ("load", "..%5Cfraud", AUTH, None, 400),  # path characters
            ("unload", "fraud", AUTH, {"parameters": {"version": 1}}, 409),  # the champion
            ("unload", "fraud", AUTH, None, 409),  # the model has an experiment
        ]
        for action, model, headers, body, status in refused:
            response = http.post(f"/v2/repository/models/{model}/{action}", json=body, headers=headers)
            assert response.status_code == status, (action, model, body, response.text)
            assert response.json()["error"]
        triton = tritonclient.http.InferenceServerClient(deployed["url"].removeprefix("http://"))
        triton.load_model("fraud", headers=AUTH)  # loaded already: nothing to do
        with pytest.raises(InferenceServerException, match="model 'fraud' has an experiment"):
            triton.unload_model("fraud", headers=AUTH)
        with pytest.raises(InferenceServerException, match="a valid 'Authorization: Bearer <token>' header"):
            triton.load_model("fraud")
        response = http.put("/v2/models/fraud/experiment/traffic", json={"champion": 7}, headers=AUTH)
        assert response.status_code == 404 and "no version(s) [7]" in response.json()["error"]
        assert index(http) == before


def test_a_new_version_goes_live_under_traffic_without_a_failed_request(deployed):
    root = deployed["root"]
    with httpx.Client(base_url=deployed["url"], timeout=120) as http, Traffic(deployed["url"], BODY) as client:
        time.sleep(1)
        register(root, "fraud", root / "fraud" / "2" / "model.onnx")  # v3, on disk, not yet served
        assert index(http)["3"] == "UNAVAILABLE"
        start = time.perf_counter()
        loaded = settled(send_change(http, "POST", "/v2/repository/models/fraud/load", json=VERSION_3, headers=AUTH))
        print(f"load took {time.perf_counter() - start:.1f} s")
        assert loaded["added"] == ["fraud-v3-model", "fraud-v3-preprocessor"]
        assert index(http) == {"1": "READY", "2": "READY", "3": "READY"}
        assert http.post("/v2/models/fraud/versions/3/infer", json=BODY).status_code == 200
        # The old graph served during the load: every deployment but the experiment store (the single
        # owner of its state) starts its replacements before its old replicas stop.
        deployments = ray_compat.serve_instance_details()["applications"][APP]["deployments"]
        surge = {name: d["deployment_config"]["max_surge_percent"] for name, d in deployments.items()}
        assert surge.pop("experiments") == 0 and set(surge.values()) == {100}, surge

        challenger = {"champion": 1, "challenger": 3, "challenger_weight": 0.5, "shadows": [2], "shadow_fraction": 1.0}
        settled(send_change(http, "PUT", "/v2/models/fraud/experiment/traffic", json=challenger, headers=AUTH))
        assert wait_until(
            lambda: http.get("/v2/models/fraud/experiment").json()["traffic"]["challenger"]["version"] == 3, 60
        )
        seen = client.answers.copy()
        assert wait_until(lambda: client.answers["3"] > seen["3"], 60)  # the challenger answers now

        unmirrored = {**challenger, "shadows": []}
        settled(send_change(http, "PUT", "/v2/models/fraud/experiment/traffic", json=unmirrored, headers=AUTH))
        unloaded = settled(
            send_change(http, "POST", "/v2/repository/models/fraud/unload", json=VERSION_2, headers=AUTH)
        )
        assert unloaded["removed"] == ["fraud-v2-model", "fraud-v2-preprocessor"]
        assert unloaded["overrides_dropped"] == ["fraud-v2-model"]
        kept = ray_compat.serve_instance_details()["applications"][APP]["deployed_app_config"]["deployments"]
        assert [o["name"] for o in kept] == ["experiments", "fraud-v1-model"]  # the config's other overrides stay
        assert kept[0]["user_config"]["traffic"]["fraud"]["challenger"] == 3  # the API's traffic, not the file's
        assert index(http) == {"1": "READY", "2": "UNAVAILABLE", "3": "READY"}
        time.sleep(1)
    assert client.failures == [] and sum(client.answers.values()) > 50, (client.failures[:5], client.answers)


def test_serve_deploy_with_a_changed_config_goes_live_without_a_failed_request(deployed):
    application = deployed["application"]
    args = {**application["args"], "versions": {"fraud": [1, 3]}}
    traffic = {"champion": 1, "challenger": 3, "challenger_weight": 1.0}
    experiments = {"name": "experiments", "user_config": {"traffic": {"fraud": traffic}}}
    changed = {
        **application,
        "args": {**args, "experiments": {"fraud": {"traffic": traffic}}},
        "deployments": [experiments, application["deployments"][1]],
    }
    with httpx.Client(base_url=deployed["url"], timeout=60) as http, Traffic(deployed["url"], BODY) as client:
        time.sleep(1)

        def challenger_takes_all() -> bool:
            summary = http.get("/v2/models/fraud/experiment").json()
            return deployed["ready"]() and summary["traffic"]["challenger"]["weight"] == 1.0

        serve_deploy(deployed["dashboard"], changed, deployed["config"], challenger_takes_all)
        seen = client.answers.copy()
        assert wait_until(lambda: client.answers["3"] >= seen["3"] + 10, 60)
        assert client.answers["1"] == seen["1"]  # the challenger takes every request
    assert client.failures == [] and sum(client.answers.values()) > 20, (client.failures[:5], client.answers)


def settled(response: httpx.Response) -> dict:
    """A control call's answer once the application runs again: 200 (all up), or 202 (still
    loading after the server's bounded wait, as on a busy machine) and then wait for it."""
    assert response.status_code in (200, 202), response.text
    if response.status_code == 202:
        assert response.json()["state"] == "LOADING"
        assert wait_until(lambda: serve.status().applications[APP].status == "RUNNING", 180)
    return response.json()
