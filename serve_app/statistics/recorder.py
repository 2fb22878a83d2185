"""One process's statistics, kept until they are reported to the application's board."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from serve_app.messages import StatisticsReport
from serve_app.statistics.counters import Duration, VersionStatistics

logger = logging.getLogger("ray.serve")
REPORT_INTERVAL_S = 1.0
REPORT_TIMEOUT_S = 5.0


class StatisticsClient(Protocol):
    """The board of the application's deployment (an actor in production, deployments/statistics.py)."""

    def report(self, report: StatisticsReport) -> Awaitable[Any]: ...
    def totals(self, keys: list[tuple[str, int]]) -> Awaitable[list[VersionStatistics]]: ...


class StatisticsRecorder:
    """The counters of every version this process serves or runs, and whether they changed since
    the last report."""

    def __init__(self, kind: str):
        self.reporter = f"{kind}-{uuid.uuid4().hex[:12]}"
        self._counters: dict[tuple[str, int], VersionStatistics] = {}
        self._waiting: dict[tuple[str, int], Callable[[], Duration]] = {}
        self._changed = False
        self._reports = 0

    def _of(self, model: str, version: int) -> VersionStatistics:
        self._changed = True
        key = (model, version)
        if key not in self._counters:
            self._counters[key] = VersionStatistics(model, version)
        return self._counters[key]

    def request(self, model: str, version: int, rows: int, ok: bool, ns: int) -> None:
        self._of(model, version).request(rows, ok, ns, time.time_ns() // 1_000_000)

    def execution(self, model: str, version: int, rows: int, calls: int, queue_ns: int, input_ns: int, infer_ns: int):
        self._of(model, version).execution(rows, calls, queue_ns, input_ns, infer_ns)

    def counted(self, model: str, version: int) -> VersionStatistics:
        """What this process counted for a version so far (zeros if nothing)."""
        return self._counters.get((model, version)) or VersionStatistics(model, version)

    def count_waiting(self, model: str, version: int, waited: Callable[[], Duration]) -> None:
        """A queue that keeps its own count (a router's merger): added to the version's queue in
        every report."""
        self._waiting[(model, version)] = waited

    def counters(self) -> list[VersionStatistics]:
        """A copy (it may be sent after more requests are counted) of every version's counters."""
        counters = copy.deepcopy(self._counters)
        for key, waited in self._waiting.items():
            if key in counters:
                counters[key].queue = counters[key].queue + waited()
        return list(counters.values())

    def take_report(self) -> StatisticsReport | None:
        """Every counter if any changed since the last report, else None; numbered, so that the
        board keeps the newest when two reports cross on the way."""
        if not self._changed:
            return None
        self._changed = False
        self._reports += 1
        return StatisticsReport(self.reporter, self._reports, self.counters())

    def report_failed(self) -> None:
        self._changed = True  # sent again next time


async def report_statistics(recorder: StatisticsRecorder, board: StatisticsClient) -> None:
    """Send the recorder's counters if they changed; a failure is retried at the next report."""
    report = recorder.take_report()
    if report is None:
        return
    try:
        await asyncio.wait_for(board.report(report), REPORT_TIMEOUT_S)
    except Exception as error:  # the board is restarting: statistics wait, requests never do
        recorder.report_failed()
        logger.debug("statistics not reported: %r", error)


async def report_forever(recorder: StatisticsRecorder, board: StatisticsClient) -> None:
    while True:
        await asyncio.sleep(REPORT_INTERVAL_S)
        await report_statistics(recorder, board)
