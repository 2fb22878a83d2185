"""Adding versions to the model repository: register an ONNX file, or export a PyTorch model to ONNX.

    serve-app register --model fraud --onnx model.onnx [--preprocessor preprocessor.json] [--reference rows.parquet]
    serve-app export --model fraud --torch model.pt --example rows.parquet [--tolerance 1e-4]

Every new version is assembled in a hidden staging folder beside the model's versions, checked
there (the model loads, matches the config, runs on the reference rows through the preprocessor),
and renamed into place as the next version number: a running server never sees half a version,
and a refused one leaves the repository as it was. `serve_app.quantize` registers its variants the same way.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import yaml

from serve_app.config import NAME_PATTERN, ModelConfig
from serve_app.errors import InvalidInput
from serve_app.extras import require
from serve_app.features import Preprocessor
from serve_app.repository import PREPROCESSOR_FILE, REFERENCE_FILE, ModelRepository, ModelVersion

CONFIG_FILE = "config.yaml"
_ONNX_DATATYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.INT8: "INT8",
}


def check_name(model: str) -> None:
    if not re.match(NAME_PATTERN, model):
        raise InvalidInput(f"model name {model!r}: letters, digits, '_', '.' and '-' only (no path characters)")


@contextmanager
def staged_version(repository: str | Path, model: str) -> Iterator[Path]:
    """A hidden folder to assemble a version in; removed whatever happens unless committed."""
    check_name(model)
    folder = Path(repository) / model / f".staging-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def commit_version(repository: str | Path, model: str, staging: Path) -> int:
    """Rename the staging folder to the next version number: the version appears whole, or not at all."""
    existing = ModelRepository(repository).available_versions(model) if (Path(repository) / model).is_dir() else []
    version = max(existing, default=0) + 1
    target = Path(repository) / model / str(version)
    try:
        staging.rename(target)  # never onto a version folder: rename refuses a non-empty one
    except OSError:
        raise InvalidInput(
            f"{model} v{version} already exists (written meanwhile by someone else): "
            "nothing was written; run the command again"
        ) from None
    return version


def config_from_graph(model: str, graph: onnx.GraphProto, max_batch_size: int = 256) -> dict:
    """A config.yaml for a new model, from the ONNX graph's inputs and outputs (first dim: the batch)."""

    def spec(value: onnx.ValueInfoProto) -> dict:
        tensor = value.type.tensor_type
        if tensor.elem_type not in _ONNX_DATATYPES:
            raise InvalidInput(f"tensor '{value.name}': element type {tensor.elem_type} is not supported")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims:
            raise InvalidInput(f"tensor '{value.name}' has no batch dimension")
        return {"name": value.name, "datatype": _ONNX_DATATYPES[tensor.elem_type], "dims": [-1, *dims[1:]]}

    initializers = {i.name for i in graph.initializer}
    return {
        "name": model,
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size,
        "inputs": [spec(i) for i in graph.input if i.name not in initializers],
        "outputs": [spec(o) for o in graph.output],
    }


def _load_onnx(path: Path) -> onnx.ModelProto:
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as error:
        raise InvalidInput(f"{path}: not a valid ONNX model: {str(error).splitlines()[0][:200]}") from None
    return proto


def register(
    repository: str | Path,
    model: str,
    onnx_file: str | Path,
    preprocessor: str | Path | None = None,
    reference: str | Path | None = None,
) -> dict:
    """Validate the artefacts and write them as the model's next version; returns what was checked."""
    check_name(model)
    onnx_file = Path(onnx_file)
    proto = _load_onnx(onnx_file)
    repo = ModelRepository(repository)
    existing = (Path(repository) / model / CONFIG_FILE).is_file()
    latest = repo.version(model, repo.available_versions(model)[-1]) if existing else None
    preprocessor_file = Path(preprocessor) if preprocessor else (latest.path / PREPROCESSOR_FILE if latest else None)
    reference_file = Path(reference) if reference else (latest.reference_file if latest else None)
    folder = Path(repository) / model
    created_folder = not folder.exists()  # a failed registration removes what it wrote, nothing more
    folder.mkdir(parents=True, exist_ok=True)
    wrote_config = False
    try:
        with staged_version(repository, model) as staging:
            shutil.copyfile(onnx_file, staging / "model.onnx")
            if preprocessor_file is not None and preprocessor_file.is_file():
                Preprocessor.load(preprocessor_file)  # names the field that is wrong
                shutil.copyfile(preprocessor_file, staging / PREPROCESSOR_FILE)
            if reference_file is not None:
                if not Path(reference_file).is_file():
                    raise InvalidInput(f"reference {reference_file}: no such file")
                shutil.copyfile(reference_file, staging / REFERENCE_FILE)
            config = (
                repo.config(model) if existing else ModelConfig.model_validate(config_from_graph(model, proto.graph))
            )
            if not existing:
                (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
                wrote_config = True
            checked = check_version(ModelVersion(config, 0, staging))
            version = commit_version(repository, model, staging)
    except BaseException:
        if created_folder:
            shutil.rmtree(folder, ignore_errors=True)
        elif wrote_config:
            (folder / CONFIG_FILE).unlink(missing_ok=True)
        raise
    return {"model": model, "version": version, **checked}


def check_version(version: ModelVersion) -> dict:
    """The version loads, its graph matches the config, and it scores the reference rows
    through its preprocessor (whose output must be what the model takes)."""
    from serve_app.runtime import load_runner

    runner = load_runner(version.config, version.model_file, version.precision)  # a signature mismatch names the field
    preprocessor = version.preprocessor
    if preprocessor is not None:
        model_input = version.config.inputs[0]
        produced = preprocessor.output_spec
        # A variable width ([-1, -1]) takes any preprocessor's, as the repository's check does.
        if produced.name != model_input.name or model_input.dims[1:] not in ([-1], produced.dims[1:]):
            raise InvalidInput(
                f"the preprocessor makes '{produced.name}' {produced.dims} but the model takes "
                f"'{model_input.name}' {model_input.dims}"
            )
    rows = 0
    if version.reference_file is not None:
        frame = pd.read_parquet(version.reference_file).head(256)
        inputs = model_inputs(version, frame, str(version.reference_file))
        outputs = runner.predict(inputs)
        if not all(np.all(np.isfinite(v)) for v in outputs.values() if v.dtype.kind == "f"):
            raise InvalidInput("the model gives NaN or infinite outputs on the reference rows")
        rows = len(frame)
    return {"platform": version.config.platform, "reference_rows_scored": rows}


def model_inputs(version: ModelVersion, frame: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
    """Rows as the model's tensors, through the version's own preprocessor; missing columns are named."""
    preprocessor = version.preprocessor
    names = [f.name for f in preprocessor.spec.features] if preprocessor else [s.name for s in version.config.inputs]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise InvalidInput(f"{source} lacks the column(s) {missing} that {version.name} needs")
    return version.frame_tensors(frame)


def export(
    repository: str | Path,
    model: str,
    torch_file: str | Path,
    example: str | Path,
    tolerance: float = 1e-4,
    preprocessor: str | Path | None = None,
) -> dict:
    """Export a TorchScript (.pt) or torch.export (.pt2) model to ONNX with a dynamic batch, check
    ONNX Runtime against PyTorch on the example rows, and register it."""
    torch = require("torch", "serve-app export")

    torch_file = Path(torch_file)
    try:
        if torch_file.suffix == ".pt2":
            module = torch.export.load(str(torch_file)).module()
        else:
            module = torch.jit.load(str(torch_file), map_location="cpu")
    except Exception as error:
        raise InvalidInput(f"{torch_file}: not a TorchScript or torch.export model: {error}") from None
    frame = pd.read_parquet(example)
    repo = ModelRepository(repository)
    existing = (Path(repository) / model / CONFIG_FILE).is_file()
    latest = repo.version(model, repo.available_versions(model)[-1]) if existing else None
    preprocessor_file = Path(preprocessor) if preprocessor else (latest.path / PREPROCESSOR_FILE if latest else None)
    if preprocessor_file is None or not preprocessor_file.is_file():
        raise InvalidInput("export needs a preprocessor (--preprocessor, or the model's latest version has one)")
    prep = Preprocessor.load(preprocessor_file)
    missing = [f.name for f in prep.spec.features if f.name not in frame]
    if missing:
        raise InvalidInput(f"example file {example} lacks the column(s) {missing} the preprocessor needs")
    features = prep.transform_frame(frame)
    output_name = latest.config.outputs[0].name if latest else "output"
    with torch.no_grad():
        expected = module(torch.from_numpy(features)).numpy()
    input_name = prep.spec.output_name
    scratch = Path(repository) / model / f".export-{uuid.uuid4().hex[:8]}.onnx"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            with warnings.catch_warnings():  # TorchScript modules have no Python signature to read: expected
                warnings.filterwarnings("ignore", message="no signature found", category=UserWarning)
                torch.onnx.export(
                    module,
                    (torch.from_numpy(features[:2]),),
                    str(scratch),
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                    dynamo=False,
                )
        except Exception as error:
            raise InvalidInput(
                f"{torch_file}: cannot be exported to ONNX: {str(error).splitlines()[0][:300]}"
            ) from None
        import onnxruntime as ort

        session = ort.InferenceSession(str(scratch), providers=["CPUExecutionProvider"])
        got = session.run(None, {input_name: features})[0]
        difference = float(np.max(np.abs(got.reshape(expected.shape) - expected))) if expected.size else 0.0
        if not difference <= tolerance:
            raise InvalidInput(
                f"parity failed: ONNX Runtime differs from PyTorch by {difference:.3g} "
                f"(> tolerance {tolerance:g}) on {len(frame)} example rows: not registered"
            )
        result = register(repository, model, scratch, preprocessor_file, example)
    finally:
        scratch.unlink(missing_ok=True)
    version_dir = Path(repository) / model / str(result["version"])
    parity = {"rows": len(frame), "max_abs_difference": difference, "tolerance": tolerance}
    (version_dir / "export.json").write_text(json.dumps({"source": torch_file.name, "parity": parity}, indent=1))
    return {**result, "parity": parity}
