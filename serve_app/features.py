"""Preprocessor: raw named inputs -> the model's feature tensor.

The same object runs in the online Preprocessor deployment and in the batch job, so
a row is scored alike in both. It is fitted on training data, saved as JSON (no
pickle) beside the model version, and loaded with validation that names the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, TypeAdapter, ValidationError

from serve_app.config import Strict, TensorSpec, describe_validation_error
from serve_app.errors import InvalidInput, RepositoryError, UnprocessableInput

OTHER = "__other__"
"""Bucket for categories not seen in training: an unseen value is scored, never refused."""


class NumericFeature(Strict):
    kind: Literal["numeric"] = "numeric"
    name: str
    datatype: Literal["FP32", "FP64", "INT32", "INT64"] = "FP32"
    log: bool = False
    """Apply sign(x) * log1p(|x|) before scaling (heavy-tailed amounts and counts)."""
    mean: float = 0.0
    std: float = 1.0

    @property
    def width(self) -> int:
        return 1


class CategoricalFeature(Strict):
    kind: Literal["categorical"] = "categorical"
    name: str
    categories: list[str] = Field(min_length=1)
    """Known categories in one-hot order; one more column follows for OTHER."""

    @property
    def width(self) -> int:
        return len(self.categories) + 1


class BooleanFeature(Strict):
    kind: Literal["boolean"] = "boolean"
    name: str

    @property
    def width(self) -> int:
        return 1


Feature = Annotated[NumericFeature | CategoricalFeature | BooleanFeature, Field(discriminator="kind")]


class PreprocessorSpec(Strict):
    format_version: Literal[1] = 1
    output_name: str = "features"
    """Name of the model input tensor this preprocessor produces."""
    features: list[Feature] = Field(min_length=1)


_SPEC = TypeAdapter(PreprocessorSpec)
_INPUT_DATATYPE = {"numeric": None, "categorical": "BYTES", "boolean": "BOOL"}
_PROBLEM = {
    "numeric": "'{}' is missing or not a finite number",
    "categorical": "'{}' is missing or not a string",
    "boolean": "'{}' is missing or not a boolean",
}
Column = np.ndarray | pd.Series | pa.Array | pa.ChunkedArray
"""One input column: numpy or pandas from a request or a frame, Arrow from a batch job's Parquet."""


class Preprocessor:
    def __init__(self, spec: PreprocessorSpec):
        self.spec = spec
        self._category_values = {
            f.name: pa.array(f.categories, pa.string()) for f in spec.features if isinstance(f, CategoricalFeature)
        }

    # -- fitting and persistence -------------------------------------------------------

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        numeric: Mapping[str, str],
        categorical: list[str] = (),
        boolean: list[str] = (),
        log: list[str] = (),
        output_name: str = "features",
        min_category_count: int = 1,
    ) -> Preprocessor:
        """Learn scaling and category vocabularies. `numeric` maps a column to its datatype."""
        features: list = []
        for name, datatype in numeric.items():
            values = _log(frame[name].to_numpy(np.float64)) if name in log else frame[name].to_numpy(np.float64)
            std = float(values.std())
            features.append(
                NumericFeature(name=name, datatype=datatype, log=name in log, mean=float(values.mean()), std=std or 1.0)
            )
        for name in categorical:
            counts = frame[name].astype(str).value_counts()
            kept = sorted(counts[counts >= min_category_count].index)
            features.append(CategoricalFeature(name=name, categories=kept))
        features.extend(BooleanFeature(name=name) for name in boolean)
        return cls(PreprocessorSpec(output_name=output_name, features=features))

    def to_dict(self) -> dict:
        return self.spec.model_dump(mode="json")

    @classmethod
    def from_dict(cls, document: dict, source: str = "preprocessor") -> Preprocessor:
        try:
            return cls(_SPEC.validate_python(document))
        except ValidationError as error:
            raise RepositoryError(describe_validation_error(error, source)) from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        try:
            document = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise RepositoryError(f"{path}: cannot read the preprocessor: {error}") from None
        return cls.from_dict(document, str(path))

    # -- schema ------------------------------------------------------------------------

    @property
    def input_specs(self) -> list[TensorSpec]:
        """The raw named inputs a client sends: one column per feature, one value per row."""
        return [
            TensorSpec(name=f.name, datatype=_INPUT_DATATYPE[f.kind] or f.datatype, dims=[-1])
            for f in self.spec.features
        ]

    @property
    def output_spec(self) -> TensorSpec:
        return TensorSpec(name=self.spec.output_name, datatype="FP32", dims=[-1, self.width])

    @property
    def width(self) -> int:
        return sum(f.width for f in self.spec.features)

    @property
    def feature_names(self) -> list[str]:
        """A name for each output column, for reports and drift statistics."""
        names: list[str] = []
        for f in self.spec.features:
            if isinstance(f, CategoricalFeature):
                names.extend(f"{f.name}={c}" for c in (*f.categories, OTHER))
            else:
                names.append(f.name)
        return names

    # -- transform -----------------------------------------------------------------------

    def transform(self, columns: Mapping[str, Column]) -> dict[str, np.ndarray]:
        """Columns (numpy arrays, pandas Series or Arrow arrays, one per feature) -> {output_name:
        float32 [N, width]}."""
        rows = len(next(iter(columns.values())))
        out = np.zeros((rows, self.width), dtype=np.float32)
        offset = 0
        for f in self.spec.features:
            if f.name not in columns:
                raise InvalidInput(f"missing input '{f.name}'")
            column = columns[f.name]
            if getattr(column, "ndim", 1) != 1 or len(column) != rows:
                raise InvalidInput(f"input '{f.name}' must be one value per row ({rows} rows)")
            if isinstance(f, CategoricalFeature):
                out[np.arange(rows), offset + self._codes(f, column)] = 1.0
            else:
                values = _numpy(column)
                if isinstance(f, NumericFeature):
                    out[:, offset] = self._numeric(f, values)
                elif values.dtype != np.bool_:
                    raise InvalidInput(f"input '{f.name}' must be BOOL")
                else:
                    out[:, offset] = values
            offset += f.width
        return {self.spec.output_name: out}

    def row_problems(self, table: pa.Table) -> np.ndarray:
        """Per row, why transform() would refuse it (a missing value, a wrong type), or None.
        Batch jobs score the other rows and set these aside with their reason."""
        problems = np.full(table.num_rows, None, dtype=object)
        for f in self.spec.features:
            bad = _bad_rows(f, table.column(f.name))
            if bad.any():
                problems[bad & np.equal(problems, None)] = _PROBLEM[f.kind].format(f.name)  # a row's first problem
        return problems

    def transform_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.transform({f.name: frame[f.name].to_numpy() for f in self.spec.features})[self.spec.output_name]

    @staticmethod
    def _numeric(f: NumericFeature, values: np.ndarray) -> np.ndarray:
        try:
            x = values.astype(np.float64)
        except (TypeError, ValueError):
            raise InvalidInput(f"input '{f.name}' must be numeric") from None
        bad = ~np.isfinite(x)
        if bad.any():
            raise UnprocessableInput(
                f"input '{f.name}' has a missing, NaN or infinite value at row {int(np.argmax(bad))}"
            )
        if f.log:
            x = _log(x)
        return (x - f.mean) / f.std

    def _codes(self, f: CategoricalFeature, column: Column) -> np.ndarray:
        """Each value's one-hot position, OTHER for a category not seen in training."""
        return category_codes(_text(f.name, column), self._category_values[f.name])


def category_codes(text: pa.Array | pa.ChunkedArray, categories: pa.Array) -> np.ndarray:
    """Each value's position among `categories`, len(categories) for any other (an Arrow hash lookup)."""
    codes = pc.index_in(text, value_set=categories)
    return codes.fill_null(len(categories)).to_numpy(zero_copy_only=False)


def _log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _numpy(column: Column) -> np.ndarray:
    if isinstance(column, pa.Array | pa.ChunkedArray):
        return column.to_numpy(zero_copy_only=False)
    return np.asarray(column)


def _not_text(name: str) -> InvalidInput:
    return InvalidInput(f"input '{name}' must hold UTF-8 strings")


def _text(name: str, column: Column) -> pa.Array | pa.ChunkedArray:
    """A column of text as Arrow strings: str or UTF-8 bytes, without gaps."""
    if not isinstance(column, pa.Array | pa.ChunkedArray):
        values = np.asarray(column, dtype=object)
        try:
            column = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # str and bytes mixed: decode value by value
            try:
                column = pa.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in values], pa.string())
            except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
                raise _not_text(name) from None
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if _is_binary(column.type):
        try:
            column = column.cast(pa.string())  # checks the UTF-8
        except pa.ArrowInvalid:
            raise _not_text(name) from None
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) or column.null_count:
        raise _not_text(name)
    return column


def _values(kind: pa.DataType) -> pa.DataType:
    """The type of a column's values: a dictionary's value type, else the column's own."""
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(_values(kind)) or pa.types.is_large_string(_values(kind)) or _is_binary(kind)


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(_values(kind)) or pa.types.is_large_binary(_values(kind))


def _not_utf8(column: pa.ChunkedArray) -> np.ndarray:
    """The rows of a binary column whose bytes are not UTF-8 text: all checked at once by a cast,
    then, only when that fails, a value at a time to find which."""
    try:
        column.cast(pa.string())
        return np.zeros(len(column), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass

    def invalid(value: bytes | None) -> bool:
        if value is None:
            return False
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    return np.array([invalid(value) for value in column.to_pylist()], dtype=bool)


def _bad_rows(f: NumericFeature | CategoricalFeature | BooleanFeature, column: pa.ChunkedArray) -> np.ndarray:
    """The rows of an Arrow column that transform() would refuse, checked at C speed where the
    column's type allows (a column of numbers written as text is parsed value by value)."""
    kind = column.type
    if isinstance(f, NumericFeature):
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            numbers = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        else:
            numbers = pd.to_numeric(column.to_pandas(), errors="coerce").to_numpy(np.float64)
        return ~np.isfinite(numbers)
    fits = _is_text(kind) if isinstance(f, CategoricalFeature) else pa.types.is_boolean(kind)
    if not fits:
        return np.ones(len(column), dtype=bool)
    bad = column.is_null().to_numpy(zero_copy_only=False)
    if _is_binary(kind):  # bytes the preprocessor would refuse as text, row by row, not the whole batch
        bad |= _not_utf8(column)
    return bad
