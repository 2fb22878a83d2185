"""Triton's inference statistics, counted where the work happens and summed for the whole
application: routers count client requests, the processes that run a model count its executions,
and one board per deployment of the application sums what every replica reports."""

from serve_app.statistics.board import LocalBoard, StatisticsBoard, StatisticsBoards
from serve_app.statistics.counters import Duration, VersionStatistics
from serve_app.statistics.recorder import StatisticsRecorder

__all__ = ["Duration", "LocalBoard", "StatisticsBoard", "StatisticsBoards", "StatisticsRecorder", "VersionStatistics"]
