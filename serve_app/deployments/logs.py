"""Replica logging on top of Serve's."""

from __future__ import annotations

import logging
import logging.handlers


def warnings_at_once() -> None:
    """Write WARNING lines (refused tokens, failing models, storage trouble) at once.

    Serve's throughput mode (RAY_SERVE_ENV) buffers 1,000 request-path log lines per replica and
    writes early only for ERROR, so on a quiet server a warning could wait for hours."""
    for handler in logging.getLogger("ray.serve").handlers:
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.flushLevel = min(handler.flushLevel, logging.WARNING)
