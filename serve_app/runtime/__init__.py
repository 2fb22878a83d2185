"""Model runners. Import a runner's module only when its platform is used: an ONNX
replica never imports torch (hundreds of MB and seconds of start-up)."""

from __future__ import annotations

from pathlib import Path

from serve_app.config import ModelConfig
from serve_app.extras import require
from serve_app.runtime.base import Runner


def load_runner(
    config: ModelConfig, model_file: Path, precision: str = "fp32", gpus_given: int | None = None
) -> Runner:
    """`precision` is the version's (ModelVersion.precision): an ONNX variant carries it in its
    graph; a PyTorch fp16/bf16 variant is the source's file run in that dtype. `gpus_given`: how
    many GPUs Ray assigned to the calling replica or actor, None outside Ray (devices.placement)."""
    if config.platform == "onnxruntime_onnx":
        from serve_app.runtime.onnx import OnnxRunner

        return OnnxRunner(config, model_file, gpus_given)
    require("torch", f"model '{config.name}' (platform {config.platform})")
    from serve_app.runtime.torch import TorchRunner

    return TorchRunner(config, model_file, precision, gpus_given)


__all__ = ["Runner", "load_runner"]
