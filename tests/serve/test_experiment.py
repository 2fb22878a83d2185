"""Champion/challenger and shadow over HTTP, on an app of its own: two router replicas, fraud v1 champion,
v2 challenger at 50%, and a v3 shadow whose model raises on every call."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from ray import serve

from graphs.champion_challenger import build_app
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.predlog import PREDICTIONS, read_table
from serve_app.protocol.rest import request_body
from tests.conftest import ADMIN_TOKEN
from tests.helpers import serve_deploy, wait_until

APP = "experiment"
PREFIX = "/experiment"
ROWS = request_body(request_columns(synthetic_transactions(1, seed=61)))
answered: Counter = Counter()
"""Production answers (200s) the client received, by version: the log must hold exactly these."""


def _failing_model() -> onnx.ModelProto:
    """Takes the fraud features but cannot reshape them: ONNX Runtime raises on every call."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["features", "bad_shape"], ["reshaped"]),
            helper.make_node("ReduceSum", ["reshaped", "axis"], ["fraud_probability"], keepdims=0),
        ],
        "failing",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 26])],
        [helper.make_tensor_value_info("fraud_probability", TensorProto.FLOAT, ["batch"])],
        [
            helper.make_tensor("bad_shape", TensorProto.INT64, [2], [0, 5]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def experiment_args(demo_repository, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("experiment") / "repo"
    shutil.copytree(demo_repository, root)
    shutil.copytree(root / "fraud" / "2", root / "fraud" / "3")
    onnx.save(_failing_model(), root / "fraud" / "3" / "model.onnx")
    config_path = root / "fraud" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["runtime"] = {"warmup": False}  # v3 cannot even warm up
    config_path.write_text(yaml.safe_dump(config))
    traffic = {"champion": 1, "challenger": 2, "challenger_weight": 0.5, "shadows": [3], "shadow_fraction": 1.0}
    return {
        "repository": str(root),
        "storage_uri": str(tmp_path_factory.mktemp("experiment-storage")),
        "models": ["fraud"],
        "num_replicas_ingress": 2,  # routing is local to each router; statistics and the log must still add up
        "experiments": {"fraud": {"traffic": traffic, "settings": {"min_samples_per_arm": 30, "mixture_sd": 0.3}}},
    }


@pytest.fixture(scope="module")
def app(ray_cluster, experiment_args):
    serve.run(build_app(experiment_args), name=APP, route_prefix=PREFIX)
    yield
    serve.delete(APP)


def infer(client, key: str | None = None, **body) -> dict:
    headers = {"x-routing-key": key} if key else {}
    response = client.post(f"{PREFIX}/v2/models/fraud/infer", json={**ROWS, **body}, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    answered[answer["model_version"]] += 1
    assert response.headers["x-serve-arm"] == answer["parameters"]["arm"]
    return answer


def summary(client) -> dict:
    return client.get(f"{PREFIX}/v2/models/fraud/experiment").json()


def test_split_follows_the_weights_and_sticks_to_the_key(app, client):
    arms = Counter(infer(client, key=f"user-{i}")["parameters"]["arm"] for i in range(400))
    assert abs(arms["challenger"] / 400 - 0.5) < 4 * np.sqrt(0.25 / 400)  # within four standard errors
    for key in ("user-7", "user-8", "user-9"):
        versions = {infer(client, key=key)["model_version"] for _ in range(5)}
        by_parameter = infer(client, parameters={"routing_key": key})["model_version"]
        assert versions == {by_parameter}


def test_a_shadow_that_raises_never_reaches_the_client(app, client, experiment_args, reliability):
    row = reliability("Faults", "a shadow version raising on every mirrored request")
    # Every request above was mirrored to v3, which raised each time; each client got a 200.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        shadows = read_table(experiment_args["storage_uri"], PREDICTIONS, "fraud").to_pandas().query("role == 'shadow'")
        if len(shadows) >= sum(answered.values()):
            break
        time.sleep(0.5)
    assert len(shadows) == sum(answered.values()) and (shadows["status"] != "ok").all()
    assert set(shadows["version"]) == {3}
    row.measured["answers"] = f"{sum(answered.values())}× 200; the shadow's {len(shadows)} failures logged"


def test_feedback_promotes_the_better_challenger_live(app, client):
    model = serve.get_deployment_handle("fraud-v2-model", app_name=APP)
    pid = model.describe.remote().result()["pid"]
    deadline = time.monotonic() + 60
    while summary(client)["status"] == "running" and time.monotonic() < deadline:
        for i in range(40):
            answer = infer(client, key=f"fb-{time.monotonic()}-{i}")
            reward = 1.0 if answer["model_version"] == "2" else 0.0
            response = client.post(f"{PREFIX}/v2/models/fraud/feedback", json={"id": answer["id"], "reward": reward})
            assert response.status_code == 200 and response.json()["id"] == answer["id"]
        time.sleep(0.2)
    state = summary(client)
    assert state["status"] == "promoted", state
    assert state["traffic"]["champion"]["version"] == 2 and state["history"][-1]["action"] == "promote"
    routed_to_v2 = lambda: {infer(client, key=f"after-{i}")["model_version"] for i in range(20)} == {"2"}  # noqa: E731
    assert wait_until(routed_to_v2, 60)  # each router takes the new traffic at its next poll
    assert model.describe.remote().result()["pid"] == pid  # promoted live: nothing restarted


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"id": "", "reward": 1}, 400, "'id'"),
        ({"id": 5, "reward": 1}, 400, "'id'"),
        ({"id": "x", "reward": "high"}, 400, "'reward' must be a number"),
        ({"id": "x"}, 400, "exactly one"),
        ({"id": "x", "reward": 1, "extra": 2}, 400, "feedback must be an object"),
        ({"id": "never-sent", "reward": 1}, 200, None),
    ],
)
def test_bad_feedback_is_refused_and_unknown_ids_are_kept(app, client, body, status, words):
    response = client.post(f"{PREFIX}/v2/models/fraud/feedback", json=body)
    assert response.status_code == status, response.text
    if words:
        assert words in response.json()["error"]
    else:
        assert response.json() == {"id": "never-sent", "known": False}
        assert summary(client)["unknown_feedback"] >= 1


def test_ops_endpoints_need_the_token(app, client):
    url = f"{PREFIX}/v2/models/fraud/experiment/rollback"
    assert client.post(url).status_code == 401
    assert client.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.post(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json={"reason": "test"})
    assert response.status_code == 200, response.text
    state = summary(client)
    assert state["traffic"]["champion"]["version"] == 1 and state["history"][-1]["who"] == "ops"


def test_a_restart_keeps_the_experiment_and_the_log_is_exact(app, client, experiment_args, reliability):
    row = reliability("Faults", "the app stopped gracefully and started again (two routers)")
    before = summary(client)  # what a restart must keep: the history and the traffic (counts only grow)
    for i in range(5):  # answered just before the stop: only the routers' shutdown flush can log these
        infer(client, key=f"last-{i}")
    serve.delete(APP)  # graceful: routers and the store flush what they hold
    production = read_table(experiment_args["storage_uri"], PREDICTIONS, "fraud").to_pandas()
    production = production[production["role"].isin(["champion", "challenger"])]
    assert len(production) == sum(answered.values())
    assert production["request_id"].is_unique
    assert Counter(production["version"].astype(str)) == answered
    files = Path(experiment_args["storage_uri"]).glob(f"{PREDICTIONS}/model=fraud/*/router-*.parquet")
    assert len({f.name.rsplit("-", 1)[0] for f in files}) == 2  # both router replicas served and logged
    serve.run(build_app(experiment_args), name=APP, route_prefix=PREFIX)
    after = summary(client)
    assert after["history"] == before["history"] and after["traffic"] == before["traffic"]
    row.measured["production rows"] = f"{len(production)} for {sum(answered.values())} answers, ids unique"
    assert after["arms"]["champion"]["requests"] >= before["arms"]["champion"]["requests"] > 0


@pytest.mark.live_changes
def test_weights_change_live_through_serve_deploy(ray_cluster, experiment_args, client, tmp_path):
    """Ops edit the experiments deployment's user_config and `serve deploy` again: no replica restarts."""
    args = {**experiment_args, "storage_uri": str(tmp_path / "storage"), "num_replicas_ingress": 1}
    traffic = {"champion": 1, "challenger": 2, "challenger_weight": 0.0, "shadows": [], "shadow_fraction": 0.0}
    args["experiments"] = {"fraud": {"traffic": traffic}}

    def application(weight: float) -> dict:
        return {
            "name": "weights",
            "route_prefix": "/weights",
            "import_path": "graphs.champion_challenger:build_app",
            "args": args,
            "deployments": [
                {"name": "experiments", "user_config": {"traffic": {"fraud": {**traffic, "challenger_weight": weight}}}}
            ],
        }

    def weight_is(weight: float) -> Callable[[], bool]:
        def check() -> bool:
            response = client.get("/weights/v2/models/fraud/experiment")
            return response.status_code == 200 and response.json()["traffic"]["challenger"]["weight"] == weight

        return check

    def versions() -> set[str]:
        answers = [
            client.post("/weights/v2/models/fraud/infer", json=ROWS, headers={"x-routing-key": f"k{i}"})
            for i in range(30)
        ]
        return {a.json()["model_version"] for a in answers}

    try:
        serve_deploy(ray_cluster.dashboard_url, application(0.0), tmp_path / "weights.yaml", weight_is(0.0))
        model = serve.get_deployment_handle("fraud-v2-model", app_name="weights")
        pid = model.describe.remote().result()["pid"]
        assert wait_until(lambda: versions() == {"1"}, 60)  # routers poll the store once a second
        serve_deploy(ray_cluster.dashboard_url, application(1.0), tmp_path / "weights.yaml", weight_is(1.0))
        assert wait_until(lambda: versions() == {"2"}, 60)
        assert model.describe.remote().result()["pid"] == pid  # reconfigured, not restarted
    finally:
        serve.delete("weights")
