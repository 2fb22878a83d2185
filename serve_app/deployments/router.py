"""The ingress: the Open Inference Protocol over HTTP, routed to model-version pipelines."""

import asyncio
import json
import logging

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from serve_app import __version__
from serve_app.errors import ServeAppError, as_client_error
from serve_app.protocol.dataplane import DataPlane, Endpoint
from serve_app.protocol.json_codec import parse_infer_request, render_infer_response
from serve_app.repository import ModelRepository, ModelVersion

logger = logging.getLogger("ray.serve")
READY_TIMEOUT_S = 5.0

app = FastAPI(
    title="serve-app",
    version=__version__,
    description="Open Inference Protocol (KServe V2) over HTTP.",
)


def _error(status: int, message: str) -> Response:
    # ASCII-escaped: a message may quote client text that is not valid UTF-8.
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


@app.exception_handler(ServeAppError)
async def _serve_app_error(_: Request, error: ServeAppError) -> Response:
    # A replica's error arrives as Ray's wrapper, which subclasses it but lacks its message.
    client_error = as_client_error(error)
    if client_error is None:
        return await _unexpected(_, error)
    return _error(client_error.http_status, client_error.message)


@app.exception_handler(BackPressureError)
@app.exception_handler(DeploymentUnavailableError)
async def _unavailable(_: Request, error: Exception) -> Response:
    return _error(503, f"the model is overloaded or unavailable, retry later ({type(error).__name__})")


@app.exception_handler(HTTPException)
async def _http_error(_: Request, error: HTTPException) -> Response:
    return _error(error.status_code, str(error.detail))


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> Response:
    return _error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))


@app.exception_handler(RayTaskError)
async def _replica_error(_: Request, error: RayTaskError) -> Response:
    client_error = as_client_error(error)
    if client_error is not None:
        return _error(client_error.http_status, client_error.message)
    return await _unexpected(_, error)


@app.exception_handler(Exception)
async def _unexpected(_: Request, error: Exception) -> Response:
    logger.exception("unexpected error while serving a request")
    return _error(500, f"internal error: {type(error).__name__}")


class HandleEndpoint(Endpoint):
    """A model version served by a Preprocessor deployment (optional) and a Model deployment."""

    def __init__(self, model: ModelVersion, preprocessor: DeploymentHandle | None, runner: DeploymentHandle):
        super().__init__(model)
        self.preprocessor = preprocessor
        self.model = runner

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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


@serve.deployment
@serve.ingress(app)
class Router:
    def __init__(self, repository: str, pipelines: list[dict]):
        """pipelines: one {"model", "version", "preprocessor", "runner"} per served version."""
        repo = ModelRepository(repository)
        endpoints = [
            HandleEndpoint(repo.version(p["model"], p["version"]), p["preprocessor"], p["runner"]) for p in pipelines
        ]
        self.configs = {e.name: repo.config(e.name) for e in endpoints}
        self.dataplane = DataPlane(endpoints, extensions=["model_configuration"])

    @app.get("/v2/health/live")
    async def live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready(self) -> JSONResponse:
        return self._ready(await self.dataplane.server_ready())

    @app.get("/v2")
    async def server_metadata(self) -> dict:
        return self.dataplane.server_metadata()

    @app.get("/v2/models/{model}")
    async def model_metadata(self, model: str) -> dict:
        return self.dataplane.model_metadata(model)

    @app.get("/v2/models/{model}/versions/{version}")
    async def version_metadata(self, model: str, version: str) -> dict:
        return self.dataplane.model_metadata(model, version)

    @app.get("/v2/models/{model}/config")
    async def model_config(self, model: str) -> dict:
        self.dataplane.endpoint(model)
        return self.configs[model].model_dump(mode="json")

    @app.get("/v2/models/{model}/ready")
    async def model_ready(self, model: str) -> JSONResponse:
        return self._ready(await self.dataplane.model_ready(model))

    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def version_ready(self, model: str, version: str) -> JSONResponse:
        return self._ready(await self.dataplane.model_ready(model, version))

    @app.post("/v2/models/{model}/infer")
    async def infer(self, model: str, request: Request) -> dict:
        return await self._infer(model, None, request)

    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def version_infer(self, model: str, version: str, request: Request) -> dict:
        return await self._infer(model, version, request)

    async def _infer(self, model: str, version: str | None, request: Request) -> dict:
        self.dataplane.endpoint(model, version)  # an unknown model is a 404 before the body is read
        inference = parse_infer_request(await request.body())
        return render_infer_response(await self.dataplane.infer(model, version, inference))

    @staticmethod
    def _ready(ready: bool) -> JSONResponse:
        # The protocol: 200 means ready, a 4xx means not ready.
        return JSONResponse({"ready": ready}, status_code=200 if ready else 400)
