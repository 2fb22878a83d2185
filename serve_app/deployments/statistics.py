"""The application's statistics board (serve_app/statistics): one replica that routers and model
replicas report their counters to, and that routers ask when a client wants Triton's statistics."""

from __future__ import annotations

from ray import serve

from serve_app.messages import StatisticsReport
from serve_app.statistics import StatisticsBoard, VersionStatistics

STATISTICS_DEPLOYMENT = "statistics"


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class StatisticsDeployment:
    def __init__(self) -> None:
        self.board = StatisticsBoard()

    def report(self, report: StatisticsReport) -> None:
        self.board.report(report)

    def totals(self, keys: list[tuple[str, int]]) -> list[VersionStatistics]:
        return self.board.totals(keys)
