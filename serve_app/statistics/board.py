"""The application's statistics board: the latest counters each replica reported, summed on demand.

Replicas report their whole counters (not increments), numbered: a report sent twice counts once,
an older one that arrives after a newer one is ignored, and a replica that stopped keeps what it
counted. Memory is bounded by replicas x versions x batch sizes.
"""

from __future__ import annotations

from serve_app.messages import StatisticsReport
from serve_app.statistics.counters import VersionStatistics

Key = tuple[str, int]
"""(model, version)"""


class StatisticsBoard:
    def __init__(self) -> None:
        self._reports: dict[str, StatisticsReport] = {}

    @classmethod
    def of(cls, counters: list[VersionStatistics]) -> StatisticsBoard:
        """A board of one process's counters (an application without a board deployment)."""
        board = cls()
        board.report(StatisticsReport("this process", 1, counters))
        return board

    def report(self, report: StatisticsReport) -> None:
        """Everything a replica has counted so far, unless the board has a newer report of it."""
        known = self._reports.get(report.reporter)
        if known is None or report.sequence > known.sequence:
            self._reports[report.reporter] = report

    def totals(self, keys: list[Key]) -> list[VersionStatistics]:
        """Each version's counters summed over every replica; zeros for one nobody reported."""
        totals = []
        for model, version in keys:
            total = VersionStatistics(model, version)
            for report in self._reports.values():
                for counters in report.counters:
                    if (counters.model, counters.version) == (model, version):
                        total = total + counters
            totals.append(total)
        return totals
