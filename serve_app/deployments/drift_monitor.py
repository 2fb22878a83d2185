from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from serve_app.config import DriftSettings
from serve_app.drift import DriftMonitor, deliver_alert
from serve_app.repository import ModelRepository

logger = logging.getLogger("ray.serve")
CHECK_INTERVAL_S = 0.5
FREEZE_TIMEOUT_S = 10.0


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)
class DriftMonitorDeployment:
    """The one replica that watches drift. Routers send it rows in batches, fire and forget;
    checks run in a worker thread so taking rows and answering reports never wait for them."""

    def __init__(
        self,
        repository: str,
        storage_uri: str | None,
        settings: dict[str, dict],
        versions: list[tuple[str, int]],
        experiments: DeploymentHandle | None = None,
    ):
        repo = ModelRepository(repository)
        self.monitor = DriftMonitor(
            {model: DriftSettings.model_validate(s) for model, s in settings.items()},
            [repo.version(model, version) for model, version in versions],
            storage_uri,
        )
        self.experiments = experiments
        self._actions: set[asyncio.Task] = set()
        tags = ("model", "version", "feature")
        self._p_value = metrics.Gauge("serve_app_drift_p_value", "p-value of the last window", tag_keys=tags)
        self._statistic = metrics.Gauge("serve_app_drift_statistic", "statistic of the last window", tag_keys=tags)
        self._is_drift = metrics.Gauge(
            "serve_app_drift_is_drift", "1 if the last window drifted", tag_keys=("model", "version", "kind")
        )
        self._dropped = metrics.Gauge(
            "serve_app_drift_rows_dropped", "rows not checked (buffers full)", tag_keys=("model", "version")
        )
        self._alerts = metrics.Counter("serve_app_drift_alerts", "drift alerts fired", tag_keys=("model",))
        self._checking = asyncio.get_event_loop().create_task(self._check_forever())

    async def observe(self, batches: list[dict]) -> None:
        self.monitor.observe(batches)

    async def report(self, model: str) -> dict:
        return self.monitor.report(model)

    async def _check_forever(self) -> None:
        # Building detectors takes seconds (online ones tens): rows are taken meanwhile.
        await asyncio.to_thread(self.monitor.load_detectors)
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                events = await asyncio.to_thread(self.monitor.check)
                self._export()
            except Exception:  # the monitor must outlive any one bad round
                logger.exception("drift check round failed")
                continue
            for event in events:
                task = asyncio.create_task(self._act(event))
                self._actions.add(task)
                task.add_done_callback(self._actions.discard)

    async def _act(self, event: dict) -> None:
        model = event["model"]
        settings = self.monitor.settings[model]
        if event["event"] == "drift":
            self._alerts.inc(tags={"model": model})
            event["delivery"] = await deliver_alert(event, settings.alert)  # shown in the report
        if settings.on_drift == "freeze_experiment" and self.experiments is not None:
            frozen = event["event"] == "drift"
            reason = event["message"] if frozen else f"drift cleared (episode since {event['since']})"
            try:
                await asyncio.wait_for(self.experiments.freeze.remote(model, frozen, reason), FREEZE_TIMEOUT_S)
            except Exception as error:  # no experiment for this model, or the store is away
                logger.warning("drift of %s: could not %s its experiment: %r", model,
                               "freeze" if frozen else "unfreeze", error)  # fmt: skip

    def _export(self) -> None:
        for state in self.monitor.states.values():
            version = str(state.version)
            self._dropped.set(state.rows_dropped, tags={"model": state.model, "version": version})
            if state.last is None:
                continue
            for kind in ("data", "prediction"):
                drift = float(state.last[kind]["is_drift"])
                self._is_drift.set(drift, tags={"model": state.model, "version": version, "kind": kind})
            entries = {**state.last["data"]["features"], "score": state.last["prediction"]}
            for feature, result in entries.items():
                tags = {"model": state.model, "version": version, "feature": feature}
                if result.get("p_value") is not None:
                    self._p_value.set(result["p_value"], tags=tags)
                if result.get("statistic") is not None:
                    self._statistic.set(result["statistic"], tags=tags)

    async def __del__(self):
        self._checking.cancel()
        await asyncio.to_thread(self.monitor.save)
