from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from serve_app.config import DriftSettings
from serve_app.deployments.logs import replica_logging
from serve_app.drift import DriftMonitor, deliver_alert
from serve_app.messages import DriftBatch
from serve_app.repository import ModelRepository

logger = logging.getLogger("ray.serve")
CHECK_INTERVAL_S = 0.5
FREEZE_TIMEOUT_S = 10.0
RECONCILE_INTERVAL_S = 10.0
"""How often each experiment's freeze is set again from the open episodes (a call that failed,
or an experiment started anew by `serve deploy`, is put right)."""


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
        replica_logging()
        repo = ModelRepository(repository)
        self.monitor = DriftMonitor(
            {model: DriftSettings.model_validate(s) for model, s in settings.items()},
            [repo.version(model, version) for model, version in versions],
            storage_uri,
        )
        self.experiments = experiments
        self._events: asyncio.Queue[dict] = asyncio.Queue()
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
        loop = asyncio.get_event_loop()
        self._checking = loop.create_task(self._check_forever())
        self._acting = loop.create_task(self._act_forever())

    async def observe(self, batches: list[DriftBatch]) -> None:
        self.monitor.observe(batches)

    async def report(self, model: str) -> dict:
        return self.monitor.report(model)

    async def _check_forever(self) -> None:
        # Building detectors takes seconds (online ones tens): rows are taken meanwhile.
        await asyncio.to_thread(self.monitor.load_detectors)
        for alert in self.monitor.undelivered_alerts():  # a restart came between an alert and its delivery
            self._events.put_nowait(alert)
        reconciled = 0.0
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                for event in await asyncio.to_thread(self.monitor.check):
                    self._events.put_nowait(event)
                self._export()
            except Exception:  # the monitor must outlive any one bad round
                logger.exception("drift check round failed")
            now = asyncio.get_running_loop().time()
            if now - reconciled >= RECONCILE_INTERVAL_S:
                reconciled = now
                await self._reconcile_freezes()

    async def _act_forever(self) -> None:
        """Events in the order they happened: a clear never overtakes the freeze of its alert."""
        while True:
            event = await self._events.get()
            try:
                await self._act(event)
            except Exception:
                logger.exception("acting on a drift event failed")

    async def _act(self, event: dict) -> None:
        model = event["model"]
        settings = self.monitor.settings[model]
        drifting = event["event"] == "drift"
        if settings.on_drift == "freeze_experiment":  # first: the freeze must not wait on a slow webhook
            reason = event["message"] if drifting else f"drift cleared (episode since {event['since']})"
            await self._freeze(model, drifting, reason)
        if drifting:
            self._alerts.inc(tags={"model": model})
            self.monitor.delivered(event, await deliver_alert(event, settings.alert))

    async def _freeze(self, model: str, frozen: bool, reason: str, quiet: bool = False) -> None:
        if self.experiments is None:
            return
        try:
            await asyncio.wait_for(self.experiments.freeze.remote(model, frozen, reason), FREEZE_TIMEOUT_S)
        except Exception as error:  # no experiment for this model, or the store is away: reconciled later
            (logger.debug if quiet else logger.warning)(
                "drift of %s: could not %s its experiment: %r", model, "freeze" if frozen else "unfreeze", error
            )

    async def _reconcile_freezes(self) -> None:
        """Each experiment frozen exactly while its model has an open drift episode (idempotent)."""
        for model, settings in self.monitor.settings.items():
            if settings.on_drift == "freeze_experiment":
                episode = self.monitor.episodes.get(model)
                reason = episode["alert"]["message"] if episode else "no drift episode open"
                await self._freeze(model, episode is not None, reason, quiet=True)

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
        self._acting.cancel()
        await asyncio.to_thread(self.monitor.shutdown)
