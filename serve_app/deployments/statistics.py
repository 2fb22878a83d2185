"""The statistics boards (serve_app/statistics) of every application of the cluster, in one named,
detached actor that the first replica to need it creates.

It is not a Serve deployment on purpose: Serve starts every replica of an application again at
each change of its args, and one more replica to start made every deploy and every load slower.
Each deployment of an application gets a fresh board (a `build` key the graph builder hands to all
its replicas), so statistics start again when the application changes, as a model's do when Triton
loads it again; the previous deployment's board is kept while its replicas drain.
"""

from __future__ import annotations

import uuid

import ray
from ray import serve

from serve_app.deployments.redeploy import CONTROL_NAMESPACE
from serve_app.messages import StatisticsReport
from serve_app.statistics import StatisticsBoards

BOARDS_ACTOR = "serve-app-statistics"


def new_statistics_board() -> str:
    """The key (`build`) of a fresh board for one deployment of an application: the graph builder
    hands it to every router and model replica."""
    return uuid.uuid4().hex[:16]


# A restarted board fills again as replicas report their whole counters.
StatisticsBoardsActor = ray.remote(num_cpus=0, max_restarts=-1)(StatisticsBoards)


class BoardClient:
    """The board of this replica's application and build, as the recorder's StatisticsClient."""

    def __init__(self, build: str):
        self.app, self.build = serve.get_replica_context().app_name, build
        self._boards = StatisticsBoardsActor.options(
            name=BOARDS_ACTOR, namespace=CONTROL_NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()

    def report(self, report: StatisticsReport):
        return self._boards.report.remote(self.app, self.build, report)

    def totals(self, keys: list[tuple[str, int]]):
        return self._boards.totals.remote(self.app, self.build, keys)
