"""ONNX Runtime runner: TensorRT/CUDA providers where a GPU is really usable, else the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve_app.config import ModelConfig
from serve_app.errors import InvalidInput, RepositoryError
from serve_app.protocol.tensors import NUMPY_DTYPES
from serve_app.runtime.base import Runner, logger
from serve_app.runtime.devices import cuda_device_count, wants_gpu

# ONNX Runtime's names for tensor element types, by protocol datatype.
_ORT_TYPES = {
    "BOOL": "tensor(bool)", "UINT8": "tensor(uint8)", "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)", "UINT64": "tensor(uint64)", "INT8": "tensor(int8)",
    "INT16": "tensor(int16)", "INT32": "tensor(int32)", "INT64": "tensor(int64)",
    "FP16": "tensor(float16)", "FP32": "tensor(float)", "FP64": "tensor(double)",
    "BYTES": "tensor(string)",
}  # fmt: skip


def choose_providers(config: ModelConfig) -> tuple[list, str]:
    """Providers to ask for, and why, decided before any session is made."""
    available = ort.get_available_providers()
    if not wants_gpu(config.runtime.device, config.instances.num_gpus):
        return ["CPUExecutionProvider"], "no GPU requested"
    if "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"], "this ONNX Runtime build has no CUDA provider"
    if cuda_device_count() == 0:
        return ["CPUExecutionProvider"], "no usable CUDA device"
    gpu_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if config.runtime.tensorrt and "TensorrtExecutionProvider" in available:
        precision = config.runtime.tensorrt_precision
        options = {"trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"}
        return [("TensorrtExecutionProvider", options), *gpu_providers], f"CUDA device found, TensorRT {precision}"
    return gpu_providers, "CUDA device found"


class OnnxRunner(Runner):
    def __init__(self, config: ModelConfig, model_file: Path):
        self.config = config
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; provider fallbacks are logged by us, once
        options.intra_op_num_threads = config.runtime.intra_op_num_threads or max(
            1, math.ceil(config.instances.num_cpus)
        )
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers, reason = choose_providers(config)
        try:
            self.session = ort.InferenceSession(str(model_file), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise RepositoryError(f"{model_file}: ONNX Runtime cannot load the model: {error}") from None
        in_use = self.session.get_providers()
        self.device = "cpu" if in_use[0] == "CPUExecutionProvider" else "cuda:0"
        logger.info("model %s: ONNX Runtime providers %s (%s)", config.name, in_use, reason)
        self._check_signature(model_file)
        self._output_names = [spec.name for spec in config.outputs]
        self._output_dtypes = {spec.name: NUMPY_DTYPES[spec.datatype] for spec in config.outputs}
        if config.runtime.warmup:
            self.warm_up()

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
                    raise RepositoryError(f"{where}: {model_file.name} has no tensor '{spec.name}' "
                                          f"(it has {sorted(by_name)})")  # fmt: skip
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
