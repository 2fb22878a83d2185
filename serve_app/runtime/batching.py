"""Dynamic batching without Ray: merge requests into one model call, split the answers,
and keep the record of batch sizes (Triton's inference count / execution count)."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from serve_app.protocol.tensors import batch_size
from serve_app.runtime.base import Runner


@dataclass
class BatchStats:
    inference_count: int = 0
    """Rows scored."""
    request_count: int = 0
    """Requests answered."""
    execution_count: int = 0
    """Model calls made; request_count / execution_count is the average batch size in requests."""
    requests_per_batch: Counter = field(default_factory=Counter)

    def record(self, rows: int, requests: int) -> None:
        self.inference_count += rows
        self.request_count += requests
        self.execution_count += 1
        self.requests_per_batch[requests] += 1

    def as_dict(self) -> dict:
        return {
            "inference_count": self.inference_count,
            "request_count": self.request_count,
            "execution_count": self.execution_count,
            "max_requests_per_batch": max(self.requests_per_batch, default=0),
            "requests_per_batch": {str(k): v for k, v in sorted(self.requests_per_batch.items())},
        }


class IdleGate:
    """Holds new requests while a batch runs, so that they join the next batch together, as in
    Triton's dynamic batcher: the batching window only applies while the model is idle. Without it,
    Serve's @serve.batch closes a batch every window whether the model is free or not, and small
    batches queue up behind the running one."""

    def __init__(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait(self) -> None:
        await self._idle.wait()  # returns at once, without yielding, while the model is idle

    @contextmanager
    def busy(self):
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()


def total_rows(requests: list[dict[str, np.ndarray]]) -> int:
    """A dynamic batch's size counts rows, as Triton's does, not requests."""
    return sum(batch_size(r) for r in requests)


@dataclass
class Call:
    """A call queued for a model replica's batch, with when it arrived and when it was ready."""

    inputs: dict[str, np.ndarray]
    arrived_ns: int
    prepared_ns: int
    """After preprocessing and checks (perf_counter_ns)."""


def queued_rows(calls: list[Call]) -> int:
    """total_rows of the calls queued for a batch."""
    return total_rows([call.inputs for call in calls])


def merge_rows(requests: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Several requests' tensors as one, and how many rows each brought."""
    rows = [batch_size(r) for r in requests]
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}, rows


def split_rows(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    """The inverse of merge_rows, for the answers."""
    bounds = np.cumsum(rows)[:-1]
    pieces = {name: np.split(value, bounds) for name, value in outputs.items()}
    return [{name: pieces[name][i] for name in pieces} for i in range(len(rows))]


def predict_many(
    runner: Runner, requests: list[dict[str, np.ndarray]], stats: BatchStats
) -> list[dict[str, np.ndarray]]:
    """Score several requests (each already checked) in one model call; give each its own rows back."""
    if len(requests) == 1:
        outputs = [runner.run(requests[0])]
        stats.record(batch_size(requests[0]), 1)
        return outputs
    merged, rows = merge_rows(requests)
    result = runner.run(merged)
    stats.record(sum(rows), len(requests))
    return split_rows(result, rows)
