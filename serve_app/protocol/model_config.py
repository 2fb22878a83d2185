"""Triton's model configuration (its model_configuration extension) of a served version, in the
JSON form Triton's HTTP endpoint answers and its tools read: what a client sends (the raw inputs,
before any preprocessor) and what it gets back, the batching, the instances and the version policy,
filled from the repository's config.yaml. gRPC's ModelConfig carries the same fields."""

from __future__ import annotations

from typing import Any

from serve_app.config import GraphArgs, ModelConfig, TensorSpec
from serve_app.protocol.dataplane import Endpoint
from serve_app.protocol.tensors import declared_dims

BACKENDS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}


def data_type(datatype: str) -> str:
    """The protocol's datatype as Triton's config names it (BYTES is TYPE_STRING there)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def triton_model_config(endpoint: Endpoint, config: ModelConfig, settings: GraphArgs) -> dict[str, Any]:
    """With max_batch_size > 0 (always here), dims leave out the batch dimension. A per-row scalar
    input is declared as Triton declares one, dims [1] with a reshape to [] (the model sees a column);
    clients may send [n] or [n, 1]."""
    batching = config.dynamic_batching
    in_router = config.name in settings.in_router
    gpu = not in_router and (config.instances.num_gpus > 0 or config.runtime.device == "cuda")
    policy = config.version_policy
    return {
        "name": config.name,
        "platform": config.platform,
        "backend": BACKENDS[config.platform],
        "version_policy": (
            {"latest": {"num_versions": policy.latest}}
            if policy.latest is not None
            else {"specific": {"versions": policy.specific}}
        ),
        "max_batch_size": config.max_batch_size,
        "input": [_input(spec) for spec in endpoint.input_specs],
        "output": [_output(spec) for spec in endpoint.output_specs],
        "dynamic_batching": {
            "preferred_batch_size": [batching.max_batch_size],
            "max_queue_delay_microseconds": round(batching.batch_wait_timeout_s * 1e6),
            "preserve_ordering": False,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": True,
                "max_queue_size": max(settings.max_queued_requests, 0),
            },
        },
        "instance_group": [
            {
                "name": f"{config.name}_0",
                "kind": "KIND_GPU" if gpu else "KIND_CPU",
                "count": settings.num_replicas_ingress if in_router else config.instances.num_replicas,
                "gpus": [],
            }
        ],
        "default_model_filename": "model.onnx" if config.platform == "onnxruntime_onnx" else "model.pt",
        "parameters": {
            "precision": {"string_value": endpoint.precision},
            "runs_in": {"string_value": "router" if in_router else "model replicas"},
        },
    }


def _input(spec: TensorSpec) -> dict[str, Any]:
    dims = declared_dims(spec)[1:]
    tensor = {
        "name": spec.name,
        "data_type": data_type(spec.datatype),
        "format": "FORMAT_NONE",
        "dims": dims,
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
    }
    if dims != spec.dims[1:]:
        tensor["reshape"] = {"shape": spec.dims[1:]}
    return tensor


def _output(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "data_type": data_type(spec.datatype),
        "dims": spec.dims[1:],
        "label_filename": "",
        "is_shape_tensor": False,
    }
