"""The router's side: rows buffered per request, shipped to the monitor in batches."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Collection, Mapping

import numpy as np

from serve_app.config import DriftSettings
from serve_app.messages import DriftBatch
from serve_app.runtime.batching import merge_rows
from serve_app.scores import row_scores


class DriftFeed:
    """Rows waiting in a router replica for the monitor. add() is a list append on the request
    path; beyond max_buffered_rows per model, rows are dropped and counted, never waited for."""

    def __init__(
        self,
        settings: Mapping[str, DriftSettings],
        columns: Mapping[str, list[str]],
        seed: int | None = None,
        one_row_per_request: Collection[str] = (),
    ):
        """columns: per model, the inputs to keep (one value per row); the rest of a request is not copied.
        one_row_per_request: models whose request is one query and its rows the candidates (rankers).
        A query's rows share its features, so they are not independent draws, and a window of them
        would find drift in ordinary traffic: one row of each request, drawn at random, is kept."""
        self.settings = dict(settings)
        self.columns = dict(columns)
        self.one_row_per_request = frozenset(one_row_per_request)
        self._pending: dict[tuple[str, int], list] = defaultdict(list)
        self._rows: dict[str, int] = defaultdict(int)
        self.dropped: dict[tuple[str, int], int] = defaultdict(int)
        self._random = random.Random(seed)

    def add(
        self, model: str, version: int, arm: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        settings = self.settings.get(model)
        if settings is None or (settings.sample_rate < 1.0 and self._random.random() >= settings.sample_rate):
            return
        rows = len(next(iter(inputs.values())))
        scores = row_scores(outputs, rows)
        kept = {name: inputs[name].reshape(rows) for name in self.columns[model] if inputs[name].size == rows}
        if scores is None or len(kept) != len(self.columns[model]):
            return  # no score, or inputs not one value per row: nothing a detector can take
        if model in self.one_row_per_request and rows > 1:
            pick = self._random.randrange(rows)
            kept = {name: column[pick : pick + 1] for name, column in kept.items()}
            scores, rows = scores[pick : pick + 1], 1
        if self._rows[model] + rows > settings.max_buffered_rows:
            self.dropped[(model, version)] += rows
            return
        self._pending[(model, version)].append((arm, kept, scores))
        self._rows[model] += rows

    def take(self) -> list[DriftBatch]:
        """One batch per (model, version) with its rows merged, plus drops not yet reported."""
        pending, self._pending, self._rows = self._pending, defaultdict(list), defaultdict(int)
        batches = []
        for key in {*pending, *self.dropped}:
            entries = pending.get(key, [])
            columns = merge_rows([inputs for _, inputs, _ in entries])[0] if entries else {}
            scores = np.concatenate([s for _, _, s in entries]) if entries else np.empty(0)
            arm = entries[-1][0] if entries else ""
            batches.append(DriftBatch(key[0], key[1], arm, columns, scores, self.dropped.pop(key, 0)))
        return batches

    def lost(self, batches: list[DriftBatch]) -> None:
        """Batches the monitor did not take are counted as dropped, reported with the next ones."""
        for batch in batches:
            self.dropped[(batch.model, batch.version)] += batch.rows + batch.dropped
