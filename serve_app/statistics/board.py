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


class LocalBoard:
    """A board in this process, as a recorder's StatisticsClient: for a Gateway that is not part of
    a deployed application (embedded, or in unit tests)."""

    def __init__(self) -> None:
        self.board = StatisticsBoard()

    async def report(self, report: StatisticsReport) -> None:
        self.board.report(report)

    async def totals(self, keys: list[Key]) -> list[VersionStatistics]:
        return self.board.totals(keys)


BUILDS_KEPT = 2
"""Per application: the current deployment's board and the one before it (its replicas drain)."""


class StatisticsBoards:
    """Every application's boards, one per deployment of it (`build`); older builds are dropped."""

    def __init__(self) -> None:
        self._boards: dict[str, dict[str, StatisticsBoard]] = {}  # per application, oldest build first

    def report(self, app: str, build: str, report: StatisticsReport) -> None:
        builds = self._boards.setdefault(app, {})
        if build not in builds:
            builds[build] = StatisticsBoard()
            for old in list(builds)[:-BUILDS_KEPT]:
                del builds[old]
        builds[build].report(report)

    def totals(self, app: str, build: str, keys: list[Key]) -> list[VersionStatistics]:
        return self._boards.get(app, {}).get(build, StatisticsBoard()).totals(keys)
