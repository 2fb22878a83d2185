"""The built-in SciPy drift backend against alibi-detect's on the demo fraud model, choosing between
them, and the SciPy backend's bundles. No Ray."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy.stats import chi2_contingency

from serve_app import extras
from serve_app.config import DriftSettings
from serve_app.demo import LABEL, synthetic_transactions
from serve_app.drift import (
    BUNDLE_FOLDER,
    Detectors,
    DriftMonitor,
    FeatureSchema,
    detectors_for,
    feature_schema,
    load_reference,
)
from serve_app.drift.schema import reference_scores
from serve_app.drift.scipy_backend import WindowTests
from serve_app.errors import RepositoryError
from serve_app.messages import DriftBatch
from serve_app.repository import ModelRepository

ROOT = Path(__file__).parents[2]
WINDOW = 500
QUIET_SEED = 9001
"""A window of reference traffic whose smallest p-value is 0.34: no test is near its threshold."""

needs_alibi = pytest.mark.skipif(not extras.installed("alibi_detect"), reason="alibi-detect (the drift extra)")


class Reference(NamedTuple):
    schema: FeatureSchema
    x_ref: np.ndarray
    scores_ref: np.ndarray


@pytest.fixture(scope="module")
def fraud_v1(demo_repository):
    return ModelRepository(demo_repository).version("fraud", 1)


@pytest.fixture(scope="module")
def reference(fraud_v1) -> Reference:
    """What build_detectors hands either backend, computed once (the model scores the reference)."""
    frame = load_reference(fraud_v1, DriftSettings())
    schema = feature_schema(fraud_v1, DriftSettings(), frame)
    return Reference(schema, schema.encode(frame), reference_scores(fraud_v1, frame))


def build(reference: Reference, **settings) -> Detectors:
    return Detectors.build(*reference, DriftSettings(**settings))


def window(version, kind: str) -> tuple[pd.DataFrame, np.ndarray]:
    """One window of raw inputs from the reference distribution, and its scores, with one kind of shift applied."""
    frame = synthetic_transactions(WINDOW, QUIET_SEED).drop(columns=[LABEL])
    moved = np.random.default_rng(QUIET_SEED).random(WINDOW)
    if kind == "amount":
        frame["amount"] *= 1.6
    elif kind == "merchant_category":
        frame.loc[moved < 0.3, "merchant_category"] = "electronics"
    elif kind == "unseen_category":  # the "other" code: a category the reference never had
        frame.loc[moved < 0.1, "merchant_category"] = "crypto-exchange"
    elif kind == "two_mild":  # p 0.0016 and 0.0087 against thresholds 0.00625 (Bonferroni) or 0.0125 (FDR)
        frame["amount"] *= 1.3
        frame["distance_km"] *= 1.24
    scores = reference_scores(version, frame)
    if kind == "scores":  # the model's behaviour moved, its inputs did not
        scores = np.clip(scores * 2.0 + 0.05, 0.0, 1.0)
    return frame, scores


EXPECTED = {
    # window: (drifting features under Bonferroni, under FDR, prediction drift or None: not asserted)
    "quiet": (set(), set(), False),
    "amount": ({"amount"}, {"amount"}, True),
    "merchant_category": ({"merchant_category"}, {"merchant_category"}, False),
    "unseen_category": ({"merchant_category"}, {"merchant_category"}, None),
    "two_mild": ({"amount"}, {"amount", "distance_km"}, None),
    "scores": (set(), set(), True),
}


def drifting(result: dict) -> set[str]:
    return {name for name, f in result["data"]["features"].items() if f["is_drift"]}


def _labels(test: dict) -> dict:
    return {k: v for k, v in test.items() if k not in ("statistic", "p_value")}


# Both backends call the same SciPy functions (ks_2samp 'asymp', chi2_contingency) on the same float32
# arrays and round to float32. The one possible difference is the order in which Chi-squared sums its
# categories (alibi-detect: a set's order; SciPy backend: sorted), a last-bit float64 difference that
# float32 rounding nearly always hides: rtol 1e-6 (about 8 float32 steps) covers it and nothing more.
# Measured on these windows: identical.
RTOL = 1e-6


@needs_alibi
@pytest.mark.parametrize("correction", ["bonferroni", "fdr"])
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_both_backends_flag_the_same_features_with_the_same_p_values(fraud_v1, reference, kind, correction):
    frame, scores = window(fraud_v1, kind)
    x = reference.schema.encode(frame)
    alibi = build(reference, backend="alibi", correction=correction).check(x, scores)
    scipy = build(reference, backend="scipy", correction=correction).check(x, scores)
    bonferroni_features, fdr_features, prediction_drift = EXPECTED[kind]
    features = bonferroni_features if correction == "bonferroni" else fdr_features
    for result in (alibi, scipy):
        assert drifting(result) == features, result
        assert result["data"]["is_drift"] == bool(features)
        if prediction_drift is not None:
            assert result["prediction"]["is_drift"] is prediction_drift, result["prediction"]
    assert scipy["data"]["threshold"] == pytest.approx(alibi["data"]["threshold"], rel=1e-12)
    assert scipy["data"]["features"].keys() == alibi["data"]["features"].keys()
    pairs = [(scipy["data"]["features"][name], f) for name, f in alibi["data"]["features"].items()]
    pairs.append((scipy["prediction"], alibi["prediction"]))
    for ours, theirs in pairs:
        assert ours.keys() == theirs.keys()
        assert _labels(ours) == _labels(theirs)  # kind, test, is_drift
        for key in ("statistic", "p_value"):
            both_none = ours[key] is None and theirs[key] is None  # NaN, e.g. Chi-squared over one category
            assert both_none or np.isclose(ours[key], theirs[key], rtol=RTOL, atol=0.0), (key, ours, theirs)


# --------------------------------------------------------------------------------------------
# Choosing the backend
# --------------------------------------------------------------------------------------------


@pytest.fixture
def without_alibi(monkeypatch):
    """alibi-detect, and toml that comes with it, as if not installed: importing them fails."""
    for name in ["alibi_detect", "toml", *(n for n in sys.modules if n.startswith(("alibi_detect.", "toml.")))]:
        monkeypatch.setitem(sys.modules, name, None)
    assert not extras.installed("alibi_detect")


@needs_alibi
def test_auto_picks_alibi_detect_when_it_is_installed(reference):
    detectors = build(reference)
    assert detectors.backend == "alibi"
    assert {type(d).__name__ for d in detectors.detectors.values()} == {"TabularDrift", "KSDrift"}


def test_without_alibi_detect_auto_runs_on_scipy_and_the_monitor_says_so(fraud_v1, reference, without_alibi):
    assert build(reference).backend == "scipy"
    monitor = DriftMonitor({"fraud": DriftSettings(window_size=WINDOW)}, [fraud_v1])
    monitor.load_detectors()
    assert monitor.states[("fraud", 1)].status == "ready"
    frame, scores = window(fraud_v1, "amount")
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    monitor.observe([DriftBatch("fraud", 1, "champion", columns, scores)])
    monitor.check()
    report = monitor.report("fraud")["versions"]["1"]
    assert report["backend"] == "scipy"
    assert report["history"][-1]["drifting_features"] == ["amount"]


def test_without_alibi_detect_alibi_and_online_fail_naming_the_extra(reference, without_alibi):
    with pytest.raises(extras.MissingExtra, match=r"drift backend 'alibi' needs alibi_detect.*serve-app\[drift\]"):
        build(reference, backend="alibi")
    with pytest.raises(extras.MissingExtra, match=r"mode 'online'.*serve-app\[drift\].*mode 'window' runs without"):
        build(reference, mode="online")


def test_online_mode_on_the_scipy_backend_is_refused_by_the_settings():
    with pytest.raises(ValidationError, match=r"mode 'online'.*backend 'scipy'"):
        DriftSettings(mode="online", backend="scipy")
    assert DriftSettings(mode="online").backend == "auto"


def test_the_drift_module_imports_without_alibi_detect_and_toml():
    code = "import sys; sys.modules.update(alibi_detect=None, toml=None); import serve_app.drift"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@needs_alibi
def test_an_alibi_bundle_without_alibi_detect_names_the_extra(reference, tmp_path, monkeypatch):
    build(reference, backend="alibi").save(tmp_path / "bundle")
    assert "backend" not in json.loads((tmp_path / "bundle" / "bundle.json").read_text())  # the older format
    with pytest.raises(RepositoryError, match=r"written by the 'alibi' backend, but drift.backend is 'scipy'"):
        Detectors.load(tmp_path / "bundle", "scipy")
    for name in ["alibi_detect", "toml", *(n for n in sys.modules if n.startswith("alibi_detect."))]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(extras.MissingExtra, match=r"alibi-detect's format\) needs alibi_detect.*serve-app\[drift\]"):
        Detectors.load(tmp_path / "bundle")


# --------------------------------------------------------------------------------------------
# SciPy bundles
# --------------------------------------------------------------------------------------------


@pytest.fixture
def scipy_bundle(reference, tmp_path) -> tuple[Detectors, Path]:
    detectors = build(reference, backend="scipy", correction="fdr")
    detectors.save(tmp_path / "bundle")
    return detectors, tmp_path / "bundle"


def test_a_scipy_bundle_round_trips_through_npy_files(fraud_v1, reference, scipy_bundle, tmp_path):
    built, folder = scipy_bundle
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "data.npy", "prediction.npy"]
    bundle = json.loads((folder / "bundle.json").read_text())
    assert bundle["backend"] == "scipy" and bundle["correction"] == "fdr"
    bundle["roles"] = ["../elsewhere"]  # names in the json are not paths the loader follows
    (folder / "bundle.json").write_text(json.dumps(bundle))
    loaded = Detectors.load(folder)
    assert (loaded.backend, loaded.correction, loaded.source) == ("scipy", "fdr", str(folder))
    for kind in ("quiet", "two_mild", "scores"):
        frame, scores = window(fraud_v1, kind)
        x = reference.schema.encode(frame)
        assert loaded.check(x, scores) == built.check(x, scores)
    # Beside a version, the bundle is used instead of building detectors; an explicit other backend refuses it.
    copy = tmp_path / "repository"
    shutil.copytree(fraud_v1.path.parent, copy / "fraud")
    version = ModelRepository(copy).version("fraud", 1)
    built.save(version.path / BUNDLE_FOLDER)
    used = detectors_for(version, DriftSettings(backend="scipy"))
    assert (used.source, used.backend) == (str(version.path / BUNDLE_FOLDER), "scipy")
    with pytest.raises(RepositoryError, match=r"written by the 'scipy' backend, but drift.backend is 'alibi'"):
        detectors_for(version, DriftSettings(backend="alibi"))


def _mark_unpickled(path: str) -> None:
    Path(path).write_text("unpickled")


class _Payload:
    """Unpickling it writes a marker file: proof that a loader unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _mark_unpickled, (self.marker,)


def _extra_file(folder: Path, payload: _Payload) -> None:
    (folder / "notes.txt").write_text("left here")


def _raw_pickle(folder: Path, payload: _Payload) -> None:
    (folder / "data.npy").write_bytes(pickle.dumps(payload))


def _pickle_inside_npy(folder: Path, payload: _Payload) -> None:
    np.save(folder / "data.npy", np.array([payload], dtype=object), allow_pickle=True)


def _link_outside(folder: Path, payload: _Payload) -> None:
    outside = folder.parent / "outside.npy"
    shutil.copy(folder / "data.npy", outside)
    (folder / "data.npy").unlink()
    os.symlink(outside, folder / "data.npy")


def _missing_scores(folder: Path, payload: _Payload) -> None:
    (folder / "prediction.npy").unlink()


def _wrong_columns(folder: Path, payload: _Payload) -> None:
    np.save(folder / "data.npy", np.zeros((50, 3), dtype=np.float32))


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (_extra_file, r"unexpected: \['notes.txt'\], missing: \[\]"),
        (_raw_pickle, r"refusing data.npy: .*pickled data"),
        (_pickle_inside_npy, r"refusing data.npy: Object arrays cannot be loaded"),
        (_link_outside, r"unexpected: \['data.npy'\]"),
        (_missing_scores, r"missing: \['prediction.npy'\]"),
        (_wrong_columns, r"data.npy has 3 columns, not 8"),
    ],
)
def test_a_scipy_bundle_with_anything_unexpected_is_refused_unread(scipy_bundle, tmp_path, tamper, error):
    _, folder = scipy_bundle
    marker = tmp_path / "unpickled"
    payload = _Payload(marker)
    tamper(folder, payload)
    with pytest.raises(RepositoryError, match=error):
        Detectors.load(folder)
    assert not marker.exists()
    pickle.loads(pickle.dumps(payload))  # the payload is live: a loader that unpickled it would leave the marker
    assert marker.exists()


def test_contingency_counts_cover_categories_seen_in_either_sample():
    """Without alibi-detect to compare with: the table is built independently here (pandas)."""
    reference = np.array([[0.0], [0.0], [1.0], [1.0], [2.0]] * 20, dtype=np.float32)
    window = np.array([[0.0], [3.0], [3.0], [1.0]] * 10, dtype=np.float32)  # 2 is absent, 3 is new
    tests = WindowTests(reference, categorical=[0])
    p_values, statistics = tests.score(window)
    expected = pd.crosstab(np.r_[np.zeros(100), np.ones(40)], np.r_[reference[:, 0], window[:, 0]]).to_numpy()
    assert expected.shape == (2, 4)
    statistic, p_value, _, _ = chi2_contingency(expected)
    assert statistics[0] == np.float32(statistic) and p_values[0] == np.float32(p_value)
    assert p_value < 1e-10  # the new category is what drifts
