"""Detector bundles as `serve-app drift fit` writes them beside a version, loaded without trusting
them: alibi-detect's config format with only the detectors and files it needs (its loader would
unpickle any .dill a config names, wherever it lies), or the SciPy backend's plain .npy arrays."""

from __future__ import annotations

import re
from pathlib import Path

from serve_app.drift.schema import FeatureSchema
from serve_app.drift.scipy_backend import WindowTests
from serve_app.errors import RepositoryError

BUNDLE_FILE = "bundle.json"
UNSAFE_SUFFIXES = (".dill", ".pickle", ".pkl", ".pt", ".pth", ".joblib")
"""alibi-detect's config loader unpickles files like these (dill, torch.load) when a config names them."""
SAFE_DETECTORS = {"TabularDrift", "KSDrift", "CVMDriftOnline", "MMDDriftOnline"}
FILE_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")
"""A string ending like a file name (x_ref.npy, fn.dill), not like a version (0.13.0)."""
SCIPY_ROLES = ("data", "prediction")
"""A SciPy bundle is bundle.json and <role>.npy for each of these (the reference arrays), nothing else."""


def load_alibi_detector(folder: Path):
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
    for reference in _file_references(config):  # alibi-detect loads what they name, .dill by dill, wherever
        path = Path(reference)
        inside = not path.is_absolute() and (folder / path).resolve().is_relative_to(folder.resolve())
        if not inside or path.suffix != ".npy":
            raise RepositoryError(
                f"drift bundle {folder.name}: config.toml names '{reference}', not a .npy array inside the bundle"
            )
    if config.get("name") not in SAFE_DETECTORS or config.get("preprocess_fn", "None") != "None":
        raise RepositoryError(
            f"drift bundle {folder}: only {sorted(SAFE_DETECTORS)} without a preprocess_fn are loaded, "
            f"not {config.get('name')!r}"
        )
    return load_detector(folder / "config.toml", enable_unsafe_loading=False)


def _file_references(value) -> list[str]:
    """Every string in a detector's config that names a file: it has a path separator or a suffix."""
    if isinstance(value, dict):
        return [found for item in value.values() for found in _file_references(item)]
    if isinstance(value, list):
        return [found for item in value for found in _file_references(item)]
    if isinstance(value, str) and ("/" in value or "\\" in value or FILE_SUFFIX.search(value)):
        return [value]
    return []


def load_scipy_bundle(folder: Path, schema: FeatureSchema, mode: str) -> dict[str, WindowTests]:
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
