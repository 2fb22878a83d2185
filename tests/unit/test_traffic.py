"""The router's per-request bookkeeping without Ray: routes, the event queue, the shadow queue."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.config import TrafficSettings
from serve_app.errors import InvalidInput
from serve_app.experiments.traffic import DIRECT, TrafficController
from serve_app.protocol.messages import InferenceRequest
from serve_app.shadow.mirror import ShadowQueue, chunks_by_rows


def _request(rows: int = 1, request_id: str | None = None) -> InferenceRequest:
    return InferenceRequest(inputs={"x": np.zeros((rows, 2), np.float32)}, id=request_id)


def test_routes_give_ids_and_follow_the_policy():
    controller = TrafficController()
    controller.set_traffic(
        "m", TrafficSettings(champion=1, challenger=2, challenger_weight=1.0, shadows=[3], shadow_fraction=1.0)
    )
    request = _request(request_id="")
    route = controller.route("m", None, request, None)
    assert request.id and (route.version, route.arm, route.shadows) == ("2", "challenger", (3,))
    assert controller.route("m", "1", _request(), None).arm == DIRECT
    assert controller.route("other", None, _request(), None).arm == DIRECT


def test_a_request_id_past_the_limit_is_refused_before_it_is_kept():
    controller = TrafficController()
    with pytest.raises(InvalidInput, match="'id' must be at most 256 characters, got 10000"):
        controller.route("m", None, _request(request_id="x" * 10_000), None)
    assert controller.route("m", None, _request(request_id="x" * 256), None).arm == DIRECT


def test_events_are_queued_bounded_and_requeued_in_order():
    controller = TrafficController(max_pending_events=3)
    controller.set_traffic("m", TrafficSettings(champion=1))
    for i in range(4):
        controller.record("m", 1, "champion", _request(request_id=f"r{i}"), None, 1.0, "ok")
    assert controller.events_dropped == 1
    events = controller.drain_events()
    assert [e.request_id for e in events] == ["r1", "r2", "r3"] and controller.drain_events() == []
    controller.requeue(events)
    assert [e.request_id for e in controller.drain_events()] == ["r1", "r2", "r3"]
    controller.record("m", 1, "shadow", _request(), None, 1.0, "ok")
    assert controller.drain_events() == []  # shadows are not experiment events


def test_shadow_queue_groups_by_version_and_is_bounded():
    queue = ShadowQueue(max_pending=3)
    for version, score in ((2, 0.1), (2, 0.9), (3, None), (3, 0.5)):
        queue.add("m", version, _request(), None if score is None else np.array([score]))
    assert queue.skipped == 1
    taken = queue.take()
    assert {key: len(requests) for key, requests in taken.items()} == {("m", 2): 2, ("m", 3): 1}
    assert [scores.tolist() for _, scores in taken["m", 2]] == [[0.1], [0.9]]  # production's, to compare with
    assert queue.take() == {}


def test_shadow_chunks_respect_the_rows_a_version_takes():
    mirrored = [(_request(rows), 0.5) for rows in (3, 3, 2, 5, 1)]
    chunks = chunks_by_rows(mirrored, max_rows=6)
    assert [[r.inputs["x"].shape[0] for r, _ in chunk] for chunk in chunks] == [[3, 3], [2], [5, 1]]
