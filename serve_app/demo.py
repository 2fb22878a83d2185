"""The demo repository: a fraud-scoring model on synthetic card transactions.

Deterministic by seed and quick on two cores. Version 1 is a logistic regression;
version 2 a small MLP that can learn the interactions (night-time card-not-present,
large amounts on new accounts) that a linear model cannot, so it scores better.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import yaml
from onnx import TensorProto, helper, numpy_helper

from serve_app.features import Preprocessor

MODEL_NAME = "fraud"
LABEL = "is_fraud"
NUMERIC = {
    "amount": "FP32",
    "hour": "INT64",
    "tx_count_24h": "INT64",
    "account_age_days": "INT64",
    "distance_km": "FP32",
}
LOG_SCALED = ["amount", "tx_count_24h", "account_age_days", "distance_km"]
CATEGORICAL = ["merchant_category", "country"]
BOOLEAN = ["card_present"]
MERCHANTS = ["grocery", "restaurants", "fuel", "pharmacy", "travel", "electronics", "gaming", "jewelry"]
MERCHANT_P = [0.28, 0.2, 0.14, 0.1, 0.1, 0.08, 0.06, 0.04]
RISKY_MERCHANTS = ["electronics", "gaming", "jewelry"]
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "CA", "BR", "NG", "RU"]
COUNTRY_P = [0.4, 0.12, 0.1, 0.08, 0.07, 0.06, 0.07, 0.05, 0.03, 0.02]
RISKY_COUNTRIES = ["NG", "RU", "BR"]
OPSET = 17


def synthetic_transactions(rows: int, seed: int) -> pd.DataFrame:
    """Raw transactions with a ~3% fraud label driven partly by non-linear interactions."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(mean=3.6, sigma=1.1, size=rows).astype(np.float32)
    hour = rng.integers(0, 24, size=rows)
    tx_count = rng.poisson(2.0, size=rows)
    account_age = rng.exponential(500.0, size=rows).astype(np.int64)
    distance = rng.exponential(25.0, size=rows).astype(np.float32)
    merchant = rng.choice(MERCHANTS, p=MERCHANT_P, size=rows)
    country = rng.choice(COUNTRIES, p=COUNTRY_P, size=rows)
    card_present = rng.random(rows) < 0.6
    night = (hour < 5) | (hour >= 23)
    logit = (
        -5.0
        + 0.45 * (np.log1p(amount) - 3.6)
        + 0.9 * np.isin(merchant, RISKY_MERCHANTS)
        + 1.0 * np.isin(country, RISKY_COUNTRIES)
        + 0.35 * np.log1p(tx_count)
        + 0.4 * (np.log1p(distance) > 4.0)
        + 3.0 * (night & ~card_present)  # interaction
        + 3.0 * ((amount > 150) & (account_age < 60))  # interaction
        - 0.6 * card_present
    )
    label = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    return pd.DataFrame(
        {
            "transaction_id": [f"tx-{seed}-{i:07d}" for i in range(rows)],
            "amount": amount,
            "hour": hour.astype(np.int64),
            "tx_count_24h": tx_count.astype(np.int64),
            "account_age_days": account_age,
            "distance_km": distance,
            "merchant_category": merchant,
            "country": country,
            "card_present": card_present,
            LABEL: label,
        }
    )


def request_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The raw inputs a client sends for these transactions (strings as UTF-8 BYTES)."""
    columns = {name: frame[name].to_numpy() for name in NUMERIC}
    columns.update({name: np.array([str(v).encode() for v in frame[name]], dtype=object) for name in CATEGORICAL})
    columns.update({name: frame[name].to_numpy(bool) for name in BOOLEAN})
    return columns


def dense_onnx(
    layers: list[tuple[np.ndarray, np.ndarray]], input_name: str, output_name: str, doc: str
) -> onnx.ModelProto:
    """Dense layers (ReLU between them) ending in a sigmoid score of shape [batch]."""
    nodes, initializers = [], []
    current = input_name
    for index, (weight, bias) in enumerate(layers):
        w, b, z = f"W{index}", f"B{index}", f"z{index}"
        initializers += [
            numpy_helper.from_array(weight.astype(np.float32), w),
            numpy_helper.from_array(bias.astype(np.float32), b),
        ]
        nodes += [
            helper.make_node("MatMul", [current, w], [f"m{index}"]),
            helper.make_node("Add", [f"m{index}", b], [z]),
        ]
        current = z
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [z], [f"h{index}"]))
            current = f"h{index}"
    initializers.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
    nodes += [helper.make_node("Sigmoid", [current], ["p"]), helper.make_node("Reshape", ["p", "flat"], [output_name])]
    width = layers[0][0].shape[0]
    graph = helper.make_graph(
        nodes,
        "fraud_score",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch"])],
        initializers,
    )
    return finish_model(graph, doc)


ECHO_DATATYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
DENSE_IN, DENSE_OUT = 256, 64


def echo_onnx() -> onnx.ModelProto:
    """INPUT_<DT> -> OUTPUT_<DT> unchanged, for every protocol datatype: the round-trip test model."""
    nodes, inputs, outputs = [], [], []
    for datatype, element in ECHO_DATATYPES.items():
        inputs.append(helper.make_tensor_value_info(f"INPUT_{datatype}", element, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"OUTPUT_{datatype}", element, ["batch", "n"]))
        nodes.append(helper.make_node("Identity", [f"INPUT_{datatype}"], [f"OUTPUT_{datatype}"]))
    return finish_model(helper.make_graph(nodes, "echo", inputs, outputs), "echo: every datatype, unchanged")


def dense_projection_onnx(seed: int) -> onnx.ModelProto:
    """A 256 -> 64 ReLU projection: a model whose inputs are plain FP32 tensors, no preprocessor."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(scale=DENSE_IN**-0.5, size=(DENSE_IN, DENSE_OUT)).astype(np.float32)
    bias = rng.normal(scale=0.1, size=DENSE_OUT).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT", "W"], ["m"]),
            helper.make_node("Add", ["m", "B"], ["z"]),
            helper.make_node("Relu", ["z"], ["OUTPUT"]),
        ],
        "dense",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", DENSE_IN])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", DENSE_OUT])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    return finish_model(graph, "dense: 256 -> 64 ReLU projection")


def finish_model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="serve-app")
    model.doc_string = doc
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def plain_config(name: str, description: str, inputs: list, outputs: list) -> dict:
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "description": description,
        "max_batch_size": 256,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_batching": {"max_batch_size": 64, "batch_wait_timeout_s": 0.0},
        "instances": {"num_replicas": 1, "num_cpus": 0.2, "num_gpus": 0},
        "version_policy": {"latest": 1},
    }


def write_model(root: Path, name: str, model: onnx.ModelProto, config: dict) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / name / "1" / "model.onnx")
    (root / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def model_config(width: int) -> dict:
    return {
        "name": MODEL_NAME,
        "platform": "onnxruntime_onnx",
        "description": "Fraud probability of a card transaction (synthetic demo).",
        "max_batch_size": 256,
        "inputs": [{"name": "features", "datatype": "FP32", "dims": [-1, width]}],
        "outputs": [{"name": "fraud_probability", "datatype": "FP32", "dims": [-1]}],
        "dynamic_batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.0},
        "instances": {
            "num_replicas": 1,
            "num_cpus": 0.25,
            "num_gpus": 0,
        },  # 3 versions fit 2 cores; 1 thread either way
        "version_policy": {"latest": 2},
    }


def build_demo_repository(out: str | Path, seed: int = 7, train_rows: int = 60_000) -> dict:
    """Train both versions and write the repository; returns the metrics written."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    out = Path(out)
    model_dir = out / MODEL_NAME
    train = synthetic_transactions(train_rows, seed)
    validation = synthetic_transactions(20_000, seed + 1)
    reference = synthetic_transactions(2_000, seed + 2).drop(columns=[LABEL])
    preprocessor = Preprocessor.fit(train, NUMERIC, CATEGORICAL, BOOLEAN, log=LOG_SCALED)
    x_train, y_train = preprocessor.transform_frame(train), train[LABEL].to_numpy()
    x_valid, y_valid = preprocessor.transform_frame(validation), validation[LABEL].to_numpy()

    # One BLAS thread: the same bytes on every run. The MLP stops at a fixed epoch count on
    # purpose (deterministic and quick), so sklearn's convergence warning is expected.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        linear = LogisticRegression(C=1.0, max_iter=500).fit(x_train, y_train)
        mlp = MLPClassifier(hidden_layer_sizes=(32, 16), alpha=1e-3, max_iter=60, random_state=seed).fit(
            x_train, y_train
        )
    versions = {
        1: ("logistic regression", [(linear.coef_.T, linear.intercept_)]),
        2: ("MLP 32-16 (ReLU)", list(zip(mlp.coefs_, mlp.intercepts_))),
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"metric": "validation_auc", "validation_rows": len(validation), "fraud_rate": float(y_valid.mean())}
    for version, (architecture, layers) in versions.items():
        version_dir = model_dir / str(version)
        version_dir.mkdir(exist_ok=True)
        model = dense_onnx(layers, "features", "fraud_probability", f"fraud v{version}: {architecture}")
        onnx.save(model, version_dir / "model.onnx")
        preprocessor.save(version_dir / "preprocessor.json")
        reference.to_parquet(version_dir / "reference.parquet", index=False)
        scores = score_layers(layers, x_valid)
        metrics[str(version)] = {"architecture": architecture, "auc": round(float(roc_auc_score(y_valid, scores)), 6)}
    validation.to_parquet(model_dir / "validation.parquet", index=False)
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (model_dir / "config.yaml").write_text(yaml.safe_dump(model_config(preprocessor.width), sort_keys=False))
    echo_tensors = [{"datatype": dt, "dims": [-1, -1]} for dt in ECHO_DATATYPES]
    write_model(
        out,
        "echo",
        echo_onnx(),
        plain_config(
            "echo",
            "Returns every input unchanged: one tensor of each protocol datatype.",
            [{"name": f"INPUT_{t['datatype']}", **t} for t in echo_tensors],
            [{"name": f"OUTPUT_{t['datatype']}", **t} for t in echo_tensors],
        ),
    )
    write_model(
        out,
        "dense",
        dense_projection_onnx(seed),
        plain_config(
            "dense",
            "A 256 -> 64 ReLU projection of an FP32 tensor.",
            [{"name": "INPUT", "datatype": "FP32", "dims": [-1, DENSE_IN]}],
            [{"name": "OUTPUT", "datatype": "FP32", "dims": [-1, DENSE_OUT]}],
        ),
    )
    return metrics


def score_layers(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The exported graph's arithmetic in numpy, for the metrics (no runtime needed)."""
    h = x.astype(np.float64)
    for index, (weight, bias) in enumerate(layers):
        h = h @ weight + bias
        if index < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return (1.0 / (1.0 + np.exp(-h))).ravel()
