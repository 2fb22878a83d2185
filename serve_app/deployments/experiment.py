from __future__ import annotations

import asyncio
import logging

from ray import serve

from serve_app.config import ExperimentSettings, TrafficSettings
from serve_app.deployments.logs import replica_logging
from serve_app.deployments.metrics import ExperimentMetrics
from serve_app.experiments.store import ExperimentStore
from serve_app.messages import Routing

logger = logging.getLogger("ray.serve")
FLUSH_INTERVAL_S = 1.0
EXPERIMENTS_DEPLOYMENT = "experiments"


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)
class ExperimentDeployment:
    """The single replica that owns experiment state. Traffic per model comes from user_config
    ({"traffic": {model: TrafficSettings}}), so ops change weights live with `serve deploy`."""

    def __init__(
        self,
        storage_uri: str,
        settings: dict[str, dict],
        feedback_window_requests: int = 200_000,
        decision_thresholds: dict[str, float] | None = None,
    ):
        replica_logging()
        self.store = ExperimentStore(
            storage_uri,
            {model: ExperimentSettings.model_validate(s) for model, s in settings.items()},
            max_tracked_requests=feedback_window_requests,
            decision_thresholds=decision_thresholds,
        )
        self.metrics = ExperimentMetrics()
        self._decisions_counted: dict[str, int] = {}
        self._flusher = asyncio.get_event_loop().create_task(self._flush_forever())

    # Async, like every method here: the store is only ever touched from this replica's event loop.
    async def reconfigure(self, user_config: dict) -> None:
        for model, traffic in user_config.get("traffic", {}).items():
            self.store.configure(model, TrafficSettings.model_validate(traffic))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                self.store.flush()  # small writes; on the loop, so no thread races the store
            except Exception:  # storage trouble must not stop the loop; the log counts it
                logger.exception("experiment store: flushing to storage failed")
            self._publish()

    def _publish(self) -> None:
        """Each model's weights as they stand, and the decisions taken since the last time."""
        for model, experiment in self.store.experiments.items():
            traffic = experiment.traffic
            self.metrics.traffic(model, traffic.champion, traffic.challenger, traffic.challenger_weight)
            for entry in experiment.history[self._decisions_counted.get(model, 0) :]:
                self.metrics.decision(model, entry["action"])
            self._decisions_counted[model] = len(experiment.history)

    async def traffic(self) -> dict[str, Routing]:
        return self.store.traffic()

    async def record(self, events: list[dict]) -> list[dict]:
        return self.store.record(events)

    async def feedback(self, model: str, request_id, reward=None, label=None) -> dict:
        return self.store.feedback(model, request_id, reward, label)

    async def summary(self, model: str) -> dict:
        return self.store.summary(model)

    async def promote(self, model: str, reason: str, who: str) -> dict:
        return self.store.promote(model, reason, who)

    async def rollback(self, model: str, reason: str, who: str) -> dict:
        return self.store.rollback(model, reason, who)

    async def freeze(self, model: str, frozen: bool, reason: str) -> dict | None:
        return self.store.freeze(model, frozen, reason)

    async def __del__(self):
        self._flusher.cancel()
        self.store.flush()
