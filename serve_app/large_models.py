"""Larger models for the quantisation demo and the benchmarks: a wide MLP on the fraud features
(fraud-wide), its PyTorch copies, and a 4096-wide feed-forward network (ffn) where batching pays."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from serve_app.demo import (
    BOOLEAN,
    CATEGORICAL,
    LABEL,
    LOG_SCALED,
    NUMERIC,
    dense_onnx,
    finish_model,
    model_config,
    plain_config,
    score_layers,
    synthetic_transactions,
    write_model,
)
from serve_app.features import Preprocessor

WIDE_MODEL_NAME = "fraud-wide"
WIDE_HIDDEN = (1024, 1024, 512)


def build_wide_model(root: str | Path, seed: int = 7, train_rows: int = 30_000, epochs: int = 4) -> dict:
    """`fraud-wide` v1: the fraud task as a 1024-1024-512 MLP, large enough that a model call is
    matrix arithmetic rather than overhead (what quantisation speeds up). A few epochs only: its
    AUC is close to v2's, and building it takes tens of seconds, so the demo builds it on request
    (`serve-app demo build --wide`)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    root = Path(root)
    train = synthetic_transactions(train_rows, seed)
    validation = synthetic_transactions(20_000, seed + 1)
    reference = synthetic_transactions(2_000, seed + 2).drop(columns=[LABEL])
    preprocessor = Preprocessor.fit(train, NUMERIC, CATEGORICAL, BOOLEAN, log=LOG_SCALED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=WIDE_HIDDEN, alpha=1e-3, max_iter=epochs, random_state=seed)
        mlp.fit(preprocessor.transform_frame(train), train[LABEL].to_numpy())
    layers = list(zip(mlp.coefs_, mlp.intercepts_))
    version_dir = root / WIDE_MODEL_NAME / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(
        dense_onnx(layers, "features", "fraud_probability", "fraud-wide v1: MLP 1024-1024-512"),
        version_dir / "model.onnx",
    )
    preprocessor.save(version_dir / "preprocessor.json")
    reference.to_parquet(version_dir / "reference.parquet", index=False)
    validation.to_parquet(root / WIDE_MODEL_NAME / "validation.parquet", index=False)
    config = {
        **model_config(preprocessor.width),
        "name": WIDE_MODEL_NAME,
        "version_policy": {"latest": 1},
        "description": "Fraud probability from a wide MLP (quantisation demo).",
    }
    (root / WIDE_MODEL_NAME / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    auc = roc_auc_score(validation[LABEL], score_layers(layers, preprocessor.transform_frame(validation)))
    return {"model": WIDE_MODEL_NAME, "auc": round(float(auc), 6)}


def dense_layers(model: onnx.ModelProto) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (weight, bias) pairs of a graph written by `dense_onnx`, in order."""
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(arrays[f"W{i}"], arrays[f"B{i}"]) for i in range(sum(name.startswith("W") for name in arrays))]


def build_torch_copy(root: str | Path, source: str, name: str, file_format: str = "pt") -> Path:
    """`<name>` v1: a PyTorch twin of `<source>`'s latest fp32 dense ONNX version (same weights, same
    preprocessor, reference and validation set), as TorchScript (pt) or a torch.export program
    (pt2): the PyTorch side of quantisation and export, on a model whose AUC is known."""
    from serve_app.extras import require

    torch = require("torch", "a PyTorch copy of a demo model")

    from serve_app.repository import ModelRepository

    repo = ModelRepository(root)
    fp32 = [n for n in repo.available_versions(source) if repo.version(source, n).precision == "fp32"]
    version = repo.version(source, fp32[-1])
    linear = []
    for weight, bias in dense_layers(onnx.load(str(version.model_file))):
        layer = torch.nn.Linear(*weight.shape)
        layer.weight.data, layer.bias.data = torch.from_numpy(weight.T.copy()), torch.from_numpy(bias.copy())
        linear.append(layer)
    stack = [m for layer in linear[:-1] for m in (layer, torch.nn.ReLU())]
    module = torch.nn.Sequential(*stack, linear[-1], torch.nn.Sigmoid(), torch.nn.Flatten(0)).eval()
    out = Path(root) / name
    (out / "1").mkdir(parents=True, exist_ok=True)
    if file_format == "pt2":
        example = (torch.zeros(2, linear[0].in_features),)
        program = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(out / "1" / "model.pt2"))
    else:
        torch.jit.script(module).save(str(out / "1" / "model.pt"))
    for file in ("preprocessor.json", "reference.parquet"):
        (out / "1" / file).write_bytes((version.path / file).read_bytes())
    (out / "validation.parquet").write_bytes((version.path.parent / "validation.parquet").read_bytes())
    config = {
        **version.config.model_dump(mode="json", exclude_none=True),
        "name": name,
        "platform": "pytorch_libtorch",
        "version_policy": {"latest": 1},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


BIG_MODEL_NAME = "ffn"
BIG_DIMS = (512, 4096, 4096, 4096, 512)


def ffn_onnx(seed: int) -> onnx.ModelProto:
    """A transformer-sized feed-forward stack, 512 -> 4096 -> 4096 -> 4096 -> 512 (ReLU between),
    38 M parameters (151 MB). At batch 1 a call reads every weight for one row (memory-bound, about
    3 ms here); at batch 32 the same read serves 32 rows: the model where batching pays. Random
    weights (He-initialised, seeded): it exists to cost what such a model costs."""
    rng = np.random.default_rng(seed)
    nodes, initializers, current = [], [], "embedding"
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(BIG_DIMS)):
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"W{index}"))
        last = index == len(BIG_DIMS) - 2
        nodes.append(helper.make_node("MatMul", [current, f"W{index}"], ["output" if last else f"m{index}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"m{index}"], [f"h{index}"]))
            current = f"h{index}"
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", BIG_DIMS[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", BIG_DIMS[-1]])],
        initializers,
    )
    return finish_model(graph, "ffn: 512-4096-4096-4096-512 feed-forward stack, 38M parameters (benchmark model)")


def build_ffn_model(root: str | Path, seed: int = 7) -> Path:
    """`ffn` v1: the compute-heavy model of the benchmarks (`serve-app demo build --ffn`)."""
    config = plain_config(
        BIG_MODEL_NAME,
        "A transformer-sized feed-forward stack on 512-wide embeddings (a benchmark model).",
        [{"name": "embedding", "datatype": "FP32", "dims": [-1, BIG_DIMS[0]]}],
        [{"name": "output", "datatype": "FP32", "dims": [-1, BIG_DIMS[-1]]}],
    )
    config["dynamic_batching"] = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0}
    config["instances"]["num_cpus"] = 1
    write_model(Path(root), BIG_MODEL_NAME, ffn_onnx(seed), config)
    return Path(root) / BIG_MODEL_NAME
