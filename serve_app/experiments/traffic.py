"""What a router replica does around each inference: pick the arm, record the answer.

Plain Python, owned by the Router deployment: routing decisions are local to each router
replica (no hop on the hot path); the prediction log is buffered here and flushed in the
background; experiment events are batched here and shipped to the one experiment store.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

from serve_app.config import TrafficSettings
from serve_app.errors import InvalidInput
from serve_app.experiments.split import TrafficPolicy
from serve_app.messages import RequestEvent
from serve_app.predlog import PREDICTIONS, ParquetLog, utc_now
from serve_app.protocol.messages import MAX_ID_CHARS, InferenceRequest
from serve_app.scores import row_scores

ROUTING_KEY_HEADER = "x-routing-key"
DIRECT = "direct"
"""The role of a request that named its version itself, outside any experiment."""


@dataclass(frozen=True)
class Route:
    version: str | None
    """The version to ask; None: the newest served version."""
    arm: str
    """champion, challenger, or direct."""
    shadows: tuple[int, ...] = ()


class TrafficController:
    def __init__(self, log: ParquetLog | None = None, max_pending_events: int = 50_000):
        self.log = log
        self.policies: dict[str, TrafficPolicy] = {}
        self.traffic: dict[str, TrafficSettings] = {}
        self._events: deque[RequestEvent] = deque(maxlen=max_pending_events)
        self.events_dropped = 0
        self.shadow_failures = 0

    def set_traffic(self, model: str, traffic: TrafficSettings, salt: str | None = None) -> None:
        """salt: the experiment's secret (from the store); until the store has answered, the model name."""
        salt = salt or (self.policies[model].salt if model in self.policies else model)
        if self.traffic.get(model) != traffic or self.policies[model].salt != salt:
            self.traffic[model] = traffic
            self.policies[model] = TrafficPolicy(traffic, salt=salt)

    def route(self, model: str, version: str | None, request: InferenceRequest, header_key: str | None) -> Route:
        """Give the request an id if it has none (feedback joins on it), then pick its version."""
        if not request.id:
            request.id = uuid.uuid4().hex
        elif len(request.id) > MAX_ID_CHARS:
            raise InvalidInput(f"'id' must be at most {MAX_ID_CHARS} characters, got {len(request.id)}")
        policy = self.policies.get(model)
        if version is not None or policy is None:
            return Route(version=version, arm=DIRECT)
        key = header_key or request.parameters.get("routing_key") or request.id
        if not isinstance(key, str):
            raise InvalidInput("parameters.routing_key must be a string")
        assignment = policy.assign(key)
        return Route(version=str(assignment.version), arm=assignment.arm, shadows=tuple(assignment.shadows))

    def record(
        self,
        model: str,
        version: int,
        role: str,
        request: InferenceRequest,
        outputs: dict[str, np.ndarray] | None,
        latency_ms: float,
        status: str,
    ) -> None:
        """Log one prediction; production answers of an experiment also become an event."""
        in_experiment = model in self.policies and role in ("champion", "challenger")
        if self.log is None and not in_experiment:
            return
        scores = row_scores(outputs) if outputs else None
        score = None if scores is None else float(scores[0])
        if self.log is not None:
            self.log.record(
                PREDICTIONS,
                {
                    "request_id": request.id,
                    "time": utc_now(),
                    "model": model,
                    "version": version,
                    "role": role,
                    "inputs": request.inputs,
                    "outputs": outputs or {},  # encoded as JSON in the flush thread
                    "score": score,
                    "scores": scores,
                    "latency_ms": latency_ms,
                    "status": status,
                },
            )
        if in_experiment:
            if len(self._events) == self._events.maxlen:
                self.events_dropped += 1
            self._events.append(RequestEvent(model, request.id, version, latency_ms, status != "ok", score))

    @property
    def pending_events(self) -> int:
        """Events waiting for the experiment store (it is away, or the next sync has not run yet)."""
        return len(self._events)

    def drain_events(self) -> list[RequestEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    def requeue(self, events: list[RequestEvent]) -> None:
        """Events the store could not take go back in front, within the bound."""
        room = self._events.maxlen - len(self._events)
        self.events_dropped += max(0, len(events) - room)
        self._events.extendleft(reversed(events[-room:] if room else []))
