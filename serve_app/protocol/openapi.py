"""Schemas of the REST API, for /openapi.json only: requests are parsed by rest.py, not by these."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from serve_app.config import Datatype


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: int | None = Field(None, ge=0, description="Bytes of this tensor after the JSON header.")
    binary_data: bool | None = Field(None, description="Send this output as raw bytes after the JSON header.")
    binary_data_output: bool | None = Field(None, description="Send every output as raw bytes.")
    timeout: int | None = Field(None, gt=0, description="Give up after this many microseconds (504).")


class RequestInput(_Schema):
    name: str = Field(min_length=1)
    shape: list[int] = Field(description="Full shape, batch first.", json_schema_extra={"items": {"minimum": 0}})
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="Row-major values, flat or nested; absent for binary inputs.")


class RequestOutput(_Schema):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Schema):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Schema):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(_Schema):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class Error(_Schema):
    error: str = Field(description="What was wrong, naming the field.")


class Live(_Schema):
    live: bool


class Ready(_Schema):
    ready: bool


class StorageHealth(_Schema):
    written: int
    buffered: int = Field(description="Rows waiting in memory for storage.")
    dropped: int = Field(description="Rows given up while storage was away (the buffer is bounded).")
    failures: int
    failing: bool = Field(description="Whether the latest write failed.")
    last_error_type: str | None = None


class MergeHealth(_Schema):
    requests: int
    calls: int
    retried_singly: int
    largest: int
    requests_per_call: dict[str, int] = Field(description="Calls by the number of requests merged into each.")
    queued_ns: int = Field(description="Time requests waited for a call, summed.")


class ParsingHealth(_Schema):
    max_bytes: int = Field(description="max_parsing_bytes: request bodies this replica parses at once.")
    in_use: int
    peak: int = Field(description="The most bytes of bodies parsed at once since the replica started.")
    refused: int = Field(description="Requests answered 503 because the budget was in use.")


class Health(_Schema):
    status: Literal["ok", "degraded"]
    storage: StorageHealth | None = Field(description="The prediction log; null without a storage URI.")
    drift_shipping_failures: int
    shadow_failures: int
    experiment_events_pending: int
    experiment_events_dropped: int
    merging: dict[str, MergeHealth] = Field(
        description="Batching before the hop, per model version (<model>-v<version>): requests, calls made "
        "for them, requests sent again alone after a merged call failed, most requests in one call."
    )
    body_parsing: ParsingHealth


class ServerMetadata(_Schema):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Schema):
    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(_Schema):
    name: str
    versions: list[str]
    platform: Literal["onnxruntime_onnx", "pytorch_libtorch"]
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str] = {}
    """serve-app's extension: the version's precision (fp32, fp16, int8)."""


class StatisticDuration(_Schema):
    count: int
    ns: int = Field(description="Nanoseconds, summed over the count.")


class InferStatistics(_Schema):
    success: StatisticDuration
    fail: StatisticDuration
    queue: StatisticDuration
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration
    cache_hit: StatisticDuration
    cache_miss: StatisticDuration


class BatchStatistics(_Schema):
    batch_size: int = Field(description="Rows in the execution.")
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


class ModelStatistics(_Schema):
    name: str
    version: str
    last_inference: int = Field(description="Milliseconds since the epoch; 0: never.")
    inference_count: int = Field(description="Rows answered.")
    execution_count: int = Field(description="Model executions: inference_count / execution_count is the batch size.")
    inference_stats: InferStatistics
    batch_stats: list[BatchStatistics]


class Statistics(_Schema):
    """Triton's statistics extension, summed over every replica of the application."""

    model_stats: list[ModelStatistics]


ERRORS = {status: {"model": Error} for status in (400, 404, 413, 422, 503, 504)}
AUTH_ERRORS = {status: {"model": Error} for status in (401, 403)}
CONTROL_ERRORS = {status: {"model": Error} for status in (400, 401, 403, 404, 409, 413)}
REF_TEMPLATE = "#/components/schemas/{model}"


def infer_request_body() -> dict:
    """The infer routes read the body themselves (JSON, or JSON + binary): describe it here."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="InferenceRequest")}},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "A JSON header of Inference-Header-Content-Length bytes, then raw tensors.",
                },
            },
        }
    }


INFER_ROUTE = {"response_model": InferenceResponse, "responses": ERRORS, "openapi_extra": infer_request_body()}
"""What both infer routes declare."""


def request_components() -> dict:
    """Component schemas of the request body, for the routes that describe it by hand."""
    schema = InferenceRequest.model_json_schema(ref_template=REF_TEMPLATE)
    return {**schema.pop("$defs", {}), "InferenceRequest": schema}


def describe_requests(app: FastAPI) -> None:
    """/openapi.json with the request schemas that the infer routes' hand-written bodies refer to."""

    def schema() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            document.setdefault("components", {}).setdefault("schemas", {}).update(request_components())
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema
