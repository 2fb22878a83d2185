"""Rankers: a request is one query whose rows are its candidates (config.yaml's `ranking`), and
the demo's recommendation world (world.py) with its two trained versions (train.py)."""

from __future__ import annotations

import numpy as np

from serve_app.config import Ranking


def top_candidates(ranking: Ranking, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The ids of a request's best candidates, best first, by the first output's score (ties keep
    the request's order)."""
    scores = np.asarray(next(iter(outputs.values()))).reshape(len(inputs[ranking.candidates]), -1)[:, 0]
    best = np.argsort(-scores, kind="stable")[: ranking.top_k]
    return np.asarray(inputs[ranking.candidates]).reshape(-1)[best]
