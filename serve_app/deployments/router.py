"""The ingress: the Open Inference Protocol over HTTP (FastAPI) and gRPC (Serve's gRPC proxy),
both thin layers over one DataPlane, routed to model-version pipelines."""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from serve_app import __version__
from serve_app.config import GraphArgs
from serve_app.errors import InvalidInput, ModelNotFound, PayloadTooLarge, ServeAppError, Unavailable, as_client_error
from serve_app.protocol import grpc_codec, openapi
from serve_app.protocol.dataplane import DataPlane, Endpoint
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.rest import binary_outputs, decode_content, parse_infer_request, render_infer_response
from serve_app.repository import ModelRepository, ModelVersion

logger = logging.getLogger("ray.serve")
READY_TIMEOUT_S = 5.0
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
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
    if isinstance(error, (BackPressureError, DeploymentUnavailableError)):
        return Unavailable(f"the model is overloaded or unavailable, retry later ({type(error).__name__})")
    return as_client_error(error)


@app.exception_handler(ServeAppError)
@app.exception_handler(RayTaskError)
@app.exception_handler(BackPressureError)
@app.exception_handler(DeploymentUnavailableError)
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


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length must be a whole number of bytes, got '{value}'")
    return int(value)


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
    def __init__(self, settings: dict, pipelines: list[dict]):
        """pipelines: one {"model", "version", "preprocessor", "runner"} per served version."""
        self.settings = GraphArgs.model_validate(settings)
        repo = ModelRepository(self.settings.repository)
        endpoints = [
            HandleEndpoint(repo.version(p["model"], p["version"]), p["preprocessor"], p["runner"]) for p in pipelines
        ]
        self.configs = {e.name: repo.config(e.name) for e in endpoints}
        self.dataplane = DataPlane(endpoints, extensions=EXTENSIONS)

    # -- REST --------------------------------------------------------------------------

    @app.get("/v2/health/live", response_model=openapi.Live)
    async def live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", response_model=openapi.Ready, responses={400: {"model": openapi.Ready}})
    async def ready(self) -> JSONResponse:
        return self._ready(await self.dataplane.server_ready())

    @app.get("/v2", response_model=openapi.ServerMetadata)
    async def server_metadata(self) -> dict:
        return self.dataplane.server_metadata()

    @app.get("/v2/models/{model}", response_model=openapi.ModelMetadata, responses=openapi.ERRORS)
    async def model_metadata(self, model: str) -> dict:
        return self.dataplane.model_metadata(model)

    @app.get("/v2/models/{model}/versions/{version}", response_model=openapi.ModelMetadata, responses=openapi.ERRORS)
    async def version_metadata(self, model: str, version: str) -> dict:
        return self.dataplane.model_metadata(model, version)

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
        response = await self.dataplane.infer(model, version, inference)
        content, header_length = render_infer_response(response, binary_outputs(inference, list(response.outputs)))
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})

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
            response = await self.dataplane.infer(request.model_name, request.model_version or None, inference)
            return grpc_codec.response_to_proto(response)

        return await _grpc(call, pb.ModelInferResponse, grpc_context)
