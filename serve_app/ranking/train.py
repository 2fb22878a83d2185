"""Train the demo ranker and write its versions into a model repository, through the same ONNX
export as the fraud model (serve_app.demo.dense_onnx).

Version 1 is a logistic regression on the columns (it learns each item's appeal and the main
effects); version 2 a small MLP that also learns the user-item interaction. Both are judged as the
shadow report judges them: NDCG@10 on held-out requests, relevance drawn from the ground truth.
`train_version` is what a retraining job calls on a data set built from served traffic.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import yaml

from serve_app.demo import dense_onnx, score_layers
from serve_app.features import Preprocessor
from serve_app.ranking import world
from serve_app.shadow.report import ndcg_at_k

Layers = list[tuple[np.ndarray, np.ndarray]]
ARCHITECTURES = {"linear": "logistic regression", "mlp": "MLP 32-16 (ReLU)"}
VALIDATION_REQUESTS = 2_000
REFERENCE_REQUESTS = 2_000
"""Requests behind a drift reference: one row of each, so its rows are independent."""


def fit_layers(x: np.ndarray, y: np.ndarray, kind: str, seed: int) -> Layers:
    """The dense layers of a click model (one BLAS thread: the same bytes on every run)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed epoch count, on purpose
        if kind == "linear":
            linear = LogisticRegression(C=1.0, max_iter=500).fit(x, y)
            return [(linear.coef_.T, linear.intercept_)]
        mlp = MLPClassifier(hidden_layer_sizes=(32, 16), alpha=1e-3, max_iter=40, random_state=seed).fit(x, y)
        return list(zip(mlp.coefs_, mlp.intercepts_))


def fit_preprocessor(frame: pd.DataFrame) -> Preprocessor:
    return Preprocessor.fit(frame, world.NUMERIC, world.CATEGORICAL, log=world.LOG_SCALED)


def mean_ndcg(preprocessor: Preprocessor, layers: Layers, requests: pd.DataFrame, relevance: list[list[int]]) -> float:
    """Mean NDCG@10 over requests (a `request` column groups the rows) that have a relevant candidate."""
    scores = score_layers(layers, preprocessor.transform_frame(requests))
    values = [
        ndcg_at_k(scores[rows], set(relevant))
        for rows, relevant in zip(requests.groupby("request").indices.values(), relevance)
        if relevant
    ]
    return float(np.mean(values))


def validation_set(catalogue: world.Catalogue, seed: int) -> tuple[pd.DataFrame, list[list[int]]]:
    requests = world.requests(VALIDATION_REQUESTS, catalogue, seed)
    rng = np.random.default_rng(seed + 1)
    chances = world.click_chance(requests, catalogue)
    relevance = [world.relevant(chances[rows], rng) for rows in requests.groupby("request").indices.values()]
    return requests, relevance


def write_artefacts(folder: Path, preprocessor: Preprocessor, layers: Layers, reference: pd.DataFrame, doc: str):
    """model.onnx, preprocessor.json and reference.parquet: a version's files (what `serve-app
    register` takes)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(dense_onnx(layers, "features", "score", doc), folder / "model.onnx")
    preprocessor.save(folder / "preprocessor.json")
    reference[list(world.USER_COLUMNS) + list(world.ITEM_COLUMNS)].to_parquet(folder / "reference.parquet")


def ranker_config() -> dict:
    return {
        "name": world.MODEL_NAME,
        "platform": "onnxruntime_onnx",
        "description": "Click chance of each candidate item for a user (synthetic demo); the answer adds the top 10.",
        "max_batch_size": 256,
        # Any width: a retrained version's preprocessor may know more categories.
        "inputs": [{"name": "features", "datatype": "FP32", "dims": [-1, -1]}],
        "outputs": [{"name": "score", "datatype": "FP32", "dims": [-1]}],
        "ranking": {"candidates": "item_id", "top_k": 10},
        "dynamic_batching": {"max_batch_size": 64, "batch_wait_timeout_s": 0.0},
        "instances": {"num_replicas": 1, "num_cpus": 0.25, "num_gpus": 0},
        "version_policy": {"latest": 2},
    }


def build_ranker(repository: str | Path, seed: int = 7, train_requests: int = 2_000) -> dict:
    """Train versions 1 and 2 and write them, with the config and metrics; returns the metrics."""
    model_dir = Path(repository) / world.MODEL_NAME
    catalogue = world.Catalogue.of(world.CATALOGUE_SEED)
    train = world.impressions(train_requests, catalogue, seed + 10)
    preprocessor = fit_preprocessor(train)
    x, y = preprocessor.transform_frame(train), train[world.LABEL].to_numpy()
    requests, relevance = validation_set(catalogue, seed + 20)
    reference = world.one_row_per_request(world.requests(REFERENCE_REQUESTS, catalogue, seed + 30), "request", seed)
    metrics = {"metric": "validation_ndcg@10", "validation_requests": VALIDATION_REQUESTS}
    for version, kind in ((1, "linear"), (2, "mlp")):
        layers = fit_layers(x, y, kind, seed)
        doc = f"{world.MODEL_NAME} v{version}: {ARCHITECTURES[kind]}"
        write_artefacts(model_dir / str(version), preprocessor, layers, reference, doc)
        ndcg = round(mean_ndcg(preprocessor, layers, requests, relevance), 6)
        metrics[str(version)] = {"architecture": ARCHITECTURES[kind], "ndcg@10": ndcg}
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (model_dir / "config.yaml").write_text(yaml.safe_dump(ranker_config(), sort_keys=False))
    return metrics


def train_next(data: pd.DataFrame, folder: Path, seed: int = 7) -> dict:
    """The next version's files, trained on a data set of served rows (what `serve-app dataset`
    writes: the ranker's columns and `row_label`, whether the user clicked the candidate), with a
    preprocessor fitted anew (the population may have moved), into `folder`."""
    labelled = data.dropna(subset=["row_label"])
    if labelled.empty:
        raise ValueError("the data set has no labelled rows (no feedback in the window): nothing to train on")
    preprocessor = fit_preprocessor(labelled)
    clicked = labelled["row_label"].astype(bool).to_numpy()
    layers = fit_layers(preprocessor.transform_frame(labelled), clicked, "mlp", seed)
    reference = world.one_row_per_request(labelled, "request_id", seed, REFERENCE_REQUESTS)
    write_artefacts(folder, preprocessor, layers, reference, f"{world.MODEL_NAME}: retrained on served rows")
    return {"rows": len(labelled), "clicks": int(clicked.sum())}
