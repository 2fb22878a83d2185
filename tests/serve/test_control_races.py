"""No lost updates: management calls fired at once, through two routers, each take effect or are
refused with 409 (compare-and-set on the config's version); none silently undoes another."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

from serve_app import ray_compat
from serve_app.onboarding import register
from tests.conftest import ADMIN_TOKEN
from tests.helpers import graph_application, serve_deploy, wait_until

pytestmark = pytest.mark.live_changes  # make test-live-changes: a session of its own

APP = "races"
PREFIX = "/races"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SPLIT = {"champion": 1, "challenger": 2, "challenger_weight": 0.5}


@pytest.fixture(scope="module")
def deployed(ray_cluster, demo_repository, tmp_path_factory):
    root = tmp_path_factory.mktemp("races") / "repository"
    shutil.copytree(demo_repository / "fraud", root / "fraud")
    register(root, "fraud", root / "fraud" / "2" / "model.onnx")  # v3, on disk, not served
    args = {
        "repository": str(root),
        "models": ["fraud"],
        "versions": {"fraud": [1, 2]},
        "experiments": {"fraud": {"traffic": SPLIT}},
        "num_replicas_ingress": 2,
        "in_router": ["fraud"],
    }
    application = graph_application(APP, args, runtime_env={"env_vars": {"SERVE_APP_ADMIN_TOKEN": ADMIN_TOKEN}})
    url = ray_cluster.http_url + PREFIX

    def ready() -> bool:
        return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200

    serve_deploy(ray_cluster.dashboard_url, application, tmp_path_factory.mktemp("races") / "races.yaml", ready)
    yield url
    serve.delete(APP)


def _deployed_args() -> dict:
    return ray_compat.serve_instance_details()["applications"][APP]["deployed_app_config"]["args"]


def test_changes_at_once_each_take_effect_or_are_refused_with_409(deployed, reliability):
    row = reliability("No lost updates", "a load and a traffic change fired at once through two routers")
    traffic = {**SPLIT, "challenger_weight": 0.3}
    changes = {
        "load v3": ("POST", "/v2/repository/models/fraud/load", {"parameters": {"version": 3}}),
        "traffic 0.3": ("PUT", "/v2/models/fraud/experiment/traffic", traffic),
    }
    with httpx.Client(base_url=deployed, timeout=120) as http, ThreadPoolExecutor(len(changes)) as pool:
        sent = {name: pool.submit(http.request, *c[:2], json=c[2], headers=AUTH) for name, c in changes.items()}
        answers = {name: future.result() for name, future in sent.items()}
    for name, answer in answers.items():
        assert answer.status_code in (200, 202, 409), (name, answer.text)
        if answer.status_code == 409:
            assert "nothing changed" in answer.json()["error"], answer.text
    took = [name for name, answer in answers.items() if answer.status_code != 409]
    row.measured["answers"] = ", ".join(f"{name}: {answer.status_code}" for name, answer in answers.items())
    assert took, {name: a.text for name, a in answers.items()}
    assert wait_until(lambda: serve.status().applications[APP].status == "RUNNING", 180)
    args = _deployed_args()
    effects = {
        "load v3": 3 in args.get("versions", {}).get("fraud", []),
        "traffic 0.3": args["experiments"]["fraud"]["traffic"]["challenger_weight"] == 0.3,
    }
    for name in changes:  # what was answered 200/202 is there; what was refused is not
        assert effects[name] == (name in took), (name, answers[name].text, args)
