"""What a detector takes: request columns as one numeric matrix (FeatureSchema), one score per
row, and the reference sample each version is compared with."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from serve_app.config import DriftSettings, Strict
from serve_app.errors import RepositoryError
from serve_app.features import BooleanFeature, CategoricalFeature, Preprocessor, category_codes
from serve_app.repository import ModelVersion
from serve_app.scores import row_scores

REFERENCE_SEED = 0


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
                out[:, i] = category_codes(_as_text(values), pa.array(feature.categories, pa.string()))
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


def _as_text(values: np.ndarray) -> pa.Array:
    """Values as the text a category is named by: booleans as 'True'/'False', bytes decoded."""
    if values.dtype == np.bool_:
        return pa.array(np.where(values, "True", "False"), pa.string())
    try:
        return pa.array(values, pa.string())  # strings, the usual case, at C speed
    except pa.ArrowException:
        return pa.array([_text(v) for v in values], pa.string())


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    return str(value)


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
        per_row = [s.name for s in version.input_specs if s.one_value_per_row]
        names = settings.features or [c for c in reference.columns if c in per_row]
        schema = FeatureSchema.of_frame(reference, names)
    if not schema.features:
        raise RepositoryError(f"{where}: no features to watch")
    return schema


def reference_scores(version: ModelVersion, reference: pd.DataFrame) -> np.ndarray:
    """The version's own scores on its reference sample: what its live scores are compared with."""
    from serve_app.runtime import load_runner

    runner = load_runner(version.config, version.model_file, version.precision)
    scores = row_scores(runner.run(version.frame_tensors(reference)), len(reference))
    if scores is None:
        raise RepositoryError(f"drift of {version.name} v{version.version}: the model has no numeric output to score")
    return scores
