"""What the REST routes share: bodies read within the limit, the management token and parameters
read from HTTP, and every error answered as the protocol's `{"error": ...}`."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from serve_app.errors import InvalidInput, PayloadTooLarge, ServeAppError, Unavailable
from serve_app.protocol.management import check_control_parameters, check_token
from serve_app.protocol.rest import decode_content, parse_json_body

logger = logging.getLogger("ray.serve")
HEADER_LENGTH = "inference-header-content-length"


def error_response(status: int, message: str) -> Response:
    # ASCII-escaped: a message may quote client text that is not valid UTF-8.
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def change_answer(document: dict) -> JSONResponse:
    """A management call's answer: 200 once the change serves, 202 while it is still starting."""
    return JSONResponse(document, status_code=200 if document["state"] == "READY" else 202)


def ready_response(ready: bool) -> JSONResponse:
    # The protocol: 200 means ready, a 4xx means not ready.
    return JSONResponse({"ready": ready}, status_code=200 if ready else 400)


def answer_errors(
    app: FastAPI,
    client_error_of: Callable[[BaseException], ServeAppError | None],
    also: tuple[type[BaseException], ...] = (),
) -> None:
    """Every exception becomes `{"error": ...}`: a client's mistake with its 4xx (or an overload with
    503), anything else a logged 500 that names only the exception's type. also: the exception types
    client_error_of knows beyond ServeAppError (a runtime's own)."""

    async def unexpected(_: Request, error: Exception) -> Response:
        logger.exception("unexpected error while serving a request")
        return error_response(500, f"internal error: {type(error).__name__}")

    async def client_error(request: Request, error: Exception) -> Response:
        known = client_error_of(error)
        if known is None:
            return await unexpected(request, error)
        return error_response(known.http_status, known.message)

    async def http_error(_: Request, error: HTTPException) -> Response:
        return error_response(error.status_code, str(error.detail))

    async def validation_error(_: Request, error: RequestValidationError) -> Response:
        return error_response(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))

    for kind in (ServeAppError, *also):
        app.add_exception_handler(kind, client_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


class ParsingBudget:
    """The bytes of request bodies being read and parsed in this replica: a JSON body becomes several
    times its size in Python objects, so a flood of large bodies is refused, not parsed at once."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.in_use = 0
        self.peak = 0
        self.refused = 0

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        if self.in_use and self.in_use + size > self.max_bytes:
            self.refused += 1
            raise Unavailable(
                f"{self.in_use} bytes of request bodies are being parsed here and this one declares {size}: "
                f"past the limit of {self.max_bytes} bytes, retry later"
            )
        self.in_use += size
        self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            self.in_use -= size

    def stats(self) -> dict:
        return {"max_bytes": self.max_bytes, "in_use": self.in_use, "peak": self.peak, "refused": self.refused}


def body_size(request: Request, limit: int) -> int:
    """What a body will take to parse, as far as its headers tell: its declared length, or the limit
    when it is chunked (no length) or compressed."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit() or request.headers.get("content-encoding", "identity") != "identity":
        return limit
    return min(int(declared), limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, decompressed, refused with 413 as soon as it passes limit bytes."""
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


def header_length(request: Request) -> int | None:
    """Triton's Inference-Header-Content-Length: the JSON part of a body with binary tensors."""
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length must be a whole number of bytes, got '{value}'")
    return int(value)


def authorize(request: Request, action: str) -> str:
    """Management calls need the bearer token from the environment."""
    client = request.client.host if request.client else "unknown"
    return check_token(request.headers.get("authorization"), action, client)


def reason(body: bytes) -> str:
    """The `reason` of a promote or rollback body, if it gives one."""
    if not body:
        return "requested by ops"
    document = parse_json_body(body)
    if not isinstance(document, dict) or not isinstance(document.get("reason", ""), str):
        raise InvalidInput("the body, if any, must be an object with a 'reason' string")
    return document.get("reason") or "requested by ops"


def control_parameters(body: bytes, allowed: set[str]) -> dict:
    """The `parameters` object of a load/unload body (Triton's shape)."""
    document = parse_json_body(body) if body else {}
    parameters = document.get("parameters", {}) if isinstance(document, dict) else None
    if isinstance(document, dict) and set(document) - {"parameters"}:
        parameters = None
    return check_control_parameters(parameters, allowed)


def choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """A query parameter that takes one of a few words."""
    if value not in allowed:
        raise InvalidInput(f"query parameter '{name}' must be one of {list(allowed)}, got {value!r}")
    return value


def index_filter(body: bytes) -> bool:
    """The repository index body: an optional boolean `ready` (only the served versions)."""
    document = parse_json_body(body) if body else {}
    if not isinstance(document, dict) or set(document) - {"ready"} or document.get("ready", False) not in (True, False):
        raise InvalidInput("the body, if any, must be an object with an optional boolean 'ready'")
    return bool(document.get("ready"))


def traffic_body(body: bytes) -> dict:
    traffic = parse_json_body(body)
    if not isinstance(traffic, dict):
        raise InvalidInput("the body must be an object: champion, challenger, challenger_weight, shadows, ...")
    return traffic


def feedback_body(body: bytes) -> dict:
    document = parse_json_body(body)
    if not isinstance(document, dict) or set(document) - {"id", "reward", "label"}:
        raise InvalidInput("feedback must be an object with 'id' and one of 'reward' or 'label'")
    return document
