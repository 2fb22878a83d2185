"""Drift monitoring: the inputs a model sees against its reference sample, and the scores it gives
against the scores it gave that sample.

Plain Python (no Ray): the DriftMonitor deployment owns a `DriftMonitor`, the router a `DriftFeed`.

- `FeatureSchema` turns raw request columns into the numeric matrix the detectors take
  (numeric values as they are, categories as codes with an "other" code for unseen ones).
- `Detectors` are one version's detectors, built from its reference or loaded from a bundle that
  `serve-app drift fit` wrote beside the version. Two backends (DriftSettings.backend): alibi-detect
  (the optional `drift` extra; its own save format, loaded without unsafe mode and refused when it
  holds pickled objects), or the built-in SciPy one of `serve_app.drift_scipy` (window mode; the
  reference saved as .npy arrays). alibi-detect is imported only when used.
- `DriftMonitor` gathers rows per (model, version) into windows, checks each window, keeps the
  episode state (K drifting windows in a row raise one alert; a clean window clears it), and
  appends every check to the `drift` Parquet table under the storage URI.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import random
import shutil
import threading
import time
import urllib.request
import uuid
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from serve_app import extras
from serve_app.config import AlertSettings, DriftSettings, Strict
from serve_app.drift_scipy import WindowTests
from serve_app.errors import RepositoryError, ServeAppError
from serve_app.features import BooleanFeature, CategoricalFeature, Preprocessor
from serve_app.predlog import DRIFT, ParquetLog, read_table
from serve_app.repository import ModelVersion
from serve_app.runtime.batching import merge_rows
from serve_app.storage import read_json, write_json

logger = logging.getLogger("serve_app.drift")

BUNDLE_FOLDER = "drift"
"""A detector bundle beside a model version (<version>/drift/) is used instead of building one."""
BUNDLE_FILE = "bundle.json"
UNSAFE_SUFFIXES = (".dill", ".pickle", ".pkl", ".pt", ".pth", ".joblib")
"""alibi-detect's config loader unpickles files like these (dill, torch.load) when a config names them."""
SAFE_DETECTORS = {"TabularDrift", "KSDrift", "CVMDriftOnline", "MMDDriftOnline"}
SCIPY_ROLES = ("data", "prediction")
"""A SciPy bundle is bundle.json and <role>.npy for each of these (the reference arrays), nothing else."""
REFERENCE_SEED = 0


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


class DriftFeature(Strict):
    name: str
    kind: Literal["numeric", "categorical"]
    categories: list[str] = Field(default_factory=list)
    """Categorical: the known categories; every other value shares one more code."""


class FeatureSchema(Strict):
    features: list[DriftFeature]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def indices(self, kind: str) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.kind == kind]

    def encode(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Raw columns (a frame, or arrays one value per row) -> float32 [rows, features]."""
        missing = [f.name for f in self.features if f.name not in columns]
        if missing:
            raise RepositoryError(f"drift: the data has no columns {missing}")
        rows = len(columns[self.features[0].name])
        out = np.empty((rows, len(self.features)), dtype=np.float32)
        for i, feature in enumerate(self.features):
            values = np.asarray(columns[feature.name]).reshape(rows, -1)[:, 0]
            if feature.kind == "numeric":
                out[:, i] = values.astype(np.float64)
            else:
                index = {c: code for code, c in enumerate(feature.categories)}
                other = len(feature.categories)
                out[:, i] = [index.get(_text(v), other) for v in values]
        return out

    @classmethod
    def of_preprocessor(cls, preprocessor: Preprocessor, names: list[str] | None) -> FeatureSchema:
        features = []
        for f in preprocessor.spec.features:
            if names is not None and f.name not in names:
                continue
            if isinstance(f, CategoricalFeature):
                features.append(DriftFeature(name=f.name, kind="categorical", categories=f.categories))
            elif isinstance(f, BooleanFeature):
                features.append(DriftFeature(name=f.name, kind="categorical", categories=["False", "True"]))
            else:
                features.append(DriftFeature(name=f.name, kind="numeric"))
        return cls(features=features)

    @classmethod
    def of_frame(cls, frame: pd.DataFrame, names: list[str]) -> FeatureSchema:
        features = []
        for name in names:
            column = frame[name]
            if pd.api.types.is_bool_dtype(column):
                features.append(DriftFeature(name=name, kind="categorical", categories=["False", "True"]))
            elif pd.api.types.is_numeric_dtype(column):
                features.append(DriftFeature(name=name, kind="numeric"))
            else:
                categories = sorted({_text(v) for v in column.dropna()})
                features.append(DriftFeature(name=name, kind="categorical", categories=categories))
        return cls(features=features)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    return str(value)


def row_scores(outputs: Mapping[str, np.ndarray], rows: int) -> np.ndarray | None:
    """One score per row: the first value of each row of the first numeric output."""
    for array in outputs.values():
        if array.dtype.kind in "fiub" and array.size and array.shape[0] == rows:
            return array.reshape(rows, -1)[:, 0].astype(np.float64)
    return None


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


def load_reference(version: ModelVersion, settings: DriftSettings) -> pd.DataFrame:
    path = Path(settings.reference) if settings.reference else version.reference_file
    where = f"drift of {version.name} v{version.version}"
    if path is None or not path.is_file():
        raise RepositoryError(f"{where}: no reference sample (reference.parquet beside the version or drift.reference)")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:
        raise RepositoryError(f"{where}: cannot read the reference {path}: {error}") from None
    if len(frame) < 20:
        raise RepositoryError(f"{where}: the reference {path} has {len(frame)} rows; it needs at least 20")
    if len(frame) > settings.max_reference_rows:
        frame = frame.sample(settings.max_reference_rows, random_state=REFERENCE_SEED)
    return frame.reset_index(drop=True)


def feature_schema(version: ModelVersion, settings: DriftSettings, reference: pd.DataFrame) -> FeatureSchema:
    where = f"drift of {version.name} v{version.version}"
    missing = [n for n in settings.features or [] if n not in reference.columns]
    if missing:
        raise RepositoryError(f"{where}: features {missing} are not columns of the reference")
    preprocessor = version.preprocessor
    if preprocessor is not None:
        schema = FeatureSchema.of_preprocessor(preprocessor, settings.features)
        absent = [n for n in schema.names if n not in reference.columns]
        if absent:
            raise RepositoryError(f"{where}: the reference lacks the preprocessor's columns {absent}")
    else:
        per_row = [s.name for s in version.input_specs if s.dims[1:] in ([], [1])]
        names = settings.features or [c for c in reference.columns if c in per_row]
        schema = FeatureSchema.of_frame(reference, names)
    if not schema.features:
        raise RepositoryError(f"{where}: no features to watch")
    return schema


def reference_scores(version: ModelVersion, reference: pd.DataFrame) -> np.ndarray:
    """The version's own scores on its reference sample: what its live scores are compared with."""
    from serve_app.runtime import load_runner

    runner = load_runner(version.config, version.model_file, version.precision)
    preprocessor = version.preprocessor
    if preprocessor is not None:
        inputs = preprocessor.transform({f.name: reference[f.name].to_numpy() for f in preprocessor.spec.features})
    else:
        inputs = {s.name: np.stack(reference[s.name].to_numpy()) for s in version.input_specs}
    scores = row_scores(runner.run(inputs), len(reference))
    if scores is None:
        raise RepositoryError(f"drift of {version.name} v{version.version}: the model has no numeric output to score")
    return scores


# --------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------


def feature_flags(p_values: np.ndarray, p_val: float, correction: str) -> np.ndarray:
    """Which features drift after the correction: Bonferroni, or Benjamini-Hochberg's FDR."""
    n = len(p_values)
    if correction == "bonferroni":
        return p_values < p_val / n
    order = np.argsort(p_values)
    below = p_values[order] < p_val * np.arange(1, n + 1) / n
    flags = np.zeros(n, dtype=bool)
    if below.any():
        flags[order[: np.nonzero(below)[0].max() + 1]] = True
    return flags


def correction_threshold(p_values: np.ndarray, p_val: float, correction: str) -> float:
    """The threshold the correction put on the p-values, as alibi-detect reports it: p_val / n for
    Bonferroni; for FDR the largest i x p_val / n the i-th smallest p-value is below (p_val / n if none)."""
    n = len(p_values)
    if correction == "bonferroni":
        return p_val / n
    thresholds = p_val * np.arange(1, n + 1) / n
    below = np.nonzero(np.sort(p_values) < thresholds)[0]
    return float(thresholds[below.max()] if below.size else thresholds[0])


def choose_backend(settings: DriftSettings) -> str:
    """'alibi' or 'scipy'; MissingExtra when the settings need alibi-detect and it is not installed."""
    if settings.mode == "online":  # DriftSettings refuses backend 'scipy' with it
        try:
            extras.require("alibi_detect", "drift mode 'online' (alibi-detect's online detectors)")
        except extras.MissingExtra as error:
            raise extras.MissingExtra(f"{error}; mode 'window' runs without it (the built-in SciPy backend)") from None
        return "alibi"
    if settings.backend == "alibi" or (settings.backend == "auto" and extras.installed("alibi_detect")):
        extras.require("alibi_detect", "drift backend 'alibi'")
        return "alibi"
    return "scipy"


def _safe_load(folder: Path):
    """alibi-detect's loader, never in unsafe mode; a bundle with pickled objects is refused
    (its config-driven loader would otherwise unpickle a referenced .dill file)."""
    import toml  # comes with alibi-detect
    from alibi_detect.saving import load_detector

    if not (folder / "config.toml").is_file():
        raise RepositoryError(f"drift bundle {folder}: no config.toml (only alibi-detect's config format is loaded)")
    unsafe = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in UNSAFE_SUFFIXES]
    if unsafe:
        raise RepositoryError(f"drift bundle {folder}: refusing pickled objects {unsafe}")
    config = toml.loads((folder / "config.toml").read_text())
    if config.get("name") not in SAFE_DETECTORS or config.get("preprocess_fn", "None") != "None":
        raise RepositoryError(
            f"drift bundle {folder}: only {sorted(SAFE_DETECTORS)} without a preprocess_fn are loaded, "
            f"not {config.get('name')!r}"
        )
    return load_detector(folder / "config.toml", enable_unsafe_loading=False)


def _load_scipy_bundle(folder: Path, schema: FeatureSchema, mode: str) -> dict[str, WindowTests]:
    """The SciPy backend's reference arrays: exactly bundle.json and <role>.npy per role, plain files.
    Anything else there is refused rather than skipped: a bundle is written whole by Detectors.save."""
    expected = {BUNDLE_FILE, *(f"{role}.npy" for role in SCIPY_ROLES)}
    entries = {p.name: p for p in folder.iterdir()}
    unexpected = sorted(n for n, p in entries.items() if n not in expected or p.is_symlink() or not p.is_file())
    missing = sorted(expected - entries.keys())
    if unexpected or missing:
        raise RepositoryError(
            f"drift bundle {folder}: a SciPy bundle is exactly {sorted(expected)} as plain files; "
            f"refusing it (unexpected: {unexpected}, missing: {missing})"
        )
    if mode != "window":
        raise RepositoryError(f"drift bundle {folder}: the SciPy backend has window mode only, not {mode!r}")
    columns = {"data": len(schema.features), "prediction": 1}
    detectors = {}
    for role in SCIPY_ROLES:
        try:
            tests = WindowTests.load(folder / f"{role}.npy", schema.indices("categorical") if role == "data" else ())
        except ValueError as error:  # pickled, not .npy, not floats
            raise RepositoryError(f"drift bundle {folder}: refusing {role}.npy: {error}") from None
        if tests.x_ref.shape[1] != columns[role]:
            raise RepositoryError(
                f"drift bundle {folder}: {role}.npy has {tests.x_ref.shape[1]} columns, not {columns[role]}"
            )
        detectors[role] = tests
    return detectors


@dataclass
class Detectors:
    """One model version's detectors. Window mode: 'data' (TabularDrift, or WindowTests on the SciPy
    backend) and 'prediction' (KSDrift, or WindowTests). Online mode (alibi-detect only): 'numeric'
    and 'prediction' (online detectors), 'categorical' (TabularDrift) if any."""

    mode: str
    schema: FeatureSchema
    detectors: dict[str, Any]
    p_val: float
    correction: str
    source: str = "built"
    backend: str = "alibi"
    """alibi or scipy: which library the detectors are from."""

    @classmethod
    def build(
        cls, schema: FeatureSchema, x_ref: np.ndarray, scores_ref: np.ndarray, settings: DriftSettings
    ) -> Detectors:
        backend = choose_backend(settings)
        scores_ref = scores_ref.astype(np.float32).reshape(-1, 1)
        if backend == "scipy":
            categorical = schema.indices("categorical")
            detectors = {"data": WindowTests(x_ref, categorical), "prediction": WindowTests(scores_ref)}
            return cls(settings.mode, schema, detectors, settings.p_val, settings.correction, backend=backend)

        from alibi_detect.cd import KSDrift, TabularDrift

        def tabular(columns: list[int]):
            # None: the categories are those seen, in the reference and in each window (a code
            # seen in neither would leave Chi-squared an empty column).
            categorical = {j: None for j, i in enumerate(columns) if i in schema.indices("categorical")}
            return TabularDrift(
                x_ref[:, columns], p_val=settings.p_val, categories_per_feature=categorical,
                correction=settings.correction,
            )  # fmt: skip

        if settings.mode == "window":
            detectors = {
                "data": tabular(list(range(len(schema.features)))),
                "prediction": KSDrift(scores_ref, p_val=settings.p_val),
            }
        else:
            detectors = {}
            numeric = schema.indices("numeric")
            if numeric:
                detectors["numeric"] = _online(x_ref[:, numeric], settings, settings.online_detector)
            detectors["prediction"] = _online(scores_ref, settings, "cvm")
            if schema.indices("categorical"):
                detectors["categorical"] = tabular(schema.indices("categorical"))
        return cls(settings.mode, schema, detectors, settings.p_val, settings.correction)

    def save(self, folder: str | Path) -> None:
        """alibi-detect's save_detector per detector, or the SciPy backend's reference arrays as
        <role>.npy, written beside the folder and moved into place, so a server never loads half a
        bundle; an older bundle there is replaced."""
        folder = Path(folder)
        staging = folder.with_name(f".{folder.name}-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        bundle = {"mode": self.mode, "schema": self.schema.model_dump(), "p_val": self.p_val,
                  "correction": self.correction, "roles": sorted(self.detectors)}  # fmt: skip
        if self.backend == "scipy":
            bundle["backend"] = "scipy"  # without the key, a bundle is alibi-detect's (the older format)
            for role, tests in self.detectors.items():
                tests.save(staging / f"{role}.npy")
        else:
            from alibi_detect.saving import save_detector

            for role, detector in self.detectors.items():
                save_detector(detector, staging / role)
        (staging / BUNDLE_FILE).write_text(json.dumps(bundle, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)

    @classmethod
    def load(cls, folder: str | Path, backend: str = "auto") -> Detectors:
        """backend: the setting; 'alibi' or 'scipy' refuses a bundle of the other backend."""
        folder = Path(folder)
        try:
            bundle = json.loads((folder / BUNDLE_FILE).read_text())
            schema = FeatureSchema.model_validate(bundle["schema"])
            written_by = bundle.get("backend", "alibi")
            if backend not in ("auto", written_by):
                raise RepositoryError(
                    f"drift bundle {folder}: written by the {written_by!r} backend, but drift.backend is {backend!r}: "
                    f"fit it again with `serve-app drift fit` under backend {backend!r}"
                )
            if written_by == "scipy":
                detectors = _load_scipy_bundle(folder, schema, bundle["mode"])
            elif written_by == "alibi":
                extras.require("alibi_detect", f"the drift bundle {folder} (alibi-detect's format)")
                detectors = {role: _safe_load(folder / role) for role in bundle["roles"]}
            else:
                raise RepositoryError(f"drift bundle {folder}: unknown backend {written_by!r}")
        except ServeAppError:  # RepositoryError, MissingExtra: already say what is wrong
            raise
        except Exception as error:
            raise RepositoryError(f"drift bundle {folder}: cannot load it: {type(error).__name__}: {error}") from None
        mode, p_val, correction = bundle["mode"], bundle["p_val"], bundle["correction"]
        return cls(mode, schema, detectors, p_val, correction, source=str(folder), backend=written_by)

    # -- checking ------------------------------------------------------------------------

    def check(self, x: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        """Test one window: per-feature statistics, data drift and prediction drift."""
        features: dict[str, dict] = {}
        data_drift = False
        if self.mode == "window":
            features, data_drift, threshold = self._tabular("data", x, list(range(x.shape[1])))
            prediction = self._ks(scores)
        else:
            threshold = None
            if "categorical" in self.detectors:
                features, data_drift, threshold = self._tabular("categorical", x, self.schema.indices("categorical"))
            if "numeric" in self.detectors:
                numeric, numeric_drift = self._online_window("numeric", x[:, self.schema.indices("numeric")])
                features.update(numeric)
                data_drift = data_drift or numeric_drift
            online, drift = self._online_window("prediction", scores.reshape(-1, 1))
            prediction = {**next(iter(online.values())), "is_drift": drift}
        return {
            "data": {"is_drift": bool(data_drift), "threshold": threshold, "features": features},
            "prediction": prediction,
        }

    def _tabular(self, role: str, x: np.ndarray, columns: list[int]) -> tuple[dict, bool, float]:
        p_values, distances, is_drift, threshold = self._univariate(role, x[:, columns])
        flags = feature_flags(p_values, self.p_val, self.correction)
        features = {}
        for j, i in enumerate(columns):
            feature = self.schema.features[i]
            features[feature.name] = {
                "kind": feature.kind, "test": "chi2" if feature.kind == "categorical" else "ks",
                "statistic": _number(distances[j]), "p_value": _number(p_values[j]),
                "is_drift": bool(flags[j]),
            }  # fmt: skip
        return features, is_drift, threshold

    def _ks(self, scores: np.ndarray) -> dict[str, Any]:
        p_values, distances, is_drift, _ = self._univariate("prediction", scores.astype(np.float32).reshape(-1, 1))
        return {"test": "ks", "statistic": _number(distances[0]), "p_value": _number(p_values[0]), "is_drift": is_drift}

    def _univariate(self, role: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, float]:
        """Per-column p-values and statistics of a window, whether it drifts after the correction
        across its columns, and the threshold that correction applied."""
        detector = self.detectors[role]
        if self.backend == "scipy":
            p_values, distances = detector.score(x)
            p_values = p_values.astype(np.float64)
            is_drift = bool(feature_flags(p_values, self.p_val, self.correction).any())
            return p_values, distances, is_drift, correction_threshold(p_values, self.p_val, self.correction)
        result = detector.predict(x, drift_type="batch", return_p_val=True, return_distance=True)["data"]
        threshold = float(np.min(result["threshold"]))  # FDR without a finding: the array of its thresholds
        p_values = np.ravel(np.asarray(result["p_val"], dtype=np.float64))
        return p_values, np.ravel(result["distance"]), bool(result["is_drift"]), threshold

    def _online_window(self, role: str, x: np.ndarray) -> tuple[dict[str, dict], bool]:
        """Feed a window row by row. After a detection the detector starts afresh, so the next
        window judges new rows only."""
        detector = self.detectors[role]
        names = (["score"] if role == "prediction" else
                 [self.schema.features[i].name for i in self.schema.indices("numeric")])  # fmt: skip
        multivariate = type(detector).__name__.startswith("MMD")
        labels = [f"mmd({','.join(names)})"] if multivariate else names
        # Thresholds vary with time early in a stream: a feature's evidence is its largest
        # statistic / threshold, reported with the threshold of that moment.
        ratio = np.full(len(labels), -np.inf)
        peak = np.full(len(labels), np.nan)
        thresholds = np.full(len(labels), np.nan)
        detected = False
        for row in x.astype(np.float32):
            result = detector.predict(row)["data"]
            stats = np.ravel(np.asarray(result["test_stat"], dtype=np.float64))[: len(labels)]
            threshold = np.broadcast_to(np.ravel(np.asarray(result["threshold"], dtype=np.float64)), stats.shape)
            evidence = stats / threshold
            higher = evidence > ratio  # False while the test window fills (NaN statistics)
            ratio[higher], peak[higher], thresholds[higher] = evidence[higher], stats[higher], threshold[higher]
            if result["is_drift"]:
                detected = True
                detector.reset_state()
        _trim_online_state(detector)
        test = "mmd" if multivariate else "cvm"
        features = {
            label: {
                "kind": "numeric", "test": test,
                "statistic": float(peak[j]) if np.isfinite(peak[j]) else None, "p_value": None,
                "threshold": float(thresholds[j]) if np.isfinite(thresholds[j]) else None,
                "is_drift": bool(ratio[j] > 1.0),
            }
            for j, label in enumerate(labels)
        }  # fmt: skip
        return features, detected


def _number(value) -> float | None:
    """A statistic as JSON can carry it: NaN (e.g. Chi-squared over one category) becomes None."""
    value = float(value)
    return value if np.isfinite(value) else None


def _trim_online_state(detector) -> None:
    """alibi-detect's online detectors append every row and statistic to arrays they never trim:
    keep what the test window needs, so memory and time per row stay flat."""
    detector = getattr(detector, "_detector", detector)  # MMDDriftOnline wraps a backend detector
    for name in ("test_stats", "drift_preds"):
        setattr(detector, name, getattr(detector, name)[:0])
    windows = getattr(detector, "window_sizes", None)
    if windows and getattr(detector, "xs", np.empty(0)).size:
        detector.xs = detector.xs[-max(windows) :]


def _online(x_ref: np.ndarray, settings: DriftSettings, kind: str):
    from alibi_detect.cd import CVMDriftOnline, MMDDriftOnline

    # Thresholds are quantiles at 1 - 1/ert (per feature for CVM: 1/(ert x features)); the
    # simulation needs more runs than that.
    needed = int(np.ceil(settings.ert * (x_ref.shape[1] if kind == "cvm" else 1))) + 1
    n_bootstraps = settings.n_bootstraps or 2 * needed
    if n_bootstraps < needed:
        raise RepositoryError(
            f"drift: n_bootstraps {n_bootstraps} is too few for ert {settings.ert} over {x_ref.shape[1]} "
            f"feature(s); it needs at least {needed}"
        )

    if kind == "mmd":
        return MMDDriftOnline(
            x_ref, ert=settings.ert, window_size=settings.online_window_size, backend="pytorch",
            n_bootstraps=n_bootstraps, device="cpu", verbose=False,
        )  # fmt: skip
    # Each simulated stream holds an (n + 2 x window)^2 boolean matrix: batches sized to about
    # 256 MB keep a 5,000-row reference from needing gigabytes (alibi-detect's default is 64 streams).
    side = len(x_ref) + 2 * settings.online_window_size
    return CVMDriftOnline(
        x_ref, ert=settings.ert, window_sizes=[settings.online_window_size],
        n_bootstraps=n_bootstraps, batch_size=max(1, 256_000_000 // side**2), verbose=False,
    )  # fmt: skip


def build_detectors(version: ModelVersion, settings: DriftSettings) -> Detectors:
    """Detectors configured on the version's reference sample and its own scores on it."""
    reference = load_reference(version, settings)
    schema = feature_schema(version, settings, reference)
    return Detectors.build(schema, schema.encode(reference), reference_scores(version, reference), settings)


def detectors_for(version: ModelVersion, settings: DriftSettings) -> Detectors:
    """The bundle beside the version if there is one, else detectors built from its reference."""
    bundle = version.path / BUNDLE_FOLDER
    if (bundle / BUNDLE_FILE).is_file():
        return Detectors.load(bundle, settings.backend)
    return build_detectors(version, settings)


# --------------------------------------------------------------------------------------------
# The monitor
# --------------------------------------------------------------------------------------------


@dataclass
class VersionState:
    model: str
    version: int
    arm: str = ""
    detectors: Detectors | None = None
    status: str = "starting"
    """starting, ready, or the error that stopped its detectors from loading."""
    pending: list[tuple[dict[str, np.ndarray], np.ndarray]] = field(default_factory=list)
    pending_rows: int = 0
    window_opened_at: float | None = None
    rows_seen: int = 0
    rows_dropped: int = 0
    windows_checked: int = 0
    windows_drifting: int = 0
    consecutive_drift_windows: int = 0
    last: dict | None = None
    history: deque = field(default_factory=deque)

    def counters(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("rows_seen", "rows_dropped", "windows_checked", "windows_drifting",
                                              "consecutive_drift_windows")}  # fmt: skip


def _state_file() -> str:
    return "drift-monitor/state.json"  # beside the drift table, not in it: readers take every file there


class DriftMonitor:
    """Windows, checks, episodes and history for every watched model version.

    observe() runs on the owner's event loop and only appends; check() runs in a worker thread
    (the detectors' CPU work) and returns the alerts to deliver and the episodes that cleared.
    """

    def __init__(
        self,
        settings: Mapping[str, DriftSettings],
        versions: list[ModelVersion],
        storage_uri: str | None = None,
        clock=time.time,
    ):
        self.settings = dict(settings)
        self.versions = {(v.name, v.version): v for v in versions if v.name in self.settings}
        self.states = {key: VersionState(*key) for key in self.versions}
        for state in self.states.values():
            state.history = deque(maxlen=self.settings[state.model].history_size)
        self.storage_uri = storage_uri
        # A fresh writer name per start: a restarted monitor must not overwrite the files it wrote before.
        self.log = ParquetLog(storage_uri, f"drift-monitor-{uuid.uuid4().hex[:12]}") if storage_uri else None
        self.clock = clock
        self.episodes: dict[str, dict] = {}
        """model -> the open episode: when it began, the drifting versions, the alert sent."""
        self.alerts: deque[dict] = deque(maxlen=20)
        self._lock = threading.Lock()
        self._restore()

    # -- set-up --------------------------------------------------------------------------

    def load_detectors(self) -> None:
        """Load or build every version's detectors (seconds for online ones): call it in a thread."""
        for key, version in self.versions.items():
            state = self.states[key]
            try:
                state.detectors = detectors_for(version, self.settings[state.model])
                state.status = "ready"
                if state.detectors.mode != self.settings[state.model].mode:
                    logger.warning("drift of %s v%s: the bundle at %s is in %s mode; the config says %s",
                                   *key, state.detectors.source, state.detectors.mode,
                                   self.settings[state.model].mode)  # fmt: skip
            except Exception as error:  # one bad version must not stop the others being watched
                state.status = f"error: {error}"
                logger.exception("drift detectors of %s v%s could not be loaded", *key)

    # -- intake --------------------------------------------------------------------------

    def observe(self, batches: list[dict]) -> None:
        """Rows from the routers: {"model", "version", "arm", "columns", "scores", "dropped"}."""
        now = self.clock()
        with self._lock:
            for batch in batches:
                state = self.states.get((batch["model"], int(batch["version"])))
                if state is None:
                    continue
                state.rows_dropped += int(batch.get("dropped", 0))
                rows = len(batch["scores"]) if batch.get("scores") is not None else 0
                if not rows:
                    continue
                state.arm = batch.get("arm") or state.arm
                limit = self.settings[state.model].max_buffered_rows
                if state.pending_rows + rows > limit:  # checks fell behind: shed load, count it
                    state.rows_dropped += rows
                    continue
                state.rows_seen += rows
                state.pending.append((batch["columns"], np.asarray(batch["scores"], dtype=np.float64)))
                state.pending_rows += rows
                if state.window_opened_at is None:
                    state.window_opened_at = now

    def _take_window(self, state: VersionState, now: float) -> tuple[dict, np.ndarray] | None:
        settings = self.settings[state.model]
        full = state.pending_rows >= settings.window_size
        timed = (
            settings.window_s is not None and state.window_opened_at is not None
            and now - state.window_opened_at >= settings.window_s and state.pending_rows >= settings.min_window_size
        )  # fmt: skip
        if not (full or timed):
            return None
        columns, _ = merge_rows([c for c, _ in state.pending])
        scores = np.concatenate([s for _, s in state.pending])
        size = settings.window_size if full else len(scores)
        rest = len(scores) - size
        state.pending = [({k: v[size:] for k, v in columns.items()}, scores[size:])] if rest else []
        state.pending_rows = rest
        state.window_opened_at = now if rest else None
        return {k: v[:size] for k, v in columns.items()}, scores[:size]

    # -- checking ------------------------------------------------------------------------

    def check(self) -> list[dict]:
        """Check every window that is due. Returns the episode events: alerts and clears."""
        events: list[dict] = []
        checked = 0
        for state in self.states.values():
            if state.detectors is None:
                continue
            while True:
                with self._lock:
                    window = self._take_window(state, self.clock())
                if window is None:
                    break
                columns, scores = window
                try:
                    result = state.detectors.check(state.detectors.schema.encode(columns), scores)
                except Exception:  # rows the detectors cannot take must not stop the monitor
                    logger.exception("drift check of %s v%s failed; the window is skipped", state.model, state.version)
                    with self._lock:
                        state.rows_dropped += len(scores)
                    continue
                with self._lock:
                    events.extend(self._record(state, result, len(scores)))
                checked += 1
        if checked:
            self.save()
        return events

    def _record(self, state: VersionState, result: dict, rows: int) -> list[dict]:
        now = self.clock()
        is_drift = result["data"]["is_drift"] or result["prediction"]["is_drift"]
        state.windows_checked += 1
        state.windows_drifting += int(is_drift)
        state.consecutive_drift_windows = state.consecutive_drift_windows + 1 if is_drift else 0
        time_iso = _iso(now)
        state.last = {"time": time_iso, "window": state.windows_checked, "rows": rows, "is_drift": is_drift, **result}
        drifting = [name for name, f in result["data"]["features"].items() if f["is_drift"]]
        state.history.append({
            "time": time_iso, "window": state.windows_checked, "rows": rows, "is_drift": is_drift,
            "data_drift": result["data"]["is_drift"], "prediction_drift": result["prediction"]["is_drift"],
            "drifting_features": drifting, "prediction_p_value": result["prediction"].get("p_value"),
            "p_values": {name: f.get("p_value") for name, f in result["data"]["features"].items()},
        })  # fmt: skip
        self._log(state, result, rows, is_drift, now)
        return self._episode(state, is_drift, now)

    def _log(self, state: VersionState, result: dict, rows: int, is_drift: bool, now: float) -> None:
        if self.log is None:
            return
        when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        common = {"time": when, "model": state.model, "version": state.version, "arm": state.arm,
                  "window": state.windows_checked, "rows": rows, "window_drift": is_drift}  # fmt: skip
        entries = [("feature", name, f) for name, f in result["data"]["features"].items()]
        entries.append(("prediction", "score", result["prediction"]))
        for kind, name, f in entries:
            default = result["data"]["threshold"] if kind == "feature" else self.settings[state.model].p_val
            row = {"kind": kind, "name": name, "test": f["test"], "statistic": f["statistic"], "p_value": f["p_value"],
                   "threshold": f.get("threshold", default), "is_drift": f["is_drift"]}  # fmt: skip
            self.log.record(DRIFT, {**common, **row})

    def _episode(self, state: VersionState, is_drift: bool, now: float) -> list[dict]:
        """K drifting windows in a row open an episode with one alert; clean windows from every
        drifting version close it. A model has one episode at a time, whichever versions drift."""
        settings = self.settings[state.model]
        episode = self.episodes.get(state.model)
        if is_drift and state.consecutive_drift_windows >= settings.alert_after_windows:
            if episode is None:
                evidence = list(state.history)[-settings.alert_after_windows :]
                alert = {
                    "event": "drift", "model": state.model, "version": state.version, "arm": state.arm,
                    "time": _iso(now), "windows": settings.alert_after_windows, "evidence": evidence,
                    "last_window": state.last,
                    "message": (f"{state.model} v{state.version} ({state.arm or 'unrouted'}): drift in "
                                f"{settings.alert_after_windows} windows in a row; features "
                                f"{evidence[-1]['drifting_features'] or 'none'}, prediction drift "
                                f"{evidence[-1]['prediction_drift']}"),
                }  # fmt: skip
                self.episodes[state.model] = {"since": _iso(now), "versions": [state.version], "alert": alert}
                self.alerts.append(alert)
                logger.warning("drift alert: %s", alert["message"])
                return [alert]
            if state.version not in episode["versions"]:
                episode["versions"].append(state.version)
        elif not is_drift and episode is not None and state.version in episode["versions"]:
            episode["versions"].remove(state.version)
            if not episode["versions"]:
                del self.episodes[state.model]
                logger.warning("drift of %s cleared", state.model)
                return [{"event": "cleared", "model": state.model, "time": _iso(now), "since": episode["since"]}]
        return []

    # -- state and reports ---------------------------------------------------------------

    def save(self) -> None:
        """Counters, episodes and recent history survive a restart; checks go to the Parquet log."""
        if self.storage_uri is None:
            return
        with self._lock:  # copied whole under the lock: the event loop may change alerts meanwhile
            document = json.loads(json.dumps({
                "episodes": self.episodes, "alerts": list(self.alerts),
                "versions": {f"{m}/{v}": {**s.counters(), "arm": s.arm, "last": s.last, "history": list(s.history)}
                             for (m, v), s in self.states.items()},
            }))  # fmt: skip
        try:
            write_json(self.storage_uri, _state_file(), document)
            if self.log is not None:
                self.log.flush()
        except Exception as error:  # storage trouble must not stop the checks; the next save retries
            logger.warning("drift monitor: saving state failed, will retry: %s", error)

    def _restore(self) -> None:
        if self.storage_uri is None:
            return
        document = read_json(self.storage_uri, _state_file()) or {}
        for model, episode in document.get("episodes", {}).items():
            # A version no longer watched can never send the clean window that would close it.
            episode["versions"] = [v for v in episode["versions"] if (model, v) in self.states]
            if model in self.settings and episode["versions"]:
                self.episodes[model] = episode
        self.alerts.extend(document.get("alerts", []))
        for key, saved in document.get("versions", {}).items():
            model, _, version = key.rpartition("/")
            state = self.states.get((model, int(version)))
            if state is None:
                continue
            for name, value in saved.items():
                if name == "history":
                    state.history.extend(value)
                elif hasattr(state, name):
                    setattr(state, name, value)

    def shutdown(self) -> None:
        """At a stop: rows still waiting for their window will not be checked; count them as dropped."""
        with self._lock:
            for state in self.states.values():
                state.rows_dropped += state.pending_rows
                state.pending, state.pending_rows, state.window_opened_at = [], 0, None
        self.save()

    def delivered(self, alert: dict, outcome: dict[str, str]) -> None:
        with self._lock:
            alert["delivery"] = outcome
        self.save()

    def undelivered_alerts(self) -> list[dict]:
        """Alerts of open episodes that a restart interrupted before they were sent."""
        with self._lock:
            open_alerts = [e["alert"] for e in self.episodes.values()]
            return [a for a in self.alerts if "delivery" not in a and a in open_alerts]

    def report(self, model: str) -> dict:
        settings = self.settings[model]
        with self._lock:
            versions = {
                str(s.version): {
                    "arm": s.arm, "detectors": s.status, "source": s.detectors.source if s.detectors else None,
                    "mode": s.detectors.mode if s.detectors else settings.mode,
                    "backend": s.detectors.backend if s.detectors else None,
                    **s.counters(), "rows_pending": s.pending_rows, "window_size": settings.window_size,
                    "last": s.last, "history": list(s.history),
                }
                for s in self.states.values() if s.model == model
            }  # fmt: skip
            return {
                "model": model, "alert_after_windows": settings.alert_after_windows,
                "on_drift": settings.on_drift, "episode": self.episodes.get(model),
                "alerts": [a for a in self.alerts if a["model"] == model], "versions": versions,
            }  # fmt: skip

    def history(self, model: str | None = None) -> pd.DataFrame:
        """Every check logged under the storage URI, as a table (for notebooks and reports)."""
        return drift_history(self.storage_uri, model)


def drift_history(storage_uri: str, model: str | None = None) -> pd.DataFrame:
    return read_table(storage_uri, DRIFT, model).to_pandas().sort_values(["time", "version", "kind", "name"])


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


# --------------------------------------------------------------------------------------------
# The router's side
# --------------------------------------------------------------------------------------------


class DriftFeed:
    """Rows waiting in a router replica for the monitor. add() is a list append on the request
    path; beyond max_buffered_rows per model, rows are dropped and counted, never waited for."""

    def __init__(
        self, settings: Mapping[str, DriftSettings], columns: Mapping[str, list[str]], seed: int | None = None
    ):
        """columns: per model, the inputs to keep (one value per row); the rest of a request is not copied."""
        self.settings = dict(settings)
        self.columns = dict(columns)
        self._pending: dict[tuple[str, int], list] = defaultdict(list)
        self._rows: dict[str, int] = defaultdict(int)
        self.dropped: dict[tuple[str, int], int] = defaultdict(int)
        self._random = random.Random(seed)

    def add(self, model: str, version: int, arm: str, inputs: dict[str, np.ndarray],
            outputs: dict[str, np.ndarray]) -> None:  # fmt: skip
        settings = self.settings.get(model)
        if settings is None or (settings.sample_rate < 1.0 and self._random.random() >= settings.sample_rate):
            return
        rows = len(next(iter(inputs.values())))
        if self._rows[model] + rows > settings.max_buffered_rows:
            self.dropped[(model, version)] += rows
            return
        scores = row_scores(outputs, rows)
        kept = {name: inputs[name].reshape(rows) for name in self.columns[model] if inputs[name].size == rows}
        if scores is None or len(kept) != len(self.columns[model]):
            return  # no score, or inputs not one value per row: nothing a detector can take
        self._pending[(model, version)].append((arm, kept, scores))
        self._rows[model] += rows

    def take(self) -> list[dict]:
        """One batch per (model, version) with its rows merged, plus drops not yet reported."""
        pending, self._pending, self._rows = self._pending, defaultdict(list), defaultdict(int)
        batches = []
        for key in {*pending, *self.dropped}:
            entries = pending.get(key, [])
            columns = merge_rows([inputs for _, inputs, _ in entries])[0] if entries else {}
            scores = np.concatenate([s for _, _, s in entries]) if entries else np.empty(0)
            arm = entries[-1][0] if entries else ""
            batches.append({"model": key[0], "version": key[1], "arm": arm, "columns": columns, "scores": scores,
                            "dropped": self.dropped.pop(key, 0)})  # fmt: skip
        return batches

    def lost(self, batches: list[dict]) -> None:
        """Batches the monitor did not take are counted as dropped, reported with the next ones."""
        for batch in batches:
            self.dropped[(batch["model"], batch["version"])] += len(batch["scores"]) + batch["dropped"]


# --------------------------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------------------------


async def deliver_alert(alert: dict, settings: AlertSettings) -> dict[str, str]:
    """Send an alert to the webhook and run the command; what happened to each, for the record."""
    outcome: dict[str, str] = {}
    body = json.dumps(alert, default=str)
    if settings.webhook_url:
        try:
            status = await asyncio.to_thread(_post_json, settings.webhook_url, body, settings.timeout_s)
            outcome["webhook"] = f"HTTP {status}"
        except Exception as error:
            outcome["webhook"] = f"failed: {type(error).__name__}: {error}"
    if settings.command:
        outcome["command"] = await _run_command(settings.command, body, settings.timeout_s)
    for target, result in outcome.items():
        (logger.info if result.startswith(("HTTP 2", "exit 0")) else logger.warning)(
            "drift alert of %s to %s: %s", alert.get("model"), target, result
        )
    return outcome


def _post_json(url: str, body: str, timeout_s: float) -> int:
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status


async def _run_command(command: list[str], body: str, timeout_s: float) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "SERVE_APP_DRIFT_ALERT": body},
        )  # fmt: skip
    except OSError as error:
        return f"failed to start: {error}"
    try:
        _, stderr = await asyncio.wait_for(process.communicate(body.encode()), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return f"killed after {timeout_s} s"
    tail = stderr.decode(errors="replace").strip()[-300:]
    return f"exit {process.returncode}" + (f": {tail}" if process.returncode and tail else "")
