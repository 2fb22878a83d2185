"""One model version's detectors on the alibi-detect or the SciPy backend, built from the reference
or loaded from a bundle that `serve-app drift fit` wrote beside the version (never unpickled)."""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve_app import extras
from serve_app.config import DriftSettings
from serve_app.drift.bundles import BUNDLE_FILE, load_alibi_detector, load_scipy_bundle
from serve_app.drift.schema import FeatureSchema, feature_schema, load_reference, reference_scores
from serve_app.drift.scipy_backend import WindowTests
from serve_app.errors import RepositoryError, ServeAppError
from serve_app.repository import ModelVersion

BUNDLE_FOLDER = "drift"
"""A detector bundle beside a model version (<version>/drift/) is used instead of building one."""


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
                x_ref[:, columns],
                p_val=settings.p_val,
                categories_per_feature=categorical,
                correction=settings.correction,
            )

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
        bundle = {
            "mode": self.mode,
            "schema": self.schema.model_dump(),
            "p_val": self.p_val,
            "correction": self.correction,
            "roles": sorted(self.detectors),
        }
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
                detectors = load_scipy_bundle(folder, schema, bundle["mode"])
            elif written_by == "alibi":
                extras.require("alibi_detect", f"the drift bundle {folder} (alibi-detect's format)")
                detectors = {role: load_alibi_detector(folder / role) for role in bundle["roles"]}
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
                "kind": feature.kind,
                "test": "chi2" if feature.kind == "categorical" else "ks",
                "statistic": _number(distances[j]),
                "p_value": _number(p_values[j]),
                "is_drift": bool(flags[j]),
            }
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
        names = (
            ["score"]
            if role == "prediction"
            else [self.schema.features[i].name for i in self.schema.indices("numeric")]
        )
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
                "kind": "numeric",
                "test": test,
                "statistic": float(peak[j]) if np.isfinite(peak[j]) else None,
                "p_value": None,
                "threshold": float(thresholds[j]) if np.isfinite(thresholds[j]) else None,
                "is_drift": bool(ratio[j] > 1.0),
            }
            for j, label in enumerate(labels)
        }
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
            x_ref,
            ert=settings.ert,
            window_size=settings.online_window_size,
            backend="pytorch",
            n_bootstraps=n_bootstraps,
            device="cpu",
            verbose=False,
        )
    # Each simulated stream holds an (n + 2 x window)^2 boolean matrix: batches sized to about
    # 256 MB keep a 5,000-row reference from needing gigabytes (alibi-detect's default is 64 streams).
    side = len(x_ref) + 2 * settings.online_window_size
    return CVMDriftOnline(
        x_ref,
        ert=settings.ert,
        window_sizes=[settings.online_window_size],
        n_bootstraps=n_bootstraps,
        batch_size=max(1, 256_000_000 // side**2),
        verbose=False,
    )


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
