"""Typed messages that cross process boundaries between deployments. Frozen dataclasses: a renamed
field fails where the message is built, in the sender's tests, not at run time in another process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from serve_app.statistics.counters import VersionStatistics


@dataclass(frozen=True)
class RequestEvent:
    """A production answer inside an experiment: router -> experiment store."""

    model: str
    request_id: str
    version: int
    latency_ms: float
    error: bool
    score: float | None = None
    """The request's score (its first row's), joined with feedback later."""


@dataclass(frozen=True)
class Routing:
    """How every router splits a model's traffic: experiment store -> routers."""

    traffic: dict[str, Any]
    """The TrafficSettings now in force (they change on promotion and rollback)."""
    salt: str
    """The experiment's secret, kept server-side, salting the routing key's hash: a client that picks
    its routing key still cannot pick its arm."""


@dataclass(frozen=True)
class DriftBatch:
    """The rows one router gathered for one (model, version): router -> drift monitor."""

    model: str
    version: int
    arm: str = ""
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    """One array per watched input, one value per row."""
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    """One score per row."""
    dropped: int = 0
    """Rows the router could not buffer or deliver since its last batch."""

    @property
    def rows(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Pipeline:
    """One served version as the graph builder wires it: graph -> router. In a graph the deployments
    are bound applications; in the router they are handles to them. No runner: the version runs in
    the router's own process (GraphArgs.in_router)."""

    model: str
    version: int
    runner: Any | None = None
    preprocessor: Any | None = None


@dataclass(frozen=True)
class StatisticsReport:
    """What one replica has counted so far: the message replicas send the statistics board."""

    reporter: str
    sequence: int
    """Reports of one reporter are numbered from 1: a later one holds everything an earlier one did."""
    counters: list[VersionStatistics]
