"""Shadow versus production on the logged traffic: agreement, score distance, metrics, latency.

Metrics from feedback: AUC for scorers (labels true/false), NDCG@k for rankers (a ranker answers
each request with scores over its candidates; its label names the relevant candidate indices).

Reads the prediction and feedback logs (Parquet under the storage URI), pairs each shadow
prediction with the production answer to the same request, and reports per shadow version.
`serve-app shadow-report` writes it as HTML with plots; notebooks/shadow_evaluation.ipynb
calls the same functions.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np
import pandas as pd

from serve_app.config import DEFAULT_DECISION_THRESHOLD
from serve_app.predlog import FEEDBACK, PREDICTIONS, read_table
from serve_app.scores import positive

PRODUCTION_ROLES = ("champion", "challenger", "direct")
NDCG_K = 10


def load_logs(storage_uri: str, model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    predictions = read_table(storage_uri, PREDICTIONS, model).to_pandas()
    feedback = read_table(storage_uri, FEEDBACK, model).to_pandas()
    return predictions, feedback


def paired(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per (request, shadow version): the shadow's and production's answer side by side."""
    production = predictions[predictions["role"].isin(PRODUCTION_ROLES) & (predictions["status"] == "ok")]
    shadow = predictions[predictions["role"] == "shadow"]
    columns = ["request_id", "version", "score", "scores", "outputs", "latency_ms", "status"]
    return shadow[columns].merge(
        production[columns[:6]], on="request_id", suffixes=("_shadow", "_production"), how="inner"
    )


def _row_scores(ok: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The compared requests' scores row by row, shadow's and production's (a request's one score
    where its log predates scores per row, or the two disagree on the rows)."""
    shadow: list[float] = []
    production: list[float] = []
    rows = zip(ok["scores_shadow"], ok["scores_production"], ok["score_shadow"], ok["score_production"])
    for shadow_rows, production_rows, shadow_score, production_score in rows:
        if shadow_rows is not None and production_rows is not None and len(shadow_rows) == len(production_rows):
            shadow.extend(shadow_rows)
            production.extend(production_rows)
        else:
            shadow.append(shadow_score)
            production.append(production_score)
    return np.asarray(shadow, dtype=float), np.asarray(production, dtype=float)


def _labels(feedback: pd.DataFrame) -> pd.Series:
    """The last true/false label given for each request id, as 0/1 (a scorer's labels)."""
    labelled = feedback.dropna(subset=["label"]).drop_duplicates("request_id", keep="last")
    labelled = labelled[labelled["label"].str.lower().isin(["true", "false"])]
    positive = labelled["label"].str.lower() == "true"
    return pd.Series(positive.astype(int).to_numpy(), index=labelled["request_id"].to_numpy())


def ranking(outputs: str) -> np.ndarray | None:
    """A ranker's scores over its candidates: the first output, when it holds more than one value."""
    values = next(iter(json.loads(outputs).values()), None) if outputs else None
    if not isinstance(values, list) or len(values) < 2 or not all(isinstance(v, (int, float)) for v in values):
        return None
    return np.asarray(values, dtype=float)


def relevant_items(label: Any) -> set[int] | None:
    """A ranker's feedback label: the index of the relevant candidate, or a list of them."""
    try:
        value = json.loads(label) if isinstance(label, str) else label
    except ValueError:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return {value}
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return set(value)
    return None


def ndcg_at_k(scores: np.ndarray, relevant: set[int], k: int = NDCG_K) -> float:
    """Normalised discounted cumulative gain of the top k, with binary relevance."""
    order = np.argsort(-scores, kind="stable")[:k]
    gains = np.array([1.0 if item in relevant else 0.0 for item in order])
    dcg = float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))
    ideal = float(np.sum(1.0 / np.log2(np.arange(2, min(k, len(relevant)) + 2))))
    return dcg / ideal if ideal else 0.0


def _ndcg(known: pd.DataFrame, feedback: pd.DataFrame) -> dict[str, Any] | None:
    """Mean NDCG@k of shadow and production on requests whose feedback names relevant candidates."""
    labels = feedback.dropna(subset=["label"]).drop_duplicates("request_id", keep="last").set_index("request_id")
    shadow, production = [], []
    for row in known.itertuples():
        if row.request_id not in labels.index:
            continue
        relevant = relevant_items(labels.at[row.request_id, "label"])
        scores_shadow, scores_production = ranking(row.outputs_shadow), ranking(row.outputs_production)
        if relevant is None or scores_shadow is None or scores_production is None:
            continue
        shadow.append(ndcg_at_k(scores_shadow, relevant))
        production.append(ndcg_at_k(scores_production, relevant))
    if not shadow:
        return None
    return {
        "k": NDCG_K,
        "labelled": len(shadow),
        "shadow": round(float(np.mean(shadow)), 6),
        "production": round(float(np.mean(production)), 6),
        "delta": round(float(np.mean(shadow) - np.mean(production)), 6),
    }


def compare(
    predictions: pd.DataFrame, feedback: pd.DataFrame, decision_threshold: float = DEFAULT_DECISION_THRESHOLD
) -> dict[str, Any]:
    """decision_threshold: the model's (ModelConfig.decision_threshold), for agreement."""
    from scipy.stats import ks_2samp, wasserstein_distance
    from sklearn.metrics import roc_auc_score

    pairs = paired(predictions)
    labels = _labels(feedback)
    report: dict[str, Any] = {"shadow_versions": {}, "latency_ms": {}}
    for (role, version), group in predictions.groupby(["role", "version"]):
        latency = group["latency_ms"].to_numpy()
        report["latency_ms"][f"{role} v{version}"] = {
            "requests": len(group),
            "failures": int((group["status"] != "ok").sum()),
            "p50": round(float(np.percentile(latency, 50)), 3),
            "p99": round(float(np.percentile(latency, 99)), 3),
        }
    for version, group in pairs.groupby("version_shadow"):
        ok = group[group["status"] == "ok"].dropna(subset=["score_shadow", "score_production"])
        entry: dict[str, Any] = {
            "mirrored": len(group),
            "shadow_failures": int((group["status"] != "ok").sum()),
            "compared": len(ok),
        }
        if len(ok):
            shadow, production = _row_scores(ok)
            entry |= {
                "compared_rows": len(shadow),
                "agreement_rate": float(
                    np.mean(positive(shadow, decision_threshold) == positive(production, decision_threshold))
                ),
                "mean_abs_score_difference": float(np.mean(np.abs(shadow - production))),
                "ks_statistic": float(ks_2samp(shadow, production).statistic),
                "wasserstein_distance": float(wasserstein_distance(shadow, production)),
            }
            known = ok[ok["request_id"].isin(labels.index)]
            y = labels.loc[known["request_id"]].to_numpy()
            if len(known) and 0 < y.sum() < len(y):
                auc_shadow = roc_auc_score(y, known["score_shadow"])
                auc_production = roc_auc_score(y, known["score_production"])
                entry["auc"] = {
                    "labelled": len(known),
                    "shadow": round(float(auc_shadow), 6),
                    "production": round(float(auc_production), 6),
                    "delta": round(float(auc_shadow - auc_production), 6),
                }
        ranked = group[group["status"] == "ok"]
        ndcg = _ndcg(ranked, feedback) if len(ranked) else None
        if ndcg is not None:
            entry["ndcg"] = ndcg
        report["shadow_versions"][str(version)] = entry
    return report


def render_html(model: str, report: dict[str, Any], predictions: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = paired(predictions).dropna(subset=["score_shadow", "score_production"])
    figures = []
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (role, version), group in predictions.dropna(subset=["score"]).groupby(["role", "version"]):
        axes[0].hist(group["score"], bins=40, alpha=0.5, density=True, label=f"{role} v{version}")
    axes[0].set(title="Score distributions", xlabel="score")
    axes[0].legend()
    axes[1].scatter(pairs["score_production"], pairs["score_shadow"], s=4, alpha=0.4)
    axes[1].plot([0, 1], [0, 1], color="grey", linewidth=1)
    axes[1].set(title="Same requests", xlabel="production score", ylabel="shadow score")
    figures.append(_png(figure))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    groups = list(predictions.groupby(["role", "version"]))
    axis.boxplot([g["latency_ms"] for _, g in groups], tick_labels=[f"{r} v{v}" for (r, v), _ in groups])
    axis.set(title="Latency per version", ylabel="ms")
    figures.append(_png(figure))
    plt.close("all")
    rows = []
    for version, entry in report["shadow_versions"].items():
        auc = entry.get("auc", {})
        cells = [f"v{version}", entry["mirrored"], entry["shadow_failures"]]
        cells += [f"{entry[k]:.4f}" if k in entry else "" for k in ("agreement_rate", "ks_statistic")]
        cells += [auc.get(k, "") for k in ("shadow", "production", "delta")]
        cells += [entry.get("ndcg", {}).get(k, "") for k in ("shadow", "production", "delta")]
        rows.append(_row(cells))
    latency_rows = "".join(
        _row([name, v["requests"], v["failures"], v["p50"], v["p99"]]) for name, v in report["latency_ms"].items()
    )
    images = "".join(f'<img src="data:image/png;base64,{image}"/>' for image in figures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Shadow report: {html.escape(model)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Shadow report: {html.escape(model)}</h1>
<h2>Shadow versus production, on the same requests</h2>
<table><tr><th>shadow</th><th>mirrored</th><th>failures</th><th>agreement</th><th>KS</th>
<th>AUC shadow</th><th>AUC production</th><th>AUC delta</th>
<th>NDCG@{NDCG_K} shadow</th><th>NDCG@{NDCG_K} production</th><th>NDCG delta</th></tr>{"".join(rows)}</table>
<h2>Latency</h2><table><tr><th>version</th><th>requests</th><th>failures</th><th>p50 ms</th><th>p99 ms</th></tr>
{latency_rows}</table>{images}</body></html>"""


def _row(cells: list) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()
