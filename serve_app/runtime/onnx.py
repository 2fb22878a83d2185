"""ONNX Runtime runner: TensorRT/CUDA providers where a GPU is really usable, else the CPU."""

from __future__ import annotations

import contextlib
import functools
import io
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve_app.config import ModelConfig
from serve_app.errors import InvalidInput, RepositoryError
from serve_app.protocol.tensors import NUMPY_DTYPES
from serve_app.runtime.base import Runner, logger
from serve_app.runtime.devices import cuda_device_count, cuda_libraries, fall_back_to_cpu, placement

# ONNX Runtime's names for tensor element types, by protocol datatype.
_ORT_TYPES = {
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)",
    "UINT64": "tensor(uint64)",
    "INT8": "tensor(int8)",
    "INT16": "tensor(int16)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "FP16": "tensor(float16)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
    "BYTES": "tensor(string)",
}
TENSORRT_CACHE_FOLDER = "tensorrt_cache"
"""Beside the model file: TensorRT engines and timing caches of that version."""


def cuda_problem() -> str | None:
    """Why ONNX Runtime's CUDA provider cannot run here, or None when it can."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this ONNX Runtime build has no CUDA provider (install onnxruntime-gpu)"
    if cuda_device_count() == 0:
        return "the CUDA driver reports no usable device"
    major = build_cuda_major()
    _preload_cuda_libraries()
    missing = [name for name, found in cuda_libraries(major).items() if not found]
    if missing:
        return f"CUDA {major} libraries not found: {', '.join(missing)} (pip install 'serve-app[cuda]')"
    return None


def build_cuda_major() -> int:
    """The CUDA major version this onnxruntime-gpu was built for (its libraries must match)."""
    return int((getattr(ort, "cuda_version", "") or "12").split(".")[0])


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the `cuda` extra's wheels, else the system's, without importing torch
    (which would load them too, at the cost of hundreds of MB per replica)."""
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints what it cannot load: cuda_problem says it
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False, directory="")


def tensorrt_options(config: ModelConfig, model_file: Path) -> dict:
    """TensorRT's provider options: engines cached per model version (built once, not per process),
    and one shape profile from 1 to max_batch_size rows, so no batch size the replica meets makes
    TensorRT build a new engine."""
    runtime = config.runtime
    if runtime.tensorrt_cache_dir:
        cache = Path(runtime.tensorrt_cache_dir) / config.name / model_file.parent.name
    else:
        cache = model_file.parent / TENSORRT_CACHE_FOLDER
    cache.mkdir(parents=True, exist_ok=True)
    options = {
        "trt_fp16_enable": runtime.tensorrt_precision == "fp16",
        "trt_int8_enable": runtime.tensorrt_precision == "int8",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }
    if all(d > 0 for spec in config.inputs for d in spec.dims[1:]):  # profiles need every other dim fixed
        for key, rows in (("min", 1), ("opt", config.dynamic_batching.max_batch_size), ("max", config.max_batch_size)):
            options[f"trt_profile_{key}_shapes"] = ",".join(
                f"{spec.name}:{'x'.join(str(d) for d in [rows, *spec.dims[1:]])}" for spec in config.inputs
            )
    return options


def choose_providers(config: ModelConfig, device: str, model_file: Path) -> list:
    """The providers to ask for on `device` ('cuda' or 'cpu'), TensorRT first where asked and built in."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if config.runtime.tensorrt and "TensorrtExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("TensorrtExecutionProvider", tensorrt_options(config, model_file)))
    return providers


class OnnxRunner(Runner):
    def __init__(self, config: ModelConfig, model_file: Path, gpus_given: int | None = None):
        """gpus_given: the GPUs Ray assigned to this replica (None outside Ray): see devices.placement."""
        self.config = config
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; provider fallbacks are logged by us, once
        options.intra_op_num_threads = config.runtime.intra_op_num_threads or max(
            1, math.ceil(config.instances.num_cpus)
        )
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        device = self.placed_on = placement(config.name, config.runtime.device, gpus_given)
        if device == "cuda" and (problem := cuda_problem()):
            device = fall_back_to_cpu(config.name, config.runtime.device, problem)
        if device == "cpu" and config.runtime.tensorrt:
            logger.warning("model %s: runtime.tensorrt is set but the model runs on the CPU: no TensorRT", config.name)
        try:
            self.session = ort.InferenceSession(
                str(model_file), sess_options=options, providers=choose_providers(config, device, model_file)
            )
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise RepositoryError(f"{model_file}: ONNX Runtime cannot load the model: {error}") from None
        in_use = self.session.get_providers()  # what the session really runs with, not what was asked
        if device == "cuda" and "CUDAExecutionProvider" not in in_use:
            fall_back_to_cpu(config.name, config.runtime.device, "ONNX Runtime could not start its CUDA provider")
        if device == "cuda" and config.runtime.tensorrt and "TensorrtExecutionProvider" not in in_use:
            logger.warning("model %s: runtime.tensorrt is set but TensorRT is not available: using CUDA", config.name)
        self.device = "cpu" if in_use[0] == "CPUExecutionProvider" else "cuda:0"
        logger.info("model %s: ONNX Runtime providers %s", config.name, in_use)
        self._check_signature(model_file)
        self._output_names = [spec.name for spec in config.outputs]
        self._output_dtypes = {spec.name: NUMPY_DTYPES[spec.datatype] for spec in config.outputs}
        if config.runtime.warmup:
            self.warm_up()

    def graph_dims(self, name: str) -> list[int | None] | None:
        declared = next((i.shape for i in self.session.get_inputs() if i.name == name), None)
        return None if declared is None else [d if isinstance(d, int) else None for d in declared]

    def _check_signature(self, model_file: Path) -> None:
        """The config must describe the graph: a mismatch fails at load, naming the field."""
        for field, declared, actual in (
            ("inputs", self.config.inputs, self.session.get_inputs()),
            ("outputs", self.config.outputs, self.session.get_outputs()),
        ):
            by_name = {node.name: node for node in actual}
            for index, spec in enumerate(declared):
                node = by_name.get(spec.name)
                where = f"config.yaml of model '{self.config.name}': field '{field}.{index}'"
                if node is None:
                    raise RepositoryError(
                        f"{where}: {model_file.name} has no tensor '{spec.name}' (it has {sorted(by_name)})"
                    )
                if node.type != _ORT_TYPES[spec.datatype]:
                    raise RepositoryError(f"{where}: datatype {spec.datatype} but the graph has {node.type}")
                if len(node.shape) != len(spec.dims):
                    raise RepositoryError(f"{where}: dims {spec.dims} but the graph's shape is {node.shape}")

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: _as_text(name, array) if array.dtype == object else array for name, array in inputs.items()}
        if self.device == "cpu" or any(a.dtype == object for a in feed.values()):
            values = self.session.run(self._output_names, feed)
        else:
            values = self._run_bound(feed)
        return {
            name: _as_bytes(value) if self._output_dtypes[name].kind == "O" else value
            for name, value in zip(self._output_names, values)
        }

    def _run_bound(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """On a GPU, with IO binding: each input is copied to the device once, outputs are allocated
        there by ONNX Runtime and copied back once (no per-node host round trips)."""
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.session.get_providers()}


# ONNX Runtime's Python API carries string tensors as str (it would str() a bytes object), while
# the protocol's BYTES are bytes: convert at the boundary, so BYTES must be UTF-8 for ONNX models.
def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    try:
        text = [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.ravel()]
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text for an ONNX string tensor") from None
    return np.array(text, dtype=object).reshape(array.shape)


def _as_bytes(array: np.ndarray) -> np.ndarray:
    encoded = np.empty(array.size, dtype=object)
    encoded[:] = [item.encode("utf-8") if isinstance(item, str) else item for item in array.ravel()]
    return encoded.reshape(array.shape)
