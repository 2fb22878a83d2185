"""A model version run inside the router's own process: no hop between the router and the model.

For small CPU models the hop, not the model, is what a request costs (a Serve handle call is
milliseconds of CPU; a fraud row scores in microseconds), so MLServer and Triton run such models in
the server's process. Requests that arrive while a model call runs are merged into the next call
(the RequestMerger with one call in flight: Triton's dynamic batcher), raw inputs and all, so the
preprocessor runs once per call too; a merged call that fails (one request's bad value) is retried
one request at a time, so the bad request fails alone. The call runs in a thread: ONNX Runtime and
PyTorch release the GIL while they compute, so the router keeps parsing the next requests meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Protocol

import numpy as np

from serve_app.protocol.dataplane import Endpoint
from serve_app.protocol.tensors import batch_size, check_inputs
from serve_app.repository import ModelVersion
from serve_app.runtime.base import Runner
from serve_app.runtime.batching import BatchStats
from serve_app.runtime.merging import QueueFull, RequestMerger
from serve_app.statistics import StatisticsRecorder


class BatchMetrics(Protocol):
    def batch(self, rows: int, compute_ms: float, queue_ms: list[float]) -> None: ...


class InProcessEndpoint(Endpoint):
    """merge: batch the requests that arrive while a call runs (off: each request runs alone, in
    its own thread). max_queued: requests waiting for a call beyond which one is shed (QueueFull)."""

    def __init__(
        self,
        model: ModelVersion,
        runner: Runner,
        merge: bool = True,
        max_queued: int | None = None,
        metrics: BatchMetrics | None = None,
        recorder: StatisticsRecorder | None = None,
    ):
        super().__init__(model)
        self.config = model.config
        self.preprocessor = model.preprocessor
        self.runner = runner
        self.metrics = metrics
        self.recorder = recorder if recorder is not None else StatisticsRecorder("router")
        if merge:
            max_rows = model.config.dynamic_batching.max_batch_size
            shed = lambda error: isinstance(error, QueueFull)  # noqa: E731
            self.merger = RequestMerger(self._run, max_rows, 1, max_queued, is_shed=shed)

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.merger is None:
            return await self._run(inputs)
        return await self.merger.infer(inputs)

    async def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter_ns()
        outputs, input_ns, infer_ns = await asyncio.to_thread(self._score, inputs)
        rows = batch_size(inputs)
        if self.metrics is not None:
            self.metrics.batch(rows, (time.perf_counter_ns() - start) / 1e6, [])
        # The merger counts the requests' waiting (queue).
        self.recorder.execution(self.name, self.version, rows, 1, 0, input_ns, infer_ns)
        return outputs

    def _score(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, int]:
        """The outputs, and the nanoseconds spent preparing the inputs and in the model."""
        start = time.perf_counter_ns()
        tensors = self.preprocessor.transform(inputs) if self.preprocessor is not None else inputs
        check_inputs(tensors, self.config.inputs, self.config.max_batch_size)
        prepared = time.perf_counter_ns()
        outputs = self.runner.run(tensors)
        return outputs, prepared - start, time.perf_counter_ns() - prepared

    async def describe(self) -> dict | None:
        return {**self.runner.describe(), "pid": os.getpid(), "gpu_ids": [], "placed_on": self.runner.placed_on}

    async def batch_stats(self) -> dict | None:
        """A model replica's BatchStats, counted from the merger's calls."""
        batching = self.config.dynamic_batching.model_dump()
        counted = self.recorder.counted(self.name, self.version)
        calls = counted.execution_count
        if self.merger is None:  # a call per request
            requests, per_call = calls, Counter({1: calls} if calls else {})
        else:
            requests, per_call = self.merger.stats.requests, self.merger.stats.requests_per_call
            batching["max_batch_size"] = self.merger.max_rows
        stats = BatchStats(counted.executed_rows, requests, calls, per_call)
        return {**stats.as_dict(), **batching}
