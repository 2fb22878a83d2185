"""What a load, unload or traffic change turns an application's args into, and what it refuses."""

from __future__ import annotations

import shutil

import pytest

from graphs.champion_challenger import build_app
from serve_app.config import TrafficSettings
from serve_app.errors import Conflict, InvalidInput, ModelNotFound, RepositoryError
from serve_app.model_control import ModelControl
from serve_app.repository import ModelRepository


@pytest.fixture
def repository(fraud_repository, demo_repository):
    shutil.copytree(fraud_repository / "fraud" / "2", fraud_repository / "fraud" / "3")
    shutil.copytree(demo_repository / "dense", fraud_repository / "dense")
    return fraud_repository


def control(repository, served: dict, traffic: dict | None = None, live: dict | None = None) -> ModelControl:
    args = {"repository": str(repository), "models": sorted(served)}
    if traffic is not None:
        args["experiments"] = {"fraud": {"traffic": traffic}}
    live = {m: TrafficSettings.model_validate(t) for m, t in (live or {}).items()}
    return ModelControl(args, served, live)


def test_load_adds_a_version_and_the_graph_serves_it(repository):
    args = control(repository, {"fraud": [1, 2], "dense": [1]}).load("fraud", 3)
    assert args["versions"] == {"fraud": [1, 2, 3]} and args["models"] == ["dense", "fraud"]
    served = ModelRepository(repository).check(args["models"], args["versions"])
    assert [(v.name, v.version) for v in served] == [("dense", 1), ("fraud", 1), ("fraud", 2), ("fraud", 3)]
    build_app({**args, "experiments": {"fraud": {"traffic": {"champion": 1}}}})  # a graph Serve can deploy


def test_load_without_a_version_follows_the_policy_and_adds_an_unserved_model(repository):
    args = control(repository, {"fraud": [1, 2]}).load("dense")
    assert args["models"] == ["dense", "fraud"] and "dense" not in args.get("versions", {})
    assert control(repository, {"fraud": [2, 3]}).load("fraud") is None  # latest 2: served already
    assert control(repository, {"fraud": [1, 2]}).load("fraud")["models"] == ["fraud"]  # picks up v3


def test_unload_removes_a_version_or_a_model(repository):
    served = {"fraud": [1, 2, 3], "dense": [1]}
    assert control(repository, served).unload("fraud", 2)["versions"] == {"fraud": [1, 3]}
    assert control(repository, served).unload("dense")["models"] == ["fraud"]


def test_what_would_break_serving_is_refused(repository):
    traffic = {"champion": 1, "challenger": 2, "challenger_weight": 0.1}
    live = {"fraud": {"champion": 2}}  # promoted since it was deployed
    with pytest.raises(Conflict, match=r"fraud v1 is the experiment's configured champion"):
        control(repository, {"fraud": [1, 2, 3]}, traffic, live).unload("fraud", 1)
    with pytest.raises(Conflict, match=r"fraud v2 is the experiment's configured challenger"):
        control(repository, {"fraud": [1, 2, 3]}, traffic, live).unload("fraud", 2)
    with pytest.raises(Conflict, match=r"fraud v3 is the experiment's live champion"):
        control(repository, {"fraud": [1, 2, 3]}, None, {"fraud": {"champion": 3}}).unload("fraud", 3)
    with pytest.raises(Conflict, match=r"fraud v2 is the only version of 'fraud' serving: load another first"):
        control(repository, {"fraud": [2], "dense": [1]}).unload("fraud", 2)
    with pytest.raises(Conflict, match=r"model 'fraud' has an experiment"):
        control(repository, {"fraud": [1, 2], "dense": [1]}, traffic).unload("fraud")
    with pytest.raises(Conflict, match=r"'dense' is the only model this application serves"):
        control(repository, {"dense": [1]}).unload("dense")
    with pytest.raises(Conflict, match=r"fraud v2 is already loaded"):
        control(repository, {"fraud": [1, 2]}).load("fraud", 2)
    with pytest.raises(Conflict, match=r"graph has no experiments"):
        control(repository, {"fraud": [1, 2]}).set_traffic("fraud", {"champion": 1})


def test_bad_names_and_versions_are_named(repository):
    served = {"fraud": [1, 2]}
    with pytest.raises(InvalidInput, match=r"model name '\.\./fraud': letters, digits"):
        control(repository, served).load("../fraud", 1)
    with pytest.raises(ModelNotFound, match=r"model 'nope' is not in the repository"):
        control(repository, served).load("nope")
    with pytest.raises(ModelNotFound, match=r"model 'fraud' has no version 9 in the repository"):
        control(repository, served).load("fraud", 9)
    with pytest.raises(ModelNotFound, match=r"fraud v3 is not loaded \(loaded: \[1, 2\]\)"):
        control(repository, served).unload("fraud", 3)
    with pytest.raises(ModelNotFound, match=r"model 'dense' is not loaded"):
        control(repository, served).unload("dense")
    traffic = {"champion": 1}
    with pytest.raises(InvalidInput, match=r"traffic: field 'challenger_weight'"):
        control(repository, served, traffic).set_traffic("fraud", {"champion": 1, "challenger_weight": 2})
    with pytest.raises(ModelNotFound, match=r"no version\(s\) \[7\]"):
        control(repository, served, traffic).set_traffic("fraud", {"champion": 1, "challenger": 7})


def test_a_broken_version_is_refused_at_load(repository):
    (repository / "fraud" / "3" / "model.onnx").unlink()
    with pytest.raises(Exception, match=r"fraud/3: no model.onnx"):
        control(repository, {"fraud": [1, 2]}).load("fraud", 3)


def test_set_traffic_starts_the_experiment_anew_with_its_versions(repository):
    traffic = {"champion": 1, "challenger": 2, "challenger_weight": 0.1}
    args = control(repository, {"fraud": [1, 2]}, traffic).set_traffic(
        "fraud", {"champion": 1, "challenger": 3, "challenger_weight": 0.05, "shadows": [2], "shadow_fraction": 1.0}
    )
    assert args["experiments"]["fraud"]["traffic"]["challenger"] == 3
    assert ModelRepository(repository).available_versions("fraud") == [1, 2, 3]


def test_the_versions_arg_is_checked_like_a_version_policy(repository):
    repo = ModelRepository(repository)
    assert [v.version for v in repo.check(["fraud"], {"fraud": [3, 1]})] == [1, 3]
    with pytest.raises(RepositoryError, match=r"args field 'versions\.fraud': version\(s\) \[9\] not found"):
        repo.check(["fraud"], {"fraud": [9]})
    with pytest.raises(RepositoryError, match=r"args field 'versions': models \['dense'\] are not among those served"):
        repo.check(["fraud"], {"dense": [1]})
