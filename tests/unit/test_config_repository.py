from __future__ import annotations

import shutil

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import ModelConfig, VersionPolicy
from serve_app.errors import ModelNotFound, RepositoryError
from serve_app.repository import ModelRepository

BASE = {
    "name": "m",
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "dims": [-1, 3]}],
    "outputs": [{"name": "y", "datatype": "FP32", "dims": [-1]}],
}


def test_defaults_follow_triton():
    config = ModelConfig.model_validate(BASE)
    assert config.version_policy.latest == 1
    assert config.dynamic_batching.max_batch_size <= config.max_batch_size


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "colour"),
        ({"inputs": [{"name": "x", "datatype": "FP128", "dims": [-1]}]}, "datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "dims": [4, 3]}]}, "batch dimension"),
        ({"max_batch_size": 8, "dynamic_batching": {"max_batch_size": 16}}, "exceeds max_batch_size"),
        ({"version_policy": {"latest": 1, "specific": [1]}}, "exactly one"),
        ({"name": "../etc"}, "name"),
    ],
)
def test_config_refuses(change, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate({**BASE, **change})


def test_version_policy_needs_one_rule():
    with pytest.raises(ValidationError):
        VersionPolicy()


def test_demo_repository_serves_both_versions(demo_repository):
    repo = ModelRepository(demo_repository)
    assert repo.model_names() == ["dense", "echo", "fraud", "ranker"]
    served = repo.served_versions("fraud")
    assert [v.version for v in served] == [1, 2]
    assert [s.name for s in served[0].input_specs][:2] == ["amount", "hour"]
    assert served[0].reference_file is not None


@pytest.fixture
def broken(demo_repository, tmp_path):
    """A private copy of the demo repository to break."""
    root = tmp_path / "repo"
    shutil.copytree(demo_repository, root)
    return root


def _edit_config(root, **changes):
    path = root / "fraud" / "config.yaml"
    document = yaml.safe_load(path.read_text())
    document.update(changes)
    path.write_text(yaml.safe_dump(document))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"instances": {"num_gpu": 1}}, "field 'instances.num_gpu'"),
        ({"max_batch_size": "many"}, "field 'max_batch_size'"),
        ({"name": "other"}, "field 'name'"),
        ({"version_policy": {"specific": [1, 9]}}, "field 'version_policy.specific'"),
        ({"inputs": [{"name": "features", "datatype": "FP32", "dims": [-1, 5]}]}, "field 'features'"),
    ],
)
def test_broken_config_names_file_and_field(broken, changes, expected):
    _edit_config(broken, **changes)
    with pytest.raises(RepositoryError, match=r"config.yaml|preprocessor.json") as caught:
        ModelRepository(broken).check()
    assert expected in caught.value.message


def test_missing_model_file_is_named(broken):
    (broken / "fraud" / "2" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match=r"2: no model.onnx"):
        ModelRepository(broken).check()


def test_broken_preprocessor_names_field(broken):
    path = broken / "fraud" / "1" / "preprocessor.json"
    path.write_text(path.read_text().replace('"output_name"', '"output_nam"'))
    with pytest.raises(RepositoryError, match=r"preprocessor.json: field 'output_nam'"):
        ModelRepository(broken).check()


def test_latest_policy_picks_newest(broken):
    _edit_config(broken, version_policy={"latest": 1})
    assert [v.version for v in ModelRepository(broken).served_versions("fraud")] == [2]


@pytest.mark.parametrize("name", ["../fraud", "fraud/../../x", "nope", ""])
def test_unknown_or_unsafe_model_names_are_not_found(demo_repository, name):
    with pytest.raises(ModelNotFound):
        ModelRepository(demo_repository).config(name)


def test_missing_repository_is_reported(tmp_path):
    with pytest.raises(RepositoryError, match="does not exist"):
        ModelRepository(tmp_path / "absent")
    with pytest.raises(RepositoryError, match="holds no model"):
        ModelRepository(tmp_path).check()


def test_the_index_says_which_versions_are_served_and_why_others_are_not(fraud_repository, reliability):
    row = reliability("Security", "a broken model in the repository index (unit)")
    (fraud_repository / "broken").mkdir()
    (fraud_repository / "broken" / "config.yaml").write_text("name: broken\nplatform: tensorflow\n")
    entries = ModelRepository(fraud_repository).index({("fraud", 2)})
    by_key = {(e["name"], e["version"]): e for e in entries}
    assert by_key[("fraud", "2")]["state"] == "READY"
    assert by_key[("fraud", "1")] == {
        "name": "fraud",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "not loaded by this application",
    }
    assert by_key[("broken", "")]["state"] == "UNAVAILABLE" and "platform" in by_key[("broken", "")]["reason"]
    row.measured["reason given"] = by_key[("broken", "")]["reason"][:80]
    assert by_key[("broken", "")]["reason"].startswith("broken/config.yaml")  # within the repository
    assert str(fraud_repository) not in str(entries)  # paths stay in the log, not in answers
