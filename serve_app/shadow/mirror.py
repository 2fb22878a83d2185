"""Mirroring: requests wait briefly in a queue per shadow version, then go to it in one call per
chunk of rows; each answer is logged and its decision compared with production's. Nothing here is
ever on the client's path: failures are counted and logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import numpy as np

from serve_app.experiments.traffic import TrafficController
from serve_app.protocol.dataplane import DataPlane
from serve_app.protocol.messages import InferenceRequest
from serve_app.protocol.tensors import batch_size
from serve_app.runtime.batching import merge_rows, split_rows
from serve_app.scores import disagreements, row_scores
from serve_app.telemetry import RequestStats

logger = logging.getLogger("ray.serve")
SHADOW_TIMEOUT_S = 10.0
SHADOW_WINDOW_S = 1.0
"""How long mirrored requests gather before they go to their shadow version in one call."""

Mirrored = list[tuple[InferenceRequest, "np.ndarray | None"]]
"""Each request with production's scores, one per row."""


class ShadowQueue:
    """Mirrored requests wait here briefly and go to each shadow version together, in one call.

    On a small machine every serving hop costs CPU that production requests also need; one hop
    per batch of mirrored requests instead of one per request keeps shadows off the clients' time.
    """

    def __init__(self, max_pending: int = 20_000):
        self.max_pending = max_pending
        self._pending: dict[tuple[str, int], list[tuple[InferenceRequest, float | None]]] = {}
        self.size = 0
        self.skipped = 0

    def add(self, model: str, version: int, request: InferenceRequest, production: np.ndarray | None) -> None:
        """production: production's scores, one per row, to compare the shadow's decisions with."""
        if self.size >= self.max_pending:
            self.skipped += 1  # shadows are best effort: production never waits for room here
            return
        self._pending.setdefault((model, version), []).append((request, production))
        self.size += 1

    def take(self) -> dict[tuple[str, int], list[tuple[InferenceRequest, float | None]]]:
        pending, self._pending, self.size = self._pending, {}, 0
        return pending


def chunks_by_rows(mirrored: Mirrored, max_rows: int) -> list[Mirrored]:
    """Consecutive groups of mirrored requests holding at most max_rows rows each (a request is never split)."""
    chunks: list[Mirrored] = []
    current: Mirrored = []
    rows = 0
    for request, production in mirrored:
        size = next(iter(request.inputs.values())).shape[0]
        if current and rows + size > max_rows:
            chunks.append(current)
            current, rows = [], 0
        current.append((request, production))
        rows += size
    return [*chunks, current] if current else chunks


class ShadowMirror:
    """Sends what the queue gathered; metrics: the gateway's Metrics sink (shadow counts)."""

    def __init__(
        self,
        dataplane: DataPlane,
        traffic: TrafficController,
        stats: RequestStats,
        metrics,
        thresholds: Mapping[str, float],
    ):
        """thresholds: each model's decision threshold (ModelConfig.decision_threshold)."""
        self.dataplane = dataplane
        self.thresholds = dict(thresholds)
        self.traffic = traffic
        self.stats = stats
        self.metrics = metrics
        self.queue = ShadowQueue()
        self.calls: set[asyncio.Task] = set()

    def send(self) -> None:
        for (model, version), requests in self.queue.take().items():
            task = asyncio.create_task(self._shadow(model, version, requests))
            self.calls.add(task)
            task.add_done_callback(self.calls.discard)

    async def _shadow(self, model: str, version: int, mirrored: Mirrored) -> None:
        """One call per chunk of mirrored requests (as many rows as the version takes)."""
        try:
            endpoint = self.dataplane.endpoint(model, str(version))
            max_rows = endpoint.max_batch_size
        except Exception as error:
            self._failed(model, version, mirrored, time.perf_counter(), error)
            return
        for chunk in chunks_by_rows(mirrored, max_rows):
            start = time.perf_counter()
            try:
                merged, rows = merge_rows([request.inputs for request, _ in chunk])
                call = self.dataplane.infer(model, str(version), InferenceRequest(inputs=merged), merged=True)
                outputs = split_rows((await asyncio.wait_for(call, SHADOW_TIMEOUT_S)).outputs, rows)
                outputs = [self.dataplane.ranked(endpoint, r.inputs, o) for (r, _), o in zip(chunk, outputs)]
            except Exception as error:
                self._failed(model, version, chunk, start, error)
                continue
            threshold = self.thresholds[model]
            for (request, production), answer in zip(chunk, outputs):
                self.traffic.record(model, version, "shadow", request, answer, _ms(start), "ok")
                shadow = row_scores(answer, batch_size(request.inputs))
                self._count(model, version, True, *disagreements(production, shadow, threshold))

    def _count(self, model: str, version: int, ok: bool, compared: int = 0, disagreed: int = 0) -> None:
        self.stats.shadow(model, version, ok, compared, disagreed)
        self.metrics.shadow(model, version, ok, compared, disagreed)

    def _failed(self, model: str, version: int, mirrored: Mirrored, start: float, error: Exception) -> None:
        before = self.traffic.shadow_failures
        self.traffic.shadow_failures += len(mirrored)
        if before == 0 or before // 100 != self.traffic.shadow_failures // 100:  # the first, then per hundred
            logger.warning("shadow %s v%s failed (%d so far): %r", model, version, self.traffic.shadow_failures, error)
        for request, _ in mirrored:
            self.traffic.record(model, version, "shadow", request, None, _ms(start), type(error).__name__)
            self._count(model, version, False)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
