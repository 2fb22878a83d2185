"""One exception hierarchy for the whole project.

Each class declares the HTTP status and the gRPC status code a client gets for it.
Every exception takes a single message string so that it survives being pickled
across Ray process boundaries unchanged.
"""

from __future__ import annotations


class ServeAppError(Exception):
    """Base class. Unexpected failures (bugs) are not ServeAppErrors and map to 500."""

    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))


class InvalidInput(ServeAppError):
    """The request is malformed or does not match the model's declared inputs."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class Unauthorized(ServeAppError):
    """A management call without the right bearer token."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class Forbidden(ServeAppError):
    """A management call while management is switched off (no token configured)."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class ModelNotFound(ServeAppError):
    """The model, or the version of it, is not served here."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Conflict(ServeAppError):
    """The request is well-formed but would break what is serving (e.g. unload the only version)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class PayloadTooLarge(ServeAppError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnprocessableInput(ServeAppError):
    """Well-formed, but the values cannot be scored (for example NaN in a feature)."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"


class Overloaded(ServeAppError):
    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(ServeAppError):
    http_status = 503
    grpc_code = "UNAVAILABLE"


class DeadlineExceeded(ServeAppError):
    """The request's own timeout (parameters.timeout) ran out before the model answered."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class RepositoryError(ServeAppError):
    """The model repository on disk is broken; raised at start, naming the file and field."""


def as_client_error(error: BaseException | None) -> ServeAppError | None:
    """The ServeAppError behind an exception, looking through Ray's task-error wrapper.

    Ray re-raises a replica's exception as a RayTaskError that also subclasses the original
    class but lacks its attributes; the original is its `cause`.
    """
    for _ in range(5):
        if error is None:
            return None
        cause = getattr(error, "cause", None)
        if isinstance(cause, ServeAppError):
            return cause
        if isinstance(error, ServeAppError) and "message" in vars(error):
            return error
        error = cause or error.__cause__
    return None
