"""What the REST routes share, without a server: the parsing budget and a body's size."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from serve_app.errors import Unavailable
from serve_app.protocol.http import ParsingBudget, body_size


def _request(**headers: str) -> Request:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_bodies_past_the_budget_are_refused_while_others_parse_and_one_alone_always_passes():
    budget = ParsingBudget(max_bytes=100)
    with (
        budget.reserve(60),
        budget.reserve(40),
        pytest.raises(Unavailable, match="100 bytes of request bodies are being parsed"),
        budget.reserve(1),
    ):
        pass
    assert budget.stats() == {"max_bytes": 100, "in_use": 0, "peak": 100, "refused": 1}
    with budget.reserve(1_000):  # larger than the budget, but alone: it passes (the body limit bounds it)
        pass
    assert budget.in_use == 0 and budget.peak == 1_000


def test_a_body_counts_as_declared_or_as_the_limit_when_it_cannot_tell():
    assert body_size(_request(content_length="1234"), limit=10_000) == 1234
    assert body_size(_request(content_length="99999"), limit=10_000) == 10_000
    assert body_size(_request(), limit=10_000) == 10_000  # chunked
    assert body_size(_request(content_length="12", content_encoding="gzip"), limit=10_000) == 10_000
