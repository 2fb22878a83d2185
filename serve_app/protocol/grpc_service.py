"""The protocol's GRPCInferenceService over a Gateway: the ingress's gRPC methods call these.
A client's mistake becomes its gRPC status and message, never a traceback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serve_app.errors import InvalidInput, ModelNotFound, PayloadTooLarge, ServeAppError
from serve_app.experiments.traffic import ROUTING_KEY_HEADER
from serve_app.gateway import Gateway
from serve_app.protocol import grpc_codec
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb


class InferenceService:
    """context: grpc's ServicerContext (set_code, set_details, invocation_metadata)."""

    def __init__(self, gateway: Gateway, client_error_of: Callable[[BaseException], ServeAppError | None]):
        self.gateway = gateway
        self.client_error_of = client_error_of

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
