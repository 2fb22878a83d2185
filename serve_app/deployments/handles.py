"""Ray handles behind the Gateway's ports: a model version's pipeline as an Endpoint, and any
deployment as an object of plain awaitable methods. Ray's errors become serve-app's here."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.config import GraphArgs
from serve_app.deployments.metrics import ModelMetrics
from serve_app.errors import ServeAppError, Unavailable, as_client_error
from serve_app.messages import Pipeline
from serve_app.protocol.dataplane import Endpoint
from serve_app.repository import ModelRepository, ModelVersion
from serve_app.runtime import load_runner
from serve_app.runtime.in_process import InProcessEndpoint
from serve_app.runtime.merging import QueueFull, RequestMerger
from serve_app.statistics import Duration, StatisticsRecorder

logger = logging.getLogger("ray.serve")
READY_TIMEOUT_S = 5.0
REPLICA_LOST_RETRIES = 2
"""Times a request is sent again when the replica scoring it died (scoring has no side effects)."""
RAY_ERRORS = (RayTaskError, BackPressureError, DeploymentUnavailableError, RayActorError)
"""Ray's exceptions that client_error_of reads (a replica's own error travels inside RayTaskError)."""


def client_error_of(error: BaseException) -> ServeAppError | None:
    """What a client is told about an exception; None for a bug (500)."""
    if isinstance(error, (BackPressureError, DeploymentUnavailableError, RayActorError)):
        return Unavailable(f"the model is overloaded or unavailable, retry later ({type(error).__name__})")
    return as_client_error(error)


class DeploymentClient:
    """A deployment's methods as plain awaitables (`await client.summary(model)`), so the Gateway
    and its unit tests never see a handle."""

    def __init__(self, handle: DeploymentHandle):
        self._handle = handle

    def __getattr__(self, method: str):
        remote = getattr(self._handle, method).remote
        return lambda *args, **kwargs: remote(*args, **kwargs)


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
        if merge_calls is not None:
            max_rows = model.config.dynamic_batching.max_batch_size
            shed = lambda error: isinstance(error, QueueFull)  # noqa: E731
            self.merger = RequestMerger(self._call_with_retries, max_rows, merge_calls, max_queued, is_shed=shed)

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.merger is None:
            return await self._call_with_retries(inputs)
        return await self.merger.infer(inputs)

    async def _call_with_retries(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for attempt in range(REPLICA_LOST_RETRIES + 1):
            try:
                return await self._call(inputs)
            except BackPressureError as error:  # the version's queue is full: shed, as the merger's is
                raise QueueFull(str(error)) from None
            except RayActorError as error:  # killed or its node lost; Serve routes the retry to a live one
                if attempt == REPLICA_LOST_RETRIES:
                    raise client_error_of(error) from error
                logger.warning("%s v%s: a replica died mid-request, again: %r", self.name, self.version, error)
            except DeploymentUnavailableError as error:
                raise client_error_of(error) from error
        raise AssertionError("the last attempt returns or raises")

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

    async def describe(self) -> dict | None:
        return await self.model.describe.remote()

    async def batch_stats(self) -> dict | None:
        return await self.model.batch_stats.remote()


def pipeline_endpoints(settings: GraphArgs, pipelines: list[Pipeline], recorder: StatisticsRecorder) -> list[Endpoint]:
    """One endpoint per served version, merging before the hop unless the graph turned it off; a
    version without a runner deployment is loaded here, in the router's process (and counts its
    executions in `recorder`)."""
    repository = ModelRepository(settings.repository)
    queued = None if settings.max_queued_requests < 0 else settings.max_queued_requests
    endpoints: list[Endpoint] = []
    for pipeline in pipelines:
        version = repository.version(pipeline.model, pipeline.version)
        if pipeline.runner is None:
            runner = load_runner(version.config, version.model_file, version.precision, gpus_given=0)
            metrics = ModelMetrics(version.name, version.version)
            endpoints.append(InProcessEndpoint(version, runner, settings.merge_before_hop, queued, metrics, recorder))
        else:
            merge_calls = None
            if settings.merge_before_hop:
                merge_calls = settings.merge_calls_per_replica * version.config.instances.num_replicas
            endpoints.append(HandleEndpoint(version, pipeline.preprocessor, pipeline.runner, merge_calls, queued))
        if (merger := endpoints[-1].merger) is not None:
            waited = lambda stats=merger.stats: Duration(stats.requests, stats.queued_ns)  # noqa: E731
            recorder.count_waiting(version.name, version.version, waited)
    return endpoints
