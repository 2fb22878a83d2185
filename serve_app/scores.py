"""A model's score, one per row, and the decision it makes: what every comparison of answers reads
(shadow agreement, label feedback, the batch job's champion/challenger comparison, drift on scores).

The score of a row is the first value of that row in the first numeric output. A model's decision
threshold (ModelConfig.decision_threshold) turns a score into a positive or negative decision."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def row_scores(outputs: Mapping[str, np.ndarray], rows: int | None = None) -> np.ndarray | None:
    """One score per row (rows: the request's; None: the output's own first dimension), or None
    when no numeric output has a value per row."""
    for array in outputs.values():
        if array.dtype.kind in "fiub" and array.size and array.ndim and (rows is None or array.shape[0] == rows):
            return array.reshape(array.shape[0], -1)[:, 0].astype(np.float64)
    return None


def positive(scores: np.ndarray | float, threshold: float) -> np.ndarray | bool:
    """The decision: a score at or above the threshold is positive."""
    return np.asarray(scores) >= threshold


def disagreements(production: np.ndarray | None, other: np.ndarray | None, threshold: float) -> tuple[int, int]:
    """(rows compared, rows whose decisions differ); nothing is compared when either side has no
    score per row, or their rows differ in number."""
    if production is None or other is None or len(production) != len(other):
        return 0, 0
    return len(production), int(np.count_nonzero(positive(production, threshold) != positive(other, threshold)))
