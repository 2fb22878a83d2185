"""What a router replica counts per request and per shadow call, for the status page and Prometheus:
plain counters and rolling latency windows (no Ray; deployments/metrics.py exports them)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

LATENCY_WINDOW = 2000
"""Latest latencies kept per arm, for the status page's percentiles and the experiment's p99
guardrail: bounded memory, and both see today's behaviour."""


@dataclass
class LiveArmStats:
    """What one router replica has seen of a (model, version, arm) lately."""

    requests: int = 0
    failures: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def summary(self) -> dict:
        latencies = np.fromiter(self.latencies_ms, dtype=float)
        quantiles = np.percentile(latencies, [50, 90, 99]) if latencies.size else [None] * 3
        p50, p90, p99 = (None if q is None else round(float(q), 2) for q in quantiles)
        return {"requests": self.requests, "failures": self.failures, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99}


@dataclass
class ShadowStats:
    calls: int = 0
    failures: int = 0
    compared: int = 0
    """Rows whose decision was compared with production's (both had a score per row)."""
    disagreements: int = 0

    def summary(self) -> dict:
        agreement = None if not self.compared else round(1 - self.disagreements / self.compared, 4)
        return {
            "calls": self.calls,
            "failures": self.failures,
            "compared": self.compared,
            "disagreements": self.disagreements,
            "agreement": agreement,
        }


class RequestStats:
    def __init__(self) -> None:
        self.arms: dict[tuple[str, int, str], LiveArmStats] = {}
        self.shadows: dict[tuple[str, int], ShadowStats] = {}

    def request(self, model: str, version: int, arm: str, latency_ms: float, ok: bool) -> None:
        stats = self.arms.setdefault((model, version, arm), LiveArmStats())
        stats.requests += 1
        if ok:
            stats.latencies_ms.append(latency_ms)
        else:
            stats.failures += 1

    def shadow(self, model: str, version: int, ok: bool, compared: int = 0, disagreed: int = 0) -> None:
        """One mirrored request: compared and disagreed count its rows."""
        stats = self.shadows.setdefault((model, version), ShadowStats())
        stats.calls += 1
        stats.failures += not ok
        stats.compared += compared
        stats.disagreements += disagreed

    def snapshot(self) -> dict[str, dict]:
        """Per model: each (version, arm) answering production, and each shadow version."""
        models: dict[str, dict] = {}
        for (model, version, arm), stats in sorted(self.arms.items()):
            entry = models.setdefault(model, {"arms": [], "shadows": []})
            entry["arms"].append({"version": version, "arm": arm, **stats.summary()})
        for (model, version), stats in sorted(self.shadows.items()):
            entry = models.setdefault(model, {"arms": [], "shadows": []})
            entry["shadows"].append({"version": version, **stats.summary()})
        return models
