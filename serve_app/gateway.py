"""The request pipeline, free of Ray: route -> infer -> record -> drift feed -> shadow queue, and the
loops that ship what requests leave behind (shadows, drift rows, experiment events, the prediction log).

The Serve ingress (deployments/router.py) is a thin shell over one Gateway per replica. The Gateway
talks to the rest of the graph through small ports: an Endpoint per model version (DataPlane), an
ExperimentClient, a DriftSink and a Metrics sink. Ray handles fill them in production
(deployments/handles.py); unit tests fill them with in-process fakes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, Protocol

from serve_app.config import GraphArgs, TrafficSettings
from serve_app.drift import DriftFeed
from serve_app.errors import Conflict, ModelNotFound, Unavailable, as_client_error
from serve_app.experiments.traffic import TrafficController
from serve_app.messages import DriftBatch, RequestEvent, Routing
from serve_app.model_control import ModelControl
from serve_app.predlog import ParquetLog
from serve_app.protocol.dataplane import DataPlane, Endpoint
from serve_app.protocol.messages import InferenceRequest, InferenceResponse
from serve_app.protocol.tensors import batch_size
from serve_app.repository import ModelRepository
from serve_app.runtime.merging import QueueFull
from serve_app.scores import row_scores
from serve_app.shadow.mirror import SHADOW_WINDOW_S, ShadowMirror
from serve_app.statistics import LocalBoard, StatisticsRecorder
from serve_app.statistics.recorder import StatisticsClient, report_statistics
from serve_app.telemetry import RequestStats

logger = logging.getLogger("ray.serve")

ASK_TIMEOUT_S = 5.0
"""Longest a status question (readiness, description, batch statistics) waits for a part of the graph."""
BACKGROUND_INTERVAL_S = 1.0
MERGE_SIZE_SYNC_ROUNDS = 10
"""Every this many background rounds, the gateway reads each version's live batch size."""
SHUTDOWN_WAIT_S = 3.0
DRIFT_TIMEOUT_S = 5.0
"""Longest a batch of rows waits for the drift monitor; then it is dropped and counted."""
REPORT_TIMEOUT_S = 10.0


class ExperimentClient(Protocol):
    """The experiment store (one for the application): statistics, decisions, traffic."""

    def record(self, events: list[RequestEvent]) -> Awaitable[Any]: ...
    def traffic(self) -> Awaitable[dict[str, Routing]]: ...
    def summary(self, model: str) -> Awaitable[dict]: ...
    def feedback(self, model: str, id: Any, reward: Any, label: Any) -> Awaitable[dict]: ...
    def promote(self, model: str, reason: str, who: str) -> Awaitable[dict]: ...
    def rollback(self, model: str, reason: str, who: str) -> Awaitable[dict]: ...


class DriftSink(Protocol):
    """The drift monitor: takes rows in batches, reports per model."""

    def observe(self, batches: list[DriftBatch]) -> Awaitable[Any]: ...
    def report(self, model: str) -> Awaitable[dict]: ...


class Metrics(Protocol):
    """Where counts go (Prometheus through Ray in production)."""

    def request(self, model: str, version: int, arm: str, latency_ms: float, ok: bool) -> None: ...
    def shed(self, model: str) -> None: ...
    def shadow(self, model: str, version: int, ok: bool, compared: int, disagreed: int) -> None: ...
    def log(self, stats: dict) -> None: ...
    def flush(self) -> None: ...


def drift_columns(endpoints: list[Endpoint], model: str, features: list[str] | None) -> list[str]:
    """The request inputs the drift monitor needs: one value per row, named in features if given."""
    specs = next(e.input_specs for e in endpoints if e.name == model)
    per_row = [s.name for s in specs if s.one_value_per_row]
    return [name for name in per_row if features is None or name in features]


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def _asked(call: Awaitable | None) -> Any:
    """A status question's answer, or None when the part does not answer in time."""
    if call is None:
        return None
    try:
        return await asyncio.wait_for(call, ASK_TIMEOUT_S)
    except Exception:
        return None


class Gateway:
    """One router replica's pipeline and its background work. start() begins the loops; close()
    writes what is buffered and delivers what is pending, each bounded."""

    def __init__(
        self,
        settings: GraphArgs,
        endpoints: list[Endpoint],
        metrics: Metrics,
        experiments: ExperimentClient | None = None,
        initial_traffic: dict[str, dict] | None = None,
        drift: DriftSink | None = None,
        app_args: dict | None = None,
        extensions: list[str] | None = None,
        statistics: StatisticsClient | None = None,
        recorder: StatisticsRecorder | None = None,
    ):
        self.settings = settings
        self.app_args = app_args
        self.started_at = time.time()
        self.dataplane = DataPlane(endpoints, extensions=extensions)
        self.repository = ModelRepository(settings.repository)
        self.configs = {e.name: self.repository.config(e.name) for e in endpoints}
        log = None
        if settings.storage_uri is not None:
            writer = f"router-{uuid.uuid4().hex[:12]}"
            log = ParquetLog(settings.storage_uri, writer, max_logged_values=settings.log_max_values)
        self.traffic = TrafficController(log)
        self.experiments = experiments
        for model, traffic in (initial_traffic or {}).items():
            self.traffic.set_traffic(model, TrafficSettings.model_validate(traffic))
        self.stats = RequestStats()
        self.metrics = metrics
        self.statistics = statistics if statistics is not None else LocalBoard()
        self.recorder = recorder or StatisticsRecorder("router")
        thresholds = {model: config.decision_threshold for model, config in self.configs.items()}
        self.shadows = ShadowMirror(self.dataplane, self.traffic, self.stats, metrics, thresholds)
        self.drift = drift
        watched = settings.drift if drift is not None else {}
        columns = {m: drift_columns(endpoints, m, s.features) for m, s in watched.items()}
        rankers = {model for model, config in self.configs.items() if config.ranking is not None}
        self.drift_feed = DriftFeed(watched, columns, one_row_per_request=rankers)
        self.drift_failures = 0
        self._loops: list[asyncio.Task] = []

    async def start(self) -> None:
        if self.experiments is not None:
            try:
                await self.sync_with_experiments()  # a restarted app routes by the persisted state at once
            except Exception:  # the configured traffic serves until the background loop reaches the store
                logger.exception("the experiment store is not reachable yet")
        for loop in (self._background_loop, self._mirror_loop, self._drift_loop):
            self._loops.append(asyncio.create_task(loop()))

    async def close(self) -> None:
        """Graceful shutdown: what was logged is written first (other deployments may be going away
        too, so every call to them is bounded), then the last shadows and events."""
        for loop in self._loops:
            loop.cancel()
        await self.flush_log()
        self.shadows.send()
        if self.shadows.calls:
            await asyncio.wait(self.shadows.calls, timeout=SHUTDOWN_WAIT_S)
            await self.flush_log()
        try:
            await asyncio.wait_for(self.sync_with_experiments(), SHUTDOWN_WAIT_S)
        except Exception:
            logger.warning("the last experiment events could not be delivered at shutdown")
        if self.drift is not None:
            await self.ship_drift_rows()
        self.metrics.flush()
        await self.report_statistics()

    # -- the request path ---------------------------------------------------------------------

    async def serve(
        self, model: str, version: str | None, inference: InferenceRequest, routing_key: str | None
    ) -> InferenceResponse:
        route = self.traffic.route(model, version, inference, routing_key)
        start = time.perf_counter()
        try:
            response = await self.dataplane.infer(model, route.version, inference)
        except QueueFull as error:  # shed: the version's queue is full (max_queued_requests)
            self.metrics.shed(model)
            logger.debug("request id=%s model=%s shed: %s", inference.id, model, error)
            raise Unavailable(f"model '{model}' is overloaded: {error} Retry later.") from None
        except Exception as error:
            client_error = as_client_error(error)
            if client_error is None or client_error.http_status >= 500:  # the model failed, not the client
                answered_by, latency_ms = self.dataplane.endpoint(model, route.version).version, _ms(start)
                self.traffic.record(model, answered_by, route.arm, inference, None, latency_ms, type(error).__name__)
                self._count(model, answered_by, route.arm, latency_ms, 0, ok=False)
                message = "request id=%s model=%s version=%s arm=%s failed after %.2f ms: %r"
                logger.warning(message, inference.id, model, answered_by, route.arm, latency_ms, error)
            else:
                logger.debug("request id=%s model=%s refused: %s", inference.id, model, client_error.message)
            if client_error is not None:  # as itself: the protocol layers answer it with its status
                raise client_error from None
            raise
        response.parameters["arm"] = route.arm
        answered_by, latency_ms = int(response.model_version), _ms(start)
        self.traffic.record(model, answered_by, route.arm, inference, response.outputs, latency_ms, "ok")
        self._count(model, answered_by, route.arm, latency_ms, batch_size(inference.inputs), ok=True)
        message = "request id=%s model=%s version=%s arm=%s status=ok latency_ms=%.2f"
        logger.debug(message, inference.id, model, answered_by, route.arm, latency_ms)
        try:
            self.drift_feed.add(model, answered_by, route.arm, inference.inputs, response.outputs)
        except Exception:  # drift is best effort: never the client's problem
            logger.exception("drift: a request's rows could not be buffered")
        if route.shadows:
            production = row_scores(response.outputs, batch_size(inference.inputs))
            for shadow in route.shadows:  # fire and forget: the answer never waits for a shadow
                self.shadows.queue.add(model, shadow, inference, production)
        return response

    def _count(self, model: str, version: int, arm: str, latency_ms: float, rows: int, ok: bool) -> None:
        self.stats.request(model, version, arm, latency_ms, ok)
        self.metrics.request(model, version, arm, latency_ms, ok)
        self.recorder.request(model, version, rows, ok, int(latency_ms * 1e6))

    # -- shipping: drift rows, experiment events, the prediction log, batch sizes -------------

    async def ship_drift_rows(self) -> None:
        """Fire and forget: a slow or restarting monitor costs dropped rows (counted), never a request."""
        batches = []
        try:
            batches = self.drift_feed.take()
            if batches and self.drift is not None:
                await asyncio.wait_for(self.drift.observe(batches), DRIFT_TIMEOUT_S)
        except (Exception, asyncio.CancelledError) as error:
            self.drift_feed.lost(batches)
            self.drift_failures += 1
            if self.drift_failures == 1 or self.drift_failures % 100 == 0:
                logger.warning("the drift monitor did not take rows (%d times so far): %r", self.drift_failures, error)
            if isinstance(error, asyncio.CancelledError):
                raise

    async def sync_with_experiments(self) -> None:
        """Ship request events to the experiment store and take the traffic it decides."""
        if self.experiments is None:
            return
        events = self.traffic.drain_events()
        delivered, failure = not events, None
        try:
            if events:
                await self.experiments.record(events)
                delivered = True
        except Exception as error:
            failure = error
        finally:  # also on cancellation at shutdown: undelivered events go back, delivered ones never twice
            if not delivered:
                self.traffic.requeue(events)
        for model, routing in (await self.experiments.traffic()).items():  # even when recording failed
            traffic = TrafficSettings.model_validate(routing.traffic)
            # A router of the graph before a load overlaps the new graph's while they swap (routers
            # surge): it keeps the traffic it has rather than route to a version it does not serve.
            if self.serves(model, traffic.versions):
                self.traffic.set_traffic(model, traffic, routing.salt)
        if failure is not None:
            raise failure

    def serves(self, model: str, versions: list[int]) -> bool:
        """Whether this router's graph serves every one of these versions of the model."""
        try:
            return all(self.dataplane.served(model, str(v)) for v in versions)
        except ModelNotFound:
            return False

    async def flush_log(self) -> None:
        if self.traffic.log is not None:
            await asyncio.to_thread(self.traffic.log.flush)
            self.metrics.log(self.traffic.log.stats())

    async def sync_merge_sizes(self) -> None:
        """Merge up to each version's live batch size: `serve deploy` may have changed it
        (user_config) since config.yaml was read."""
        for endpoint in self.merging_endpoints():
            try:
                stats = await asyncio.wait_for(endpoint.batch_stats(), ASK_TIMEOUT_S)
                endpoint.merger.max_rows = stats["max_batch_size"]
            except Exception as error:  # a replica starting or gone: the next round asks again
                logger.debug("%s v%s: batch size not read: %r", endpoint.name, endpoint.version, error)

    async def report_statistics(self) -> None:
        """This replica's counters to the application's statistics board, if they changed."""
        await report_statistics(self.recorder, self.statistics)

    def merging_endpoints(self) -> list[Endpoint]:
        return [e for e in self.dataplane.endpoints if e.merger is not None]

    async def _mirror_loop(self) -> None:
        while True:
            await asyncio.sleep(SHADOW_WINDOW_S)
            self.shadows.send()

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(BACKGROUND_INTERVAL_S)
            await self.ship_drift_rows()

    async def _background_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(BACKGROUND_INTERVAL_S)
            rounds += 1
            if rounds % MERGE_SIZE_SYNC_ROUNDS == 0:
                try:
                    await self.sync_merge_sizes()
                except Exception:  # never the loop's end: the log and the experiment sync go on
                    logger.exception("reading the versions' batch sizes failed")
            # Each on its own: the log is written even while the experiment store is away.
            try:
                await self.sync_with_experiments()
            except Exception:  # the next round retries
                logger.exception("syncing with the experiment store failed")
            await self.flush_log()
            self.metrics.flush()
            await self.report_statistics()

    # -- questions about the graph: health, metadata, the status page, drift, experiments -----

    def health(self) -> dict:
        """What this replica could not do, beyond answering: storage writes, drift shipping,
        shadows, experiment events. Serving goes on through all of it; `status` says whether any
        is failing now. Error messages stay in the log (they may name paths or buckets)."""
        storage = None
        if self.traffic.log is not None:
            storage = self.traffic.log.stats()
            last_error = storage.pop("last_error")
            storage["last_error_type"] = last_error.partition(":")[0] if last_error else None
        return {
            "status": "degraded" if storage is not None and storage["failing"] else "ok",
            "storage": storage,
            "drift_shipping_failures": self.drift_failures,
            "shadow_failures": self.traffic.shadow_failures,
            "experiment_events_pending": self.traffic.pending_events,
            "experiment_events_dropped": self.traffic.events_dropped,
            "merging": {f"{e.name}-v{e.version}": e.merger.stats.as_dict() for e in self.merging_endpoints()},
        }

    async def metadata(self, model: str, version: str | None) -> dict:
        """The protocol's metadata, plus where the version really runs (asked of it)."""
        metadata = self.dataplane.model_metadata(model, version)
        described = await _asked(self.dataplane.endpoint(model, version).describe())
        if described:  # metadata answers even while a replica restarts
            providers = described.get("providers") or [described["platform"]]
            metadata["parameters"].update(device=described["device"], execution_provider=providers[0])
        return metadata

    async def status_page_data(self) -> dict:
        """What the status page draws: this replica's counts, and each model's experiment, batching
        and drift as their deployments report them (a part that does not answer in time is left out)."""
        stats = self.stats.snapshot()
        models = sorted({e.name for e in self.dataplane.endpoints})
        parts = await asyncio.gather(*(self._model_status(m, stats.get(m, {})) for m in models))
        return {"time": time.time(), "uptime_s": time.time() - self.started_at, "models": dict(zip(models, parts))}

    async def _model_status(self, model: str, stats: dict) -> dict:
        traffic = self.traffic.traffic.get(model)
        split = []
        if traffic is not None:
            split.append({"version": traffic.champion, "arm": "champion", "weight": 1.0 - traffic.challenger_weight})
            if traffic.challenger is not None:
                split.append({"version": traffic.challenger, "arm": "challenger", "weight": traffic.challenger_weight})
        endpoints = [e for e in self.dataplane.endpoints if e.name == model]
        experiment = self.experiments.summary(model) if self.experiments and model in self.traffic.policies else None
        drift = self.drift.report(model) if self.drift is not None and model in self.settings.drift else None
        *batching, summary, report = await asyncio.gather(
            *(_asked(e.batch_stats()) for e in endpoints), _asked(experiment), _asked(drift)
        )
        return {
            "arms": stats.get("arms", []),
            "shadows": stats.get("shadows", []),
            "traffic": split,
            "experiment": summary,
            "drift": report["versions"] if report else None,
            "batching": {str(e.version): b for e, b in zip(endpoints, batching) if b is not None},
        }

    async def drift_report(self, model: str) -> dict:
        """Per version: the last window's per-feature statistics and p-values, recent windows,
        rows seen and dropped, and the open drift episode with its alert."""
        self.dataplane.endpoint(model)
        if self.drift is None or model not in self.settings.drift:
            raise ModelNotFound(f"model '{model}' has no drift monitoring")
        try:
            return await asyncio.wait_for(self.drift.report(model), REPORT_TIMEOUT_S)
        except Exception as error:
            raise Unavailable(f"the drift monitor is not answering (restarting?), retry later: {error!r}") from None

    def experiment_store(self, model: str) -> ExperimentClient:
        self.dataplane.endpoint(model)
        if self.experiments is None or model not in self.traffic.policies:
            raise ModelNotFound(f"model '{model}' has no experiment")
        return self.experiments

    def control(self) -> ModelControl:
        """Load, unload and traffic changes, computed against what this replica serves now."""
        if self.app_args is None:
            raise Conflict("this application was not built by a serve-app graph: it cannot redeploy itself")
        served: dict[str, list[int]] = {}
        for endpoint in self.dataplane.endpoints:
            served.setdefault(endpoint.name, []).append(endpoint.version)
        live = {model: policy.traffic for model, policy in self.traffic.policies.items()}
        return ModelControl(self.app_args, served, live)
