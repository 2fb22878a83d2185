"""The ingress: the Open Inference Protocol over HTTP (FastAPI) and gRPC (Serve's gRPC proxy),
both thin layers over one DataPlane, routed to model-version pipelines."""

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from serve_app import __version__
from serve_app.config import GraphArgs, TrafficSettings
from serve_app.deployments.logs import replica_logging
from serve_app.deployments.metrics import RouterMetrics
from serve_app.deployments.redeploy import redeploy
from serve_app.drift import DriftFeed
from serve_app.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    ServeAppError,
    Unauthorized,
    Unavailable,
    as_client_error,
)
from serve_app.model_control import ModelControl
from serve_app.predlog import ParquetLog, first_score
from serve_app.protocol import grpc_codec, openapi
from serve_app.protocol.dataplane import DataPlane, Endpoint
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.messages import InferenceRequest, InferenceResponse
from serve_app.protocol.rest import (
    binary_outputs,
    decode_content,
    parse_infer_request,
    parse_json_body,
    render_infer_response,
)
from serve_app.repository import ModelRepository, ModelVersion
from serve_app.runtime.batching import merge_rows, split_rows
from serve_app.runtime.merging import QueueFull, RequestMerger
from serve_app.telemetry import RequestStats, disagrees
from serve_app.traffic import ROUTING_KEY_HEADER, ShadowQueue, TrafficController

logger = logging.getLogger("ray.serve")
READY_TIMEOUT_S = 5.0
REPLICA_LOST_RETRIES = 2
"""Times a request is sent again when the replica scoring it died (scoring has no side effects)."""
BACKGROUND_INTERVAL_S = 1.0
MERGE_SIZE_SYNC_ROUNDS = 10
"""Every this many background rounds, the router reads each version's live batch size."""
SHADOW_TIMEOUT_S = 10.0
SHADOW_WINDOW_S = 1.0
"""How long mirrored requests gather before they go to their shadow version in one call."""
SHUTDOWN_WAIT_S = 3.0
DRIFT_TIMEOUT_S = 5.0
"""Longest a batch of rows waits for the drift monitor; then it is dropped and counted."""
REPORT_TIMEOUT_S = 10.0
ADMIN_TOKEN_ENV = "SERVE_APP_ADMIN_TOKEN"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
STATUS_PAGE = Path(__file__).parents[1] / "static" / "dashboard.html"
HEADER_LENGTH = "inference-header-content-length"

app = FastAPI(
    title="serve-app",
    version=__version__,
    description="The Open Inference Protocol (KServe V2) over HTTP, with Triton's binary tensor extension.",
)


def _error(status: int, message: str) -> Response:
    # ASCII-escaped: a message may quote client text that is not valid UTF-8.
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def client_error_of(error: BaseException) -> ServeAppError | None:
    """What a client is told about an exception; None for a bug (500)."""
    if isinstance(error, (BackPressureError, DeploymentUnavailableError, RayActorError)):
        return Unavailable(f"the model is overloaded or unavailable, retry later ({type(error).__name__})")
    return as_client_error(error)


@app.exception_handler(ServeAppError)
@app.exception_handler(RayTaskError)
@app.exception_handler(BackPressureError)
@app.exception_handler(DeploymentUnavailableError)
@app.exception_handler(RayActorError)
async def _client_error(request: Request, error: Exception) -> Response:
    client_error = client_error_of(error)
    if client_error is None:
        return await _unexpected(request, error)
    return _error(client_error.http_status, client_error.message)


@app.exception_handler(HTTPException)
async def _http_error(_: Request, error: HTTPException) -> Response:
    return _error(error.status_code, str(error.detail))


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> Response:
    return _error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))


@app.exception_handler(Exception)
async def _unexpected(_: Request, error: Exception) -> Response:
    logger.exception("unexpected error while serving a request")
    return _error(500, f"internal error: {type(error).__name__}")


def _openapi() -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi.request_components())
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi


# Helpers sit above the deployment class: Serve ships the class by value, with only the globals
# already defined when its body ran.
async def _grpc(call: Callable[[], Awaitable], empty: type, grpc_context: RayServegRPCContext):
    """Run a gRPC call; a client error becomes its status code and message, not a traceback."""
    try:
        return await call()
    except Exception as error:
        client_error = client_error_of(error)
        if client_error is None:
            raise
        grpc_context.set_code(getattr(grpc.StatusCode, client_error.grpc_code))
        grpc_context.set_details(client_error.message)
        return empty()


def _chunks_by_rows(mirrored: list[tuple[InferenceRequest, float | None]], max_rows: int) -> list[list]:
    """Consecutive groups of mirrored requests holding at most max_rows rows each (a request is never split)."""
    chunks, current, rows = [], [], 0
    for request, production_score in mirrored:
        size = next(iter(request.inputs.values())).shape[0]
        if current and rows + size > max_rows:
            chunks.append(current)
            current, rows = [], 0
        current.append((request, production_score))
        rows += size
    return [*chunks, current] if current else chunks


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _authorize(request: Request, action: str) -> str:
    """Management calls need the bearer token from the environment, compared in constant time."""
    expected = os.environ.get(ADMIN_TOKEN_ENV)
    if not expected:
        raise Forbidden(f"management is disabled: the server has no {ADMIN_TOKEN_ENV}")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        client = request.client.host if request.client else "unknown"
        logger.warning("refused an unauthenticated request to %s from %s", action, client)
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
    return "ops"


async def _reason(request: Request) -> str:
    body = await request.body()
    if not body:
        return "requested by ops"
    document = parse_json_body(body)
    if not isinstance(document, dict) or not isinstance(document.get("reason", ""), str):
        raise InvalidInput("the body, if any, must be an object with a 'reason' string")
    return document.get("reason") or "requested by ops"


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length must be a whole number of bytes, got '{value}'")
    return int(value)


def _control_parameters(body: bytes, allowed: set[str]) -> dict:
    """The `parameters` object of a load/unload body (Triton's shape); config and file overrides
    are refused: a version is changed on disk (serve-app register), not through the API."""
    document = parse_json_body(body) if body else {}
    parameters = document.get("parameters", {}) if isinstance(document, dict) else None
    if not isinstance(parameters, dict) or set(document) - {"parameters"}:
        raise InvalidInput("the body, if any, must be an object with a 'parameters' object")
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        raise InvalidInput(f"unsupported parameter(s) {unknown}: this server takes {sorted(allowed)}; "
                           "add versions with serve-app register, not through the API")  # fmt: skip
    version = parameters.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidInput(f"parameter 'version' must be a whole number >= 1, got {version!r}")
    return parameters


class HandleEndpoint(Endpoint):
    """A model version served by a Preprocessor deployment (optional) and a Model deployment.
    merge_calls: batching before the hop, with at most this many calls in flight; None: a call per
    request."""

    def __init__(
        self,
        model: ModelVersion,
        preprocessor: DeploymentHandle | None,
        runner: DeploymentHandle,
        merge_calls: int | None = None,
        max_queued: int | None = None,
    ):
        super().__init__(model)
        self.preprocessor = preprocessor
        self.model = runner
        self.merger = None
        if merge_calls is not None:
            max_rows = model.config.dynamic_batching.max_batch_size
            shed = lambda error: isinstance(error, BackPressureError)  # noqa: E731
            self.merger = RequestMerger(self._call_with_retries, max_rows, merge_calls, max_queued, is_shed=shed)

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.merger is None:
            return await self._call_with_retries(inputs)
        return await self.merger.infer(inputs)

    async def _call_with_retries(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for attempt in range(REPLICA_LOST_RETRIES + 1):
            try:
                return await self._call(inputs)
            except RayActorError as error:  # killed or its node lost; Serve routes the retry to a live one
                if attempt == REPLICA_LOST_RETRIES:
                    raise
                logger.warning("%s v%s: a replica died mid-request, sending it again: %r", self.name, self.version,
                               error)  # fmt: skip

    async def _call(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.preprocessor is None:
            return await self.model.predict.remote(inputs)
        # Chained: the preprocessor's result goes to the model without a trip through this replica.
        return await self.model.predict.remote(self.preprocessor.transform.remote(inputs))

    async def ready(self) -> bool:
        """Both deployments of the pipeline answer a call (through their request queues)."""
        calls = [self.model.ready.remote()]
        if self.preprocessor is not None:
            calls.append(self.preprocessor.ready.remote())
        states = await asyncio.wait_for(asyncio.gather(*calls), READY_TIMEOUT_S)
        return all(states)


def _drift_columns(endpoints: list[Endpoint], model: str, settings) -> list[str]:
    """The request inputs the drift monitor needs: one value per row, named in settings.features if set."""
    specs = next(e.input_specs for e in endpoints if e.name == model)
    per_row = [s.name for s in specs if s.dims[1:] in ([], [1])]
    return [name for name in per_row if settings.features is None or name in settings.features]


@serve.deployment
@serve.ingress(app)
class Router:
    async def __init__(
        self,
        settings: dict,
        pipelines: list[dict],
        experiments: DeploymentHandle | None = None,
        initial_traffic: dict[str, dict] | None = None,
        drift: DeploymentHandle | None = None,
        app_args: dict | None = None,
    ):
        """pipelines: one {"model", "version", "preprocessor", "runner"} per served version;
        experiments: the experiment store, for the models in initial_traffic;
        drift: the drift monitor, for the models in settings.drift;
        app_args: the application's args as the graph builder resolved them, to deploy it again
        changed (load, unload, traffic)."""
        replica_logging()
        self.settings = GraphArgs.model_validate(settings)
        self.app_args = app_args
        self.started_at = time.time()
        repo = ModelRepository(self.settings.repository)
        endpoints = []
        queued = None if self.settings.max_queued_requests < 0 else self.settings.max_queued_requests
        for pipeline in pipelines:
            version = repo.version(pipeline["model"], pipeline["version"])
            merge_calls = None
            if self.settings.merge_before_hop:
                merge_calls = self.settings.merge_calls_per_replica * version.config.instances.num_replicas
            endpoints.append(HandleEndpoint(version, pipeline["preprocessor"], pipeline["runner"], merge_calls, queued))
        self.configs = {e.name: repo.config(e.name) for e in endpoints}
        self.dataplane = DataPlane(endpoints, extensions=EXTENSIONS)
        log = None
        if self.settings.storage_uri is not None:
            writer = f"router-{uuid.uuid4().hex[:12]}"
            log = ParquetLog(self.settings.storage_uri, writer, max_logged_values=self.settings.log_max_values)
        self.traffic = TrafficController(log)
        self.experiments = experiments
        for model, traffic in (initial_traffic or {}).items():
            self.traffic.set_traffic(model, TrafficSettings.model_validate(traffic))
        self.shadows = ShadowQueue()
        self.stats = RequestStats()
        self.metrics = RouterMetrics()
        self.status_page = STATUS_PAGE.read_text()
        self._shadow_calls: set[asyncio.Task] = set()
        self.drift = drift
        watched = self.settings.drift if drift is not None else {}
        self.drift_feed = DriftFeed(watched, {m: _drift_columns(endpoints, m, s) for m, s in watched.items()})
        self.drift_failures = 0
        if experiments is not None:
            try:
                await self._sync_with_experiments()  # a restarted app routes by the persisted state at once
            except Exception:  # the configured traffic serves until the background loop reaches the store
                logger.exception("the experiment store is not reachable yet")
        self._background = asyncio.create_task(self._background_loop())
        self._mirroring = asyncio.create_task(self._mirror_loop())
        self._drift_shipping = asyncio.create_task(self._drift_loop())

    # -- REST --------------------------------------------------------------------------

    @app.get("/v2/health/live", response_model=openapi.Live)
    async def live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", response_model=openapi.Ready, responses={400: {"model": openapi.Ready}})
    async def ready(self) -> JSONResponse:
        return self._ready(await self.dataplane.server_ready())

    @app.get("/health", response_model=openapi.Health)
    async def health(self) -> dict:
        """What this router replica could not do, beyond answering: storage writes, drift shipping,
        shadows, experiment events. Serving goes on through all of it; `status` says whether any
        is failing now. Error messages stay in the replica's log (they may name paths or buckets)."""
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
            "merging": {f"{e.name}-v{e.version}": e.merger.stats.as_dict() for e in self._merging_endpoints()},
        }

    @app.get("/v2", response_model=openapi.ServerMetadata)
    async def server_metadata(self) -> dict:
        return self.dataplane.server_metadata()

    @app.get("/v2/models/{model}", response_model=openapi.ModelMetadata, responses=openapi.ERRORS)
    async def model_metadata(self, model: str) -> dict:
        return await self._metadata(model, None)

    @app.get("/v2/models/{model}/versions/{version}", response_model=openapi.ModelMetadata, responses=openapi.ERRORS)
    async def version_metadata(self, model: str, version: str) -> dict:
        return await self._metadata(model, version)

    async def _metadata(self, model: str, version: str | None) -> dict:
        """The protocol's metadata, plus where the version really runs (asked of its replica)."""
        metadata = self.dataplane.model_metadata(model, version)
        endpoint = self.dataplane.endpoint(model, version)
        try:
            described = await asyncio.wait_for(endpoint.model.describe.remote(), READY_TIMEOUT_S)
        except Exception:  # metadata must answer even while a replica restarts
            return metadata
        providers = described.get("providers") or [described["platform"]]
        metadata["parameters"].update(device=described["device"], execution_provider=providers[0])
        return metadata

    @app.get("/v2/models/{model}/config", responses=openapi.ERRORS)
    async def model_config(self, model: str) -> dict:
        self.dataplane.endpoint(model)
        return self.configs[model].model_dump(mode="json")

    @app.get("/v2/models/{model}/ready", response_model=openapi.Ready, responses=openapi.ERRORS)
    async def model_ready(self, model: str) -> JSONResponse:
        return self._ready(await self.dataplane.model_ready(model))

    @app.get("/v2/models/{model}/versions/{version}/ready", response_model=openapi.Ready, responses=openapi.ERRORS)
    async def version_ready(self, model: str, version: str) -> JSONResponse:
        return self._ready(await self.dataplane.model_ready(model, version))

    @app.post(
        "/v2/models/{model}/infer",
        response_model=openapi.InferenceResponse,
        responses=openapi.ERRORS,
        openapi_extra=openapi.infer_request_body(),
    )
    async def infer(self, model: str, request: Request) -> Response:
        return await self._infer(model, None, request)

    @app.post(
        "/v2/models/{model}/versions/{version}/infer",
        response_model=openapi.InferenceResponse,
        responses=openapi.ERRORS,
        openapi_extra=openapi.infer_request_body(),
    )
    async def version_infer(self, model: str, version: str, request: Request) -> Response:
        return await self._infer(model, version, request)

    async def _infer(self, model: str, version: str | None, request: Request) -> Response:
        self.dataplane.endpoint(model, version)  # an unknown model is a 404 before the body is read
        body = await self._read_body(request)
        inference = parse_infer_request(body, _header_length(request))
        response = await self._serve(model, version, inference, request.headers.get(ROUTING_KEY_HEADER))
        content, header_length = render_infer_response(response, binary_outputs(inference, list(response.outputs)))
        headers = {"x-model-version": response.model_version, "x-serve-arm": response.parameters["arm"]}
        if header_length is None:
            return Response(content, media_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(header_length)
        return Response(content, media_type="application/octet-stream", headers=headers)

    # -- routing, mirroring and recording, shared by REST and gRPC ------------------------------

    async def _serve(
        self, model: str, version: str | None, inference: InferenceRequest, routing_key: str | None
    ) -> InferenceResponse:
        route = self.traffic.route(model, version, inference, routing_key)
        start = time.perf_counter()
        try:
            response = await self.dataplane.infer(model, route.version, inference)
        except (BackPressureError, QueueFull) as error:  # shed: the version's queue is full (max_queued_requests)
            self.metrics.shed(model)
            logger.debug("request id=%s model=%s shed: %s", inference.id, model, error)
            raise Unavailable(f"model '{model}' is overloaded: {error} Retry later.") from None
        except Exception as error:
            client_error = client_error_of(error)
            if client_error is None or client_error.http_status >= 500:  # the model failed, not the client
                answered_by, latency_ms = self.dataplane.endpoint(model, route.version).version, _ms(start)
                self.traffic.record(model, answered_by, route.arm, inference, None, latency_ms, type(error).__name__)
                self._count(model, answered_by, route.arm, latency_ms, ok=False)
                logger.warning("request id=%s model=%s version=%s arm=%s failed after %.2f ms: %r",
                               inference.id, model, answered_by, route.arm, latency_ms, error)  # fmt: skip
            else:
                logger.debug("request id=%s model=%s refused: %s", inference.id, model, client_error.message)
            if client_error is not None:  # as itself: Serve answers its own exceptions in plain text
                raise client_error from None
            raise
        response.parameters["arm"] = route.arm
        answered_by, latency_ms = int(response.model_version), _ms(start)
        self.traffic.record(model, answered_by, route.arm, inference, response.outputs, latency_ms, "ok")
        self._count(model, answered_by, route.arm, latency_ms, ok=True)
        logger.debug("request id=%s model=%s version=%s arm=%s status=ok latency_ms=%.2f",
                     inference.id, model, answered_by, route.arm, latency_ms)  # fmt: skip
        try:
            self.drift_feed.add(model, answered_by, route.arm, inference.inputs, response.outputs)
        except Exception:  # drift is best effort: never the client's problem
            logger.exception("drift: a request's rows could not be buffered")
        if route.shadows:
            production_score = first_score(response.outputs)
            for shadow in route.shadows:
                self._mirror(model, shadow, inference, production_score)
        return response

    def _count(self, model: str, version: int, arm: str, latency_ms: float, ok: bool) -> None:
        self.stats.request(model, version, arm, latency_ms, ok)
        self.metrics.request(model, version, arm, latency_ms, ok)

    def _mirror(self, model: str, version: int, inference: InferenceRequest, production_score: float | None) -> None:
        """Fire and forget: the client's answer never waits for, or depends on, a shadow."""
        self.shadows.add(model, version, inference, production_score)

    async def _mirror_loop(self) -> None:
        while True:
            await asyncio.sleep(SHADOW_WINDOW_S)
            self._send_shadows()

    def _send_shadows(self) -> None:
        for (model, version), requests in self.shadows.take().items():
            task = asyncio.create_task(self._shadow(model, version, requests))
            self._shadow_calls.add(task)
            task.add_done_callback(self._shadow_calls.discard)

    async def _shadow(self, model: str, version: int, mirrored: list[tuple[InferenceRequest, float | None]]) -> None:
        """One call per chunk of mirrored requests (as many rows as the version takes); each is logged
        and its decision compared with production's."""
        try:
            max_rows = self.dataplane.endpoint(model, str(version)).max_batch_size
        except Exception as error:
            self._shadow_failed(model, version, mirrored, time.perf_counter(), error)
            return
        for chunk in _chunks_by_rows(mirrored, max_rows):
            start = time.perf_counter()
            try:
                merged, rows = merge_rows([request.inputs for request, _ in chunk])
                call = self.dataplane.infer(model, str(version), InferenceRequest(inputs=merged))
                outputs = split_rows((await asyncio.wait_for(call, SHADOW_TIMEOUT_S)).outputs, rows)
            except Exception as error:
                self._shadow_failed(model, version, chunk, start, error)
                continue
            for (request, production_score), answer in zip(chunk, outputs):
                self.traffic.record(model, version, "shadow", request, answer, _ms(start), "ok")
                self._count_shadow(model, version, disagrees(production_score, first_score(answer)), ok=True)

    def _count_shadow(self, model: str, version: int, disagreed: bool | None, ok: bool) -> None:
        self.stats.shadow(model, version, disagreed, ok)
        self.metrics.shadow(model, version, disagreed, ok)

    def _shadow_failed(self, model: str, version: int, mirrored: list, start: float, error: Exception) -> None:
        before = self.traffic.shadow_failures
        self.traffic.shadow_failures += len(mirrored)
        if before == 0 or before // 100 != self.traffic.shadow_failures // 100:  # the first, then per hundred
            logger.warning("shadow %s v%s failed (%d so far): %r", model, version, self.traffic.shadow_failures, error)
        for request, _ in mirrored:
            self.traffic.record(model, version, "shadow", request, None, _ms(start), type(error).__name__)
            self._count_shadow(model, version, None, ok=False)

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(BACKGROUND_INTERVAL_S)
            await self._ship_drift_rows()

    async def _ship_drift_rows(self) -> None:
        """Fire and forget: a slow or restarting monitor costs dropped rows (counted), never a request."""
        batches = []
        try:
            batches = self.drift_feed.take()
            if batches:
                await asyncio.wait_for(self.drift.observe.remote(batches), DRIFT_TIMEOUT_S)
        except (Exception, asyncio.CancelledError) as error:
            self.drift_feed.lost(batches)
            self.drift_failures += 1
            if self.drift_failures == 1 or self.drift_failures % 100 == 0:
                logger.warning("the drift monitor did not take rows (%d times so far): %r", self.drift_failures, error)
            if isinstance(error, asyncio.CancelledError):
                raise

    async def _background_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(BACKGROUND_INTERVAL_S)
            rounds += 1
            if rounds % MERGE_SIZE_SYNC_ROUNDS == 0:
                try:
                    await self._sync_merge_sizes()
                except Exception:  # never the loop's end: the log and the experiment sync go on
                    logger.exception("reading the versions' batch sizes failed")
            # Each on its own: the log is written even while the experiment store is away.
            try:
                await self._sync_with_experiments()
            except Exception:  # the next round retries
                logger.exception("syncing with the experiment store failed")
            await self._flush_log()
            self.metrics.flush()

    async def _sync_merge_sizes(self) -> None:
        """Merge up to each version's live batch size: `serve deploy` may have changed it
        (user_config) since config.yaml was read."""
        for endpoint in self._merging_endpoints():
            try:
                stats = await asyncio.wait_for(endpoint.model.batch_stats.remote(), READY_TIMEOUT_S)
                endpoint.merger.max_rows = stats["max_batch_size"]
            except Exception as error:  # a replica starting or gone: the next round asks again
                logger.debug("%s v%s: batch size not read: %r", endpoint.name, endpoint.version, error)

    def _merging_endpoints(self) -> list[HandleEndpoint]:
        return [e for e in self.dataplane.endpoints if isinstance(e, HandleEndpoint) and e.merger is not None]

    async def _sync_with_experiments(self) -> None:
        """Ship request events to the experiment store and take the traffic it decides."""
        if self.experiments is None:
            return
        events = self.traffic.drain_events()
        delivered, failure = not events, None
        try:
            if events:
                await self.experiments.record.remote(events)
                delivered = True
        except Exception as error:
            failure = error
        finally:  # also on cancellation at shutdown: undelivered events go back, delivered ones never twice
            if not delivered:
                self.traffic.requeue(events)
        for model, traffic in (await self.experiments.traffic.remote()).items():  # even when recording failed
            self.traffic.set_traffic(model, TrafficSettings.model_validate(traffic))
        if failure is not None:
            raise failure

    async def __del__(self):
        """Graceful shutdown: what was logged is written first (other deployments may be going away
        too, so every call to them is bounded), then the last shadows and events."""
        self._background.cancel()
        self._mirroring.cancel()
        self._drift_shipping.cancel()
        await self._flush_log()
        self._send_shadows()
        if self._shadow_calls:
            await asyncio.wait(self._shadow_calls, timeout=SHUTDOWN_WAIT_S)
            await self._flush_log()
        try:
            await asyncio.wait_for(self._sync_with_experiments(), SHUTDOWN_WAIT_S)
        except Exception:
            logger.warning("the last experiment events could not be delivered at shutdown")
        if self.drift is not None:
            await self._ship_drift_rows()
        self.metrics.flush()

    async def _flush_log(self) -> None:
        if self.traffic.log is not None:
            await asyncio.to_thread(self.traffic.log.flush)
            self.metrics.log(self.traffic.log.stats())

    # -- experiments: feedback for everyone, decisions for ops -------------------------------------

    def _experiment_store(self, model: str) -> DeploymentHandle:
        self.dataplane.endpoint(model)
        if self.experiments is None or model not in self.traffic.policies:
            raise ModelNotFound(f"model '{model}' has no experiment")
        return self.experiments

    # -- the status page ---------------------------------------------------------------------------

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard(self) -> HTMLResponse:
        """Charts of traffic, the experiment, latency, batching, drift and shadows; refreshes itself."""
        return HTMLResponse(self.status_page)

    @app.get("/dashboard/data", include_in_schema=False)
    async def dashboard_data(self) -> dict:
        """What the status page draws: this router's counts, and each model's experiment, batching
        and drift as their deployments report them (a part that does not answer in time is left out)."""
        stats = self.stats.snapshot()
        models = sorted({e.name for e in self.dataplane.endpoints})
        parts = await asyncio.gather(*(self._model_status(m, stats.get(m, {})) for m in models))
        return {"time": time.time(), "uptime_s": time.time() - self.started_at, "models": dict(zip(models, parts))}

    async def _model_status(self, model: str, stats: dict) -> dict:
        async def asked(call) -> dict | None:
            if call is None:
                return None
            try:
                return await asyncio.wait_for(call, READY_TIMEOUT_S)
            except Exception:
                return None

        traffic = self.traffic.traffic.get(model)
        split = []
        if traffic is not None:
            split.append({"version": traffic.champion, "arm": "champion", "weight": 1.0 - traffic.challenger_weight})
            if traffic.challenger is not None:
                split.append({"version": traffic.challenger, "arm": "challenger", "weight": traffic.challenger_weight})
        endpoints = [e for e in self.dataplane.endpoints if e.name == model]
        experiment = self.experiments.summary.remote(model) if model in self.traffic.policies else None
        drift = self.drift.report.remote(model) if self.drift is not None and model in self.settings.drift else None
        asks = [asked(e.model.batch_stats.remote()) for e in endpoints]
        *batching, summary, report = await asyncio.gather(*asks, asked(experiment), asked(drift))
        return {
            "arms": stats.get("arms", []), "shadows": stats.get("shadows", []), "traffic": split,
            "experiment": summary, "drift": report["versions"] if report else None,
            "batching": {str(e.version): b for e, b in zip(endpoints, batching) if b is not None},
        }  # fmt: skip

    @app.get("/v2/models/{model}/drift", responses=openapi.ERRORS)
    async def drift_report(self, model: str) -> dict:
        """Per version: the last window's per-feature statistics and p-values, recent windows,
        rows seen and dropped, and the open drift episode with its alert."""
        self.dataplane.endpoint(model)
        if self.drift is None or model not in self.settings.drift:
            raise ModelNotFound(f"model '{model}' has no drift monitoring")
        try:
            return await asyncio.wait_for(self.drift.report.remote(model), REPORT_TIMEOUT_S)
        except Exception as error:
            raise Unavailable(f"the drift monitor is not answering (restarting?), retry later: {error!r}") from None

    @app.post("/v2/repository/index", responses=openapi.ERRORS)
    async def repository_index(self, request: Request) -> list[dict]:
        """Triton's model repository extension: every version on disk and whether it is served."""
        body = await self._read_body(request)
        document = parse_json_body(body) if body else {}
        if not isinstance(document, dict) or set(document) - {"ready"} or document.get("ready", False) not in (
            True, False
        ):  # fmt: skip
            raise InvalidInput("the body, if any, must be an object with an optional boolean 'ready'")
        served = {(e.name, e.version) for e in self.dataplane.endpoints}
        entries = ModelRepository(self.settings.repository).index(served)
        return [e for e in entries if e["state"] == "READY"] if document.get("ready") else entries

    @app.post("/v2/repository/models/{model}/load", responses=openapi.CONTROL_ERRORS)
    async def load_model(self, model: str, request: Request) -> JSONResponse:
        """Triton's load: the versions the model's policy selects now, or `parameters.version`."""
        who = _authorize(request, f"load {model}")
        version = _control_parameters(await self._read_body(request), {"version"}).get("version")
        action = f"load {model}" + (f" v{version}" if version else "")
        args = self._control().load(model, version)
        if args is None:
            return JSONResponse({"action": action, "state": "READY", "added": [], "removed": []})
        return await self._redeploy(args, action, who)

    @app.post("/v2/repository/models/{model}/unload", responses=openapi.CONTROL_ERRORS)
    async def unload_model(self, model: str, request: Request) -> JSONResponse:
        """Triton's unload: the model, or only `parameters.version` of it."""
        who = _authorize(request, f"unload {model}")
        version = _control_parameters(await self._read_body(request), {"version", "unload_dependents"}).get("version")
        args = self._control().unload(model, version)
        return await self._redeploy(args, f"unload {model}" + (f" v{version}" if version else ""), who)

    @app.put("/v2/models/{model}/experiment/traffic", responses=openapi.CONTROL_ERRORS)
    async def set_traffic(self, model: str, request: Request) -> JSONResponse:
        """Start the model's experiment anew with this traffic (champion, challenger and weight,
        shadows), loading the versions it names."""
        who = _authorize(request, f"set the traffic of {model}")
        traffic = parse_json_body(await self._read_body(request))
        if not isinstance(traffic, dict):
            raise InvalidInput("the body must be an object: champion, challenger, challenger_weight, shadows, ...")
        args = self._control().set_traffic(model, traffic)
        return await self._redeploy(args, f"set the traffic of {model}", who, {model: args["experiments"][model]})

    def _control(self) -> ModelControl:
        if self.app_args is None:
            raise Conflict("this application was not built by a serve-app graph: it cannot redeploy itself")
        served: dict[str, list[int]] = {}
        for endpoint in self.dataplane.endpoints:
            served.setdefault(endpoint.name, []).append(endpoint.version)
        live = {model: policy.traffic for model, policy in self.traffic.policies.items()}
        return ModelControl(self.app_args, served, live)

    async def _redeploy(self, args: dict, action: str, who: str, experiments: dict | None = None) -> JSONResponse:
        logger.info("%s by %s: deploying the application again with changed args", action, who)
        document = await redeploy(args, action, experiments or {})
        return JSONResponse(document, status_code=200 if document["state"] == "READY" else 202)

    async def start_time(self) -> float:
        """When this replica started (a handle call: a redeploy waits for a router newer than itself)."""
        return self.started_at

    @app.post("/v2/models/{model}/feedback", responses=openapi.ERRORS)
    async def feedback(self, model: str, request: Request) -> dict:
        store = self._experiment_store(model)
        document = parse_json_body(await self._read_body(request))
        if not isinstance(document, dict) or set(document) - {"id", "reward", "label"}:
            raise InvalidInput("feedback must be an object with 'id' and one of 'reward' or 'label'")
        return await store.feedback.remote(model, document.get("id"), document.get("reward"), document.get("label"))

    @app.get("/v2/models/{model}/experiment", responses=openapi.ERRORS)
    async def experiment(self, model: str) -> dict:
        return await self._experiment_store(model).summary.remote(model)

    @app.post("/v2/models/{model}/experiment/promote", responses=openapi.ERRORS | openapi.AUTH_ERRORS)
    async def promote(self, model: str, request: Request) -> dict:
        who = _authorize(request, f"promote {model}")
        return await self._experiment_store(model).promote.remote(model, await _reason(request), who)

    @app.post("/v2/models/{model}/experiment/rollback", responses=openapi.ERRORS | openapi.AUTH_ERRORS)
    async def rollback(self, model: str, request: Request) -> dict:
        who = _authorize(request, f"roll back {model}")
        return await self._experiment_store(model).rollback.remote(model, await _reason(request), who)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise PayloadTooLarge(f"the request body ({declared} bytes) exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return decode_content(b"".join(chunks), request.headers.get("content-encoding"), limit)

    @staticmethod
    def _ready(ready: bool) -> JSONResponse:
        # The protocol: 200 means ready, a 4xx means not ready.
        return JSONResponse({"ready": ready}, status_code=200 if ready else 400)

    # -- gRPC: inference.GRPCInferenceService, called by name through Serve's gRPC proxy ---------

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.dataplane.server_ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        # As Triton answers: a model or version not served here is simply not ready.
        try:
            return pb.ModelReadyResponse(ready=await self.dataplane.model_ready(request.name, request.version or None))
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, grpc_context: RayServegRPCContext):
        async def call():
            metadata = self.dataplane.model_metadata(request.name, request.version or None)
            return grpc_codec.model_metadata_to_proto(metadata)

        return await _grpc(call, pb.ModelMetadataResponse, grpc_context)

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context: RayServegRPCContext):
        async def call():
            if request.ByteSize() > self.settings.max_request_bytes:
                raise PayloadTooLarge(f"the request exceeds the limit of {self.settings.max_request_bytes} bytes")
            if not request.model_name:
                raise InvalidInput("'model_name' must be given")
            inference = grpc_codec.request_from_proto(request)
            metadata = dict(grpc_context.invocation_metadata())
            version = request.model_version or None
            response = await self._serve(request.model_name, version, inference, metadata.get(ROUTING_KEY_HEADER))
            return grpc_codec.response_to_proto(response)

        return await _grpc(call, pb.ModelInferResponse, grpc_context)
