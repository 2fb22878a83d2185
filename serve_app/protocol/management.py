"""What management calls check whichever way they come (REST or gRPC): the admin token, and the
parameters of Triton's load and unload."""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any

from serve_app.errors import Forbidden, InvalidInput, Unauthorized

logger = logging.getLogger("ray.serve")
ADMIN_TOKEN_ENV = "SERVE_APP_ADMIN_TOKEN"
LOAD_PARAMETERS = {"version"}
UNLOAD_PARAMETERS = {"version", "unload_dependents"}


def check_token(authorization: str | None, action: str, client: str) -> str:
    """A management call needs `Bearer <token>` (the HTTP header or the gRPC metadata
    `authorization`) with the token from the environment, compared in constant time; who it was."""
    expected = os.environ.get(ADMIN_TOKEN_ENV)
    if not expected:
        raise Forbidden(f"management is disabled: the server has no {ADMIN_TOKEN_ENV}")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        logger.warning("refused an unauthenticated request to %s from %s", action, client)
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header (gRPC: metadata) is required")
    return "ops"


def check_control_parameters(parameters: Any, allowed: set[str]) -> dict:
    """The parameters of a load or unload (Triton's); config and file overrides are refused: a
    version is changed on disk (serve-app register), not through the API."""
    if not isinstance(parameters, dict):
        raise InvalidInput("the body, if any, must be an object with a 'parameters' object")
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        raise InvalidInput(
            f"unsupported parameter(s) {unknown}: this server takes {sorted(allowed)}; "
            "add versions with serve-app register, not through the API"
        )
    version = parameters.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidInput(f"parameter 'version' must be a whole number >= 1, got {version!r}")
    return parameters
