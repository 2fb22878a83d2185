"""The model repository, laid out like Triton's:

    <root>/<model>/config.yaml
    <root>/<model>/<version>/model.onnx | model.pt | model.pt2
    <root>/<model>/<version>/preprocessor.json   (optional: raw named inputs -> model tensor)
    <root>/<model>/<version>/reference.parquet   (optional: a sample of training inputs)
    <root>/<model>/<version>/variant.json        (a variant made by `serve-app quantize`: precision, source)

Anything broken is reported at start with the file and the field that is wrong.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from pydantic import ValidationError

from serve_app.config import NAME_PATTERN, ModelConfig, TensorSpec, describe_validation_error
from serve_app.errors import ModelNotFound, RepositoryError
from serve_app.features import Preprocessor

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

logger = logging.getLogger("serve_app.repository")

CONFIG_FILE = "config.yaml"
PREPROCESSOR_FILE = "preprocessor.json"
REFERENCE_FILE = "reference.parquet"
VARIANT_FILE = "variant.json"
_DTYPE_PRECISION = {"float16": "fp16", "bfloat16": "bf16"}
MODEL_FILES = {"onnxruntime_onnx": ("model.onnx",), "pytorch_libtorch": ("model.pt2", "model.pt")}
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class ModelVersion:
    """One servable version: its config, its files, and the inputs a client sends it."""

    config: ModelConfig
    version: int
    path: Path

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def model_file(self) -> Path:
        for filename in MODEL_FILES[self.config.platform]:
            if (self.path / filename).is_file():
                return self.path / filename
        expected = " or ".join(MODEL_FILES[self.config.platform])
        raise RepositoryError(f"{self.path}: no {expected} for platform '{self.config.platform}'")

    @cached_property
    def preprocessor(self) -> Preprocessor | None:
        path = self.path / PREPROCESSOR_FILE
        return Preprocessor.load(path) if path.is_file() else None

    @cached_property
    def variant(self) -> dict:
        """<version>/variant.json, written by `serve-app quantize`: precision, source version, method."""
        path = self.path / VARIANT_FILE
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError as error:
            raise RepositoryError(f"{path}: not valid JSON: {error}") from None

    @property
    def precision(self) -> str:
        """fp32, int8, fp16 or bf16: the variant's, else what a PyTorch config's runtime.dtype runs in."""
        return self.variant.get("precision") or _DTYPE_PRECISION.get(self.config.runtime.dtype, "fp32")

    @property
    def reference_file(self) -> Path | None:
        path = self.path / REFERENCE_FILE
        return path if path.is_file() else None

    @property
    def input_specs(self) -> list[TensorSpec]:
        """What the client sends: the preprocessor's raw columns, or the model's own tensors."""
        return self.preprocessor.input_specs if self.preprocessor else list(self.config.inputs)

    def frame_tensors(self, frame: pd.DataFrame | pa.Table) -> dict[str, np.ndarray]:
        """The model's tensors for a frame's rows (pandas or Arrow), as a request's columns become
        them: through the version's preprocessor, which takes the columns as they are (Arrow text
        stays Arrow: no Python string per value), else one stacked column per model input."""
        if self.preprocessor is not None:
            return self.preprocessor.transform({f.name: frame[f.name] for f in self.preprocessor.spec.features})
        return {spec.name: np.stack(frame[spec.name].to_numpy()) for spec in self.config.inputs}

    def check(self) -> None:
        """Everything that can be checked without loading a runtime."""
        _ = self.model_file
        ranking, config_file = self.config.ranking, self.path.parent / "config.yaml"
        if ranking is not None:
            raw = {s.name: s for s in self.input_specs}
            if ranking.candidates not in raw or not raw[ranking.candidates].one_value_per_row:
                raise RepositoryError(
                    f"{config_file}: field 'ranking.candidates': '{ranking.candidates}' is not an input of one "
                    f"value per row (the inputs are {sorted(raw)})"
                )
            if ranking.output in {s.name for s in self.config.outputs}:
                raise RepositoryError(f"{config_file}: field 'ranking.output': '{ranking.output}' is already an output")
        if self.preprocessor is None:
            return
        produced = self.preprocessor.output_spec
        target = next((s for s in self.config.inputs if s.name == produced.name), None)
        if target is None or len(self.config.inputs) != 1:
            raise RepositoryError(
                f"{self.path / PREPROCESSOR_FILE}: field 'output_name': produces '{produced.name}', "
                f"but the model's inputs are {[s.name for s in self.config.inputs]}"
            )
        if target.dims[1:] not in ([-1], [produced.dims[1]]):
            raise RepositoryError(
                f"{self.path / PREPROCESSOR_FILE}: field 'features': produces {produced.dims[1]} columns, "
                f"but config.yaml declares '{target.name}' with dims {target.dims}"
            )


class ModelRepository:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} does not exist or is not a folder")

    def model_names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG_FILE).is_file())

    def _model_dir(self, name: str) -> Path:
        if not _NAME.match(name) or not (self.root / name / CONFIG_FILE).is_file():
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return self.root / name

    def config(self, name: str) -> ModelConfig:
        path = self._model_dir(name) / CONFIG_FILE
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise RepositoryError(f"{path}: cannot read YAML: {error}") from None
        try:
            config = ModelConfig.model_validate(document)
        except ValidationError as error:
            raise RepositoryError(describe_validation_error(error, str(path))) from None
        if config.name != name:
            raise RepositoryError(f"{path}: field 'name': '{config.name}' differs from its folder '{name}'")
        return config

    def available_versions(self, name: str) -> list[int]:
        model_dir = self._model_dir(name)
        return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def served_versions(self, name: str, chosen: list[int] | None = None) -> list[ModelVersion]:
        """The versions `chosen` (the app's `versions` arg), else those the config's version policy
        selects, each checked."""
        config = self.config(name)
        available = self.available_versions(name)
        policy = config.version_policy
        path = self.root / name / CONFIG_FILE
        where = f"args field 'versions.{name}'" if chosen is not None else f"{path}: field 'version_policy.specific'"
        explicit = chosen if chosen is not None else policy.specific
        if explicit is not None:
            absent = sorted(set(explicit) - set(available))
            if absent:
                raise RepositoryError(f"{where}: version(s) {absent} not found (on disk: {available})")
            chosen = sorted(set(explicit))
        else:
            chosen = available[-policy.latest :]
        if not chosen:
            raise RepositoryError(f"{self.root / name}: no version folders (expected <model>/<version>/)")
        versions = [ModelVersion(config, v, self.root / name / str(v)) for v in chosen]
        for version in versions:
            version.check()
        return versions

    def version(self, name: str, version: int) -> ModelVersion:
        if version not in self.available_versions(name):
            raise ModelNotFound(f"model '{name}' has no version {version}")
        return ModelVersion(self.config(name), version, self.root / name / str(version))

    def index(self, served: set[tuple[str, int]]) -> list[dict]:
        """Triton's repository index: every version on disk, READY where it is served, with the reason
        where it is not."""
        entries = []
        for name in self.model_names():
            try:
                versions = self.available_versions(name)
                self.config(name)
            except RepositoryError as error:  # the answer names files within the repository, the log where it is
                logger.warning("model repository index: %s", error.message)
                reason = error.message.replace(f"{self.root.resolve()}/", "").replace(f"{self.root}/", "")
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
                continue
            for version in versions:
                ready = (name, version) in served
                entries.append(
                    {
                        "name": name,
                        "version": str(version),
                        "state": "READY" if ready else "UNAVAILABLE",
                        "reason": "" if ready else "not loaded by this application",
                    }
                )
        return entries

    def check(self, names: list[str] | None = None, versions: dict[str, list[int]] | None = None) -> list[ModelVersion]:
        """Validate the models to serve (default: all), each at `versions[name]` if given, else by
        its version policy; raise on the first broken file."""
        names = self.model_names() if names is None else names
        versions = versions or {}
        if not names:
            raise RepositoryError(f"model repository {self.root} holds no model (no <model>/config.yaml)")
        for name in [*names, *versions]:
            if name not in self.model_names():
                raise RepositoryError(f"model '{name}' is not in the repository {self.root}")
        unserved = sorted(set(versions) - set(names))
        if unserved:
            raise RepositoryError(f"args field 'versions': models {unserved} are not among those served")
        return [version for name in names for version in self.served_versions(name, versions.get(name))]
