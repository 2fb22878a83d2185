"""Registering ONNX files and exporting PyTorch models as new versions, checked before they appear."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from serve_app import cli
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.errors import InvalidInput, RepositoryError
from serve_app.onboarding import export, register
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from tests.helpers import snapshot


def test_register_adds_the_next_version_with_the_latest_preprocessor_and_reference(fraud_repository, capsys):
    source = fraud_repository / "fraud" / "2" / "model.onnx"
    assert cli.main(["register", "--repository", str(fraud_repository), "--model", "fraud", "--onnx", str(source)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"model": "fraud", "version": 3, "platform": "onnxruntime_onnx", "reference_rows_scored": 256}
    v3 = ModelRepository(fraud_repository).version("fraud", 3)
    assert v3.preprocessor is not None and v3.reference_file is not None
    assert not [p for p in (fraud_repository / "fraud").iterdir() if p.name.startswith(".")]


def test_register_a_new_model_derives_its_config_from_the_graph(fraud_repository):
    v2 = fraud_repository / "fraud" / "2"
    result = register(
        fraud_repository, "fraud-copy", v2 / "model.onnx", v2 / "preprocessor.json", v2 / "reference.parquet"
    )
    assert result["version"] == 1
    config = ModelRepository(fraud_repository).config("fraud-copy")
    assert [(s.name, s.datatype, s.dims[0]) for s in config.inputs] == [("features", "FP32", -1)]
    assert [(s.name, s.dims) for s in config.outputs] == [("fraud_probability", [-1])]


def test_bad_registrations_name_the_problem_and_change_nothing(fraud_repository, demo_repository, tmp_path):
    before = snapshot(fraud_repository)
    (tmp_path / "notes.onnx").write_text("not a model")
    with pytest.raises(InvalidInput, match=r"notes\.onnx: not a valid ONNX model"):
        register(fraud_repository, "fraud", tmp_path / "notes.onnx")
    with pytest.raises(RepositoryError, match="has no tensor 'features'"):  # dense takes INPUT, not the fraud features
        register(fraud_repository, "fraud", demo_repository / "dense" / "1" / "model.onnx")
    with pytest.raises(InvalidInput, match="no path characters"):
        register(fraud_repository, "../elsewhere", fraud_repository / "fraud" / "2" / "model.onnx")
    with pytest.raises(InvalidInput, match="the preprocessor makes 'features'"):
        register(
            fraud_repository,
            "dense-with-fraud-inputs",
            demo_repository / "dense" / "1" / "model.onnx",
            fraud_repository / "fraud" / "2" / "preprocessor.json",
        )
    assert snapshot(fraud_repository) == before


def test_a_failed_registration_removes_only_what_it_wrote(fraud_repository, tmp_path, reliability):
    """A model folder that holds versions but no config.yaml (being assembled by hand) is left as it was."""
    row = reliability("Faults", "a registration failing in a model folder with versions but no config.yaml (unit)")
    orphan = fraud_repository / "orphan" / "1"
    orphan.mkdir(parents=True)
    (orphan / "model.onnx").write_bytes((fraud_repository / "fraud" / "2" / "model.onnx").read_bytes())
    before = snapshot(fraud_repository)
    v2 = fraud_repository / "fraud" / "2"
    with pytest.raises(InvalidInput, match="no such file"):
        register(fraud_repository, "orphan", v2 / "model.onnx", v2 / "preprocessor.json", tmp_path / "absent.parquet")
    after = snapshot(fraud_repository)
    row.measured["repository files before / after"] = f"{len(before)} / {len(after)}"
    assert after == before  # its version kept, no config.yaml or staging left


class _Scorer(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(features)).squeeze(-1)


def test_export_converts_checks_parity_and_registers(fraud_repository, tmp_path):
    width = ModelRepository(fraud_repository).config("fraud").inputs[0].dims[1]
    module = torch.jit.script(_Scorer(width).eval())
    module.save(str(tmp_path / "scorer.pt"))
    example = tmp_path / "example.parquet"
    synthetic_transactions(300, seed=3).to_parquet(example)
    result = export(fraud_repository, "fraud", tmp_path / "scorer.pt", example)
    assert result["version"] == 3 and result["parity"]["max_abs_difference"] <= 1e-4
    version = ModelRepository(fraud_repository).version("fraud", 3)
    assert json.loads((version.path / "export.json").read_text())["parity"]["rows"] == 300
    rows = version.preprocessor.transform(request_columns(synthetic_transactions(50, seed=4)))
    with torch.no_grad():
        expected = module(torch.from_numpy(rows["features"])).numpy()
    got = load_runner(version.config, version.model_file).predict(rows)["fraud_probability"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_failed_exports_are_not_registered(fraud_repository, tmp_path):
    before = snapshot(fraud_repository)
    width = ModelRepository(fraud_repository).config("fraud").inputs[0].dims[1]
    torch.jit.script(_Scorer(width).eval()).save(str(tmp_path / "scorer.pt"))
    example = tmp_path / "example.parquet"
    synthetic_transactions(50, seed=3).to_parquet(example)
    with pytest.raises(InvalidInput, match=r"parity failed: .* \(> tolerance -1\) on 50 example rows: not registered"):
        export(fraud_repository, "fraud", tmp_path / "scorer.pt", example, tolerance=-1)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(InvalidInput, match=r"not a TorchScript or torch\.export model"):
        export(fraud_repository, "fraud", tmp_path / "junk.pt", example)
    synthetic_transactions(5, seed=3).drop(columns=["hour"]).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(InvalidInput, match=r"lacks the column\(s\) \['hour'\]"):
        export(fraud_repository, "fraud", tmp_path / "scorer.pt", tmp_path / "short.parquet")
    assert snapshot(fraud_repository) == before


def test_a_version_written_meanwhile_is_never_overwritten(fraud_repository, monkeypatch):
    """Two registrations racing for the same number: the second is refused, the first kept whole."""
    from serve_app import onboarding

    before = snapshot(fraud_repository)
    taken = fraud_repository / "fraud" / "3"
    taken.mkdir()
    (taken / "model.onnx").write_bytes(b"the other registration")
    monkeypatch.setattr(onboarding.ModelRepository, "available_versions", lambda self, model: [1, 2])
    with pytest.raises(InvalidInput, match=r"fraud v3 already exists \(written meanwhile by someone else\)"):
        register(fraud_repository, "fraud", fraud_repository / "fraud" / "2" / "model.onnx")
    assert (taken / "model.onnx").read_bytes() == b"the other registration"
    assert snapshot(fraud_repository) == sorted([*before, "fraud/3", "fraud/3/model.onnx"])
