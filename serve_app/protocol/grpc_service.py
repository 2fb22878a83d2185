"""The protocol's GRPCInferenceService over a Gateway, with Triton's model configuration,
statistics and model repository extensions: the ingress's gRPC methods call these. A client's
mistake becomes its gRPC status and message, never a traceback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serve_app.errors import Forbidden, InvalidInput, ModelNotFound, PayloadTooLarge, ServeAppError, Unavailable
from serve_app.experiments.traffic import ROUTING_KEY_HEADER
from serve_app.gateway import Gateway
from serve_app.protocol import grpc_codec
from serve_app.protocol.extensions import TritonExtensions
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.management import LOAD_PARAMETERS, UNLOAD_PARAMETERS, check_control_parameters, check_token

Control = Callable[[str, "int | None", str], Awaitable[dict]]
"""A load or unload: (model, version or None, who) -> the redeploy's answer (its state)."""


class InferenceService:
    """context: grpc's ServicerContext (set_code, set_details, invocation_metadata)."""

    def __init__(
        self,
        gateway: Gateway,
        client_error_of: Callable[[BaseException], ServeAppError | None],
        load: Control | None = None,
        unload: Control | None = None,
    ):
        """load, unload: the repository extension's changes (None: refused, as without a token)."""
        self.gateway = gateway
        self.extensions = TritonExtensions(gateway)
        self.client_error_of = client_error_of
        self.load = load
        self.unload = unload

    async def server_live(self) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.gateway.dataplane.server_ready())

    async def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.gateway.dataplane.server_metadata())

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        # As Triton answers: a model or version not served here is simply not ready.
        try:
            ready = await self.gateway.dataplane.model_ready(request.name, request.version or None)
        except ModelNotFound:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def call():
            metadata = self.gateway.dataplane.model_metadata(request.name, request.version or None)
            return grpc_codec.model_metadata_to_proto(metadata)

        return await self._answered(call, pb.ModelMetadataResponse, context)

    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        async def call():
            limit = self.gateway.settings.max_request_bytes
            if request.ByteSize() > limit:
                raise PayloadTooLarge(f"the request exceeds the limit of {limit} bytes")
            if not request.model_name:
                raise InvalidInput("'model_name' must be given")
            inference = grpc_codec.request_from_proto(request)
            routing_key = dict(context.invocation_metadata()).get(ROUTING_KEY_HEADER)
            version = request.model_version or None
            response = await self.gateway.serve(request.model_name, version, inference, routing_key)
            return grpc_codec.response_to_proto(response)

        return await self._answered(call, pb.ModelInferResponse, context)

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        async def call():
            config = self.extensions.model_config(request.name, request.version or None)
            return pb.ModelConfigResponse(config=grpc_codec.from_json(config, pb.ModelConfig))

        return await self._answered(call, pb.ModelConfigResponse, context)

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        async def call():
            statistics = await self.extensions.statistics(request.name or None, request.version or None)
            return grpc_codec.from_json(statistics, pb.ModelStatisticsResponse)

        return await self._answered(call, pb.ModelStatisticsResponse, context)

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        async def call():
            entries = self.extensions.repository_index(request.ready)
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries])

        return await self._answered(call, pb.RepositoryIndexResponse, context)

    async def repository_model_load(self, request: pb.RepositoryModelLoadRequest, context: Any):
        async def call():
            await self._control(self.load, "load", request, LOAD_PARAMETERS, context)
            return pb.RepositoryModelLoadResponse()

        return await self._answered(call, pb.RepositoryModelLoadResponse, context)

    async def repository_model_unload(self, request: pb.RepositoryModelUnloadRequest, context: Any):
        async def call():
            await self._control(self.unload, "unload", request, UNLOAD_PARAMETERS, context)
            return pb.RepositoryModelUnloadResponse()

        return await self._answered(call, pb.RepositoryModelUnloadResponse, context)

    async def _control(self, control: Control | None, verb: str, request: Any, allowed: set[str], context: Any):
        """As Triton's: OK once the change serves; the token comes in the `authorization` metadata."""
        authorization = dict(context.invocation_metadata()).get("authorization")
        who = check_token(authorization, f"{verb} {request.model_name}", context.peer())
        if control is None:
            raise Forbidden(f"{verb}: this server does not change its models")
        parameters = check_control_parameters(grpc_codec.parameters_from_proto(request.parameters), allowed)
        answer = await control(request.model_name, parameters.get("version"), who)
        if answer["state"] != "READY":
            raise Unavailable(
                f"{answer['action']}: applied (config version {answer.get('config_version')}), but the new graph "
                "is still starting; RepositoryIndex tells when it serves"
            )

    async def _answered(self, call: Callable[[], Awaitable], empty: type, context: Any):
        try:
            return await call()
        except Exception as error:
            client_error = self.client_error_of(error)
            if client_error is None:
                raise
            context.set_code(getattr(grpc.StatusCode, client_error.grpc_code))
            context.set_details(client_error.message)
            return empty()
