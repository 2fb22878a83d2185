"""The experiment's per-version statistics: counts, outcome sums and recent latencies."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serve_app.telemetry import LATENCY_WINDOW

Arm = Literal["champion", "challenger"]
Decision = Literal["continue", "promote", "stop"]
Status = Literal["running", "promoted", "stopped", "no_challenger"]
Who = Literal["auto", "ops"]


def _latency_window(values: Any = ()) -> deque[float]:
    return deque(values, maxlen=LATENCY_WINDOW)


@dataclass
class ArmStats:
    """Counts and outcome sums of one version; sums (not means) so that merging and the
    vectorised test use the same sufficient statistics."""

    version: int
    requests: int = 0
    errors: int = 0
    outcomes: int = 0
    outcome_sum: float = 0.0
    outcome_sum_sq: float = 0.0
    latencies_ms: deque[float] = field(default_factory=_latency_window)

    def record_request(self, latency_ms: float, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        self.latencies_ms.append(float(latency_ms))  # failed requests count too: a timeout is slow

    def record_outcome(self, value: float) -> None:
        self.outcomes += 1
        self.outcome_sum += value
        self.outcome_sum_sq += value * value

    @property
    def mean(self) -> float:
        return self.outcome_sum / self.outcomes if self.outcomes else 0.0

    @property
    def variance(self) -> float:
        """Unbiased sample variance of the outcomes; 0 with fewer than two."""
        if self.outcomes < 2:
            return 0.0
        # Clipped: sum_sq - sum*mean may round below zero for constant outcomes.
        return max(0.0, (self.outcome_sum_sq - self.outcome_sum * self.mean) / (self.outcomes - 1))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_latency_ms(self) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self.latencies_ms, dtype=float), 99))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "outcomes": self.outcomes,
            "outcome_sum": self.outcome_sum,
            "outcome_sum_sq": self.outcome_sum_sq,
            "latencies_ms": list(self.latencies_ms),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArmStats:
        return cls(
            version=int(d["version"]),
            requests=int(d["requests"]),
            errors=int(d["errors"]),
            outcomes=int(d["outcomes"]),
            outcome_sum=float(d["outcome_sum"]),
            outcome_sum_sq=float(d["outcome_sum_sq"]),
            latencies_ms=_latency_window(map(float, d["latencies_ms"])),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "outcomes": self.outcomes,
            "mean": self.mean if self.outcomes else None,
            "p99_latency_ms": self.p99_latency_ms,
        }
