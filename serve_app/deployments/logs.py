"""Replica logging on top of Serve's."""

from __future__ import annotations

import logging
import logging.handlers


def replica_logging() -> None:
    """Called first in every replica: the library's loggers (`serve_app.*`: which device and
    providers a model runs on, storage trouble) write to Serve's replica log like the deployments'
    own, and WARNING lines (refused tokens, failing models, storage trouble) are written at once.

    Serve's throughput mode (RAY_SERVE_ENV) buffers 1,000 request-path log lines per replica and
    writes early only for ERROR, so on a quiet server a warning could wait for hours."""
    serve_logger = logging.getLogger("ray.serve")
    for handler in serve_logger.handlers:
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.flushLevel = min(handler.flushLevel, logging.WARNING)
    library = logging.getLogger("serve_app")
    library.handlers = list(serve_logger.handlers)
    library.setLevel(logging.INFO)
    library.propagate = False


def flush_replica_log() -> None:
    """Write what is buffered now: a replica's start-up lines (device, providers) are few and are
    what ops look for first, so they should not wait for 1,000 request lines."""
    for handler in logging.getLogger("ray.serve").handlers:
        handler.flush()
