"""Batching before the hop: requests for one model version that arrive while its calls are in flight
are merged into one call (rows concatenated), so that under load a batch pays the router -> model
hop once instead of every request paying it alone, as MLServer's and Triton's batchers do before
their model. Ray-free: the call it makes is any coroutine function (a Serve handle in the router).

- A request that finds a free call slot goes at once, alone: merging costs nothing when idle.
- Queued requests merge with those of the same signature (input names, dtypes, trailing
  dimensions), in arrival order, up to `max_rows` rows per call.
- Each request keeps its own answer and its own error: a merged call that fails is retried one
  request at a time, so one bad request fails alone. A shed call (the version's queue is full) is
  not retried: every request in it gets the overload error, as each would have alone.
- A request whose caller gave up (its timeout, a client gone) before its call left is dropped.
- The queue is bounded (`max_queued` requests, the version's own queue bound): past it a request is
  refused at once with QueueFull, so overload is shed, not held in the router's memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from serve_app.protocol.tensors import batch_size
from serve_app.runtime.batching import merge_rows, split_rows

Tensors = dict[str, np.ndarray]


class QueueFull(Exception):
    """The version's merge queue holds max_queued requests already: shed this one."""


@dataclass
class _Pending:
    inputs: Tensors
    rows: int
    signature: tuple
    answer: asyncio.Future
    queued_at_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass
class MergeStats:
    requests: int = 0
    """Requests answered through the merger."""
    calls: int = 0
    """Calls made for them; requests / calls is the average merge."""
    retried_singly: int = 0
    """Requests sent again alone after the merged call they were in failed."""
    largest: int = 0
    """Most requests in one call."""
    requests_per_call: Counter = field(default_factory=Counter)
    """How many calls carried each number of requests (singly retried ones apart)."""
    queued_ns: int = 0
    """Time requests spent waiting for a call, summed (one that went at once waited none)."""

    def as_dict(self) -> dict:
        counts = {str(k): v for k, v in sorted(self.requests_per_call.items())}
        return {**vars(self), "requests_per_call": counts}


def signature(inputs: Tensors) -> tuple:
    """What requests must share to be concatenated by rows."""
    return tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items()))


@dataclass
class RequestMerger:
    call: Callable[[Tensors], Awaitable[Tensors]]
    max_rows: int
    """Most rows in one merged call (the version's dynamic batch size)."""
    max_in_flight: int
    """Calls at once (a small multiple of the version's replicas)."""
    max_queued: int | None = None
    """Most requests waiting for a call; None: no bound."""
    is_shed: Callable[[BaseException], bool] = lambda error: False
    """Errors that every request of a merged call shares, not retried alone (overload)."""
    stats: MergeStats = field(default_factory=MergeStats)
    _queue: deque[_Pending] = field(default_factory=deque)
    _in_flight: int = 0

    async def infer(self, inputs: Tensors) -> Tensors:
        if self._in_flight < self.max_in_flight and not self._queue:
            return await self._alone(inputs)
        if self.max_queued is not None and len(self._queue) >= self.max_queued:
            self._drop_abandoned()
            if len(self._queue) >= self.max_queued:
                raise QueueFull(f"{len(self._queue)} requests are already waiting for this version")
        answer = asyncio.get_running_loop().create_future()
        pending = _Pending(inputs, batch_size(inputs), signature(inputs), answer)
        self._queue.append(pending)
        self._dispatch()  # a slot may be free behind requests whose callers gave up
        return await pending.answer  # cancelled by its caller: _dispatch skips it

    async def _alone(self, inputs: Tensors) -> Tensors:
        self._in_flight += 1
        try:
            return await self.call(inputs)
        finally:
            self._call_done(requests=1)

    def _call_done(self, requests: int) -> None:
        """A call slot is free again: count what it carried, then give the slot to the queue."""
        self.stats.requests += requests
        self.stats.calls += 1
        self.stats.largest = max(self.stats.largest, requests)
        self.stats.requests_per_call[requests] += 1
        self._in_flight -= 1
        self._dispatch()

    def _drop_abandoned(self) -> None:
        self._queue = deque(p for p in self._queue if not p.answer.done())

    def _dispatch(self) -> None:
        while self._in_flight < self.max_in_flight and (group := self._next_group()):
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._merged(group))

    def _next_group(self) -> list[_Pending]:
        """The oldest live request and the queued ones that fit with it, taken off the queue."""
        while self._queue and self._queue[0].answer.done():
            self._queue.popleft()  # its caller gave up
        if not self._queue:
            return []
        first = self._queue.popleft()
        group, rows, kept = [first], first.rows, deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.answer.done():
                continue
            if pending.signature == first.signature and rows + pending.rows <= self.max_rows:
                group.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
        self._queue = kept
        now = time.perf_counter_ns()
        self.stats.queued_ns += sum(now - p.queued_at_ns for p in group)
        return group

    async def _merged(self, group: list[_Pending]) -> None:
        try:
            if len(group) == 1:
                outputs = [await self.call(group[0].inputs)]
            else:
                merged, rows = merge_rows([p.inputs for p in group])
                outputs = split_rows(await self.call(merged), rows)
        except Exception as error:
            if len(group) == 1 or self.is_shed(error):
                for pending in group:
                    _settle(pending.answer, error=error)
            else:
                await self._one_by_one(group)
        else:
            for pending, answer in zip(group, outputs):
                _settle(pending.answer, answer)
        finally:
            self._call_done(requests=len(group))

    async def _one_by_one(self, group: list[_Pending]) -> None:
        self.stats.retried_singly += len(group)
        self.stats.calls += len(group)

        async def one(pending: _Pending) -> None:
            if pending.answer.done():
                return
            try:
                _settle(pending.answer, await self.call(pending.inputs))
            except Exception as error:
                _settle(pending.answer, error=error)

        await asyncio.gather(*(one(p) for p in group))


def _settle(answer: asyncio.Future, result: Tensors | None = None, error: BaseException | None = None) -> None:
    if answer.done():  # its caller gave up meanwhile
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)
