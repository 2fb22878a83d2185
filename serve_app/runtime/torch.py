"""PyTorch runner: TorchScript (model.pt) or a torch.export program (model.pt2).

Neither format unpickles arbitrary objects: TorchScript archives and exported programs
are loaded by their own restricted loaders, never with a plain pickle load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from serve_app.config import ModelConfig
from serve_app.errors import RepositoryError
from serve_app.protocol.tensors import NUMPY_DTYPES
from serve_app.runtime.base import Runner, logger
from serve_app.runtime.devices import fall_back_to_cpu, placement

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
VARIANT_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # a variant's precision overrides runtime.dtype


class TorchRunner(Runner):
    def __init__(self, config: ModelConfig, model_file: Path, precision: str = "fp32", gpus_given: int | None = None):
        """gpus_given: the GPUs Ray assigned to this replica (None outside Ray): see devices.placement."""
        self.config = config
        self.placed_on = placement(config.name, config.runtime.device, gpus_given)
        use_gpu = self.placed_on == "cuda"
        if use_gpu and not torch.cuda.is_available():
            problem = f"this PyTorch build ({torch.__version__}) cannot use CUDA here"
            use_gpu = fall_back_to_cpu(config.name, config.runtime.device, problem) == "cuda"
        if use_gpu and precision == "int8":
            logger.warning("model %s: int8 (dynamic quantisation) runs on the CPU only: not using the GPU", config.name)
            use_gpu = False
        self.device = "cuda:0" if use_gpu else "cpu"
        dtype = VARIANT_DTYPES.get(precision, config.runtime.dtype)
        self._dtype = _TORCH_DTYPES[dtype]
        if self.device == "cpu" and self._dtype is torch.float16:
            where = (
                f"{model_file.parent}: precision fp16"
                if precision == "fp16"
                else (f"config.yaml of model '{config.name}': field 'runtime.dtype': float16")
            )
            raise RepositoryError(f"{where} needs a GPU; use float32 or bfloat16 on the CPU")
        if config.runtime.intra_op_num_threads:
            torch.set_num_threads(config.runtime.intra_op_num_threads)
        try:
            if model_file.suffix == ".pt2":
                module = torch.export.load(str(model_file)).module()
            else:
                module = torch.jit.load(str(model_file), map_location=self.device)
        except Exception as error:  # torch raises many unrelated types for a bad file
            raise RepositoryError(f"{model_file}: PyTorch cannot load the model: {error}") from None
        self.module = module.to(self.device)
        if self._dtype is not torch.float32:
            self.module = self.module.to(self._dtype)
        if hasattr(self.module, "eval") and model_file.suffix != ".pt2":
            self.module.eval()  # exported programs are already in inference form
        self._output_dtypes = [NUMPY_DTYPES[spec.datatype] for spec in config.outputs]
        logger.info("model %s: PyTorch on %s in %s", config.name, self.device, dtype)
        if config.runtime.warmup:
            self.warm_up()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return tensor.to(self._dtype) if tensor.is_floating_point() else tensor

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._tensor(inputs[spec.name]) for spec in self.config.inputs]
        with torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, dict):
            result = [result[spec.name] for spec in self.config.outputs]
        elif isinstance(result, torch.Tensor):
            result = [result]
        if len(result) != len(self.config.outputs):
            raise RepositoryError(
                f"model '{self.config.name}' returned {len(result)} outputs; config.yaml declares "
                f"{len(self.config.outputs)}"
            )
        return {
            spec.name: value.detach().float().cpu().numpy().astype(dtype)
            if value.is_floating_point()
            else value.detach().cpu().numpy().astype(dtype)
            for spec, value, dtype in zip(self.config.outputs, result, self._output_dtypes)
        }
