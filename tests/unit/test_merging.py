"""Batching before the hop (serve_app/runtime/merging.py), against a model call that the test holds
open: requests that arrive while calls are in flight go in one call; each keeps its own answer and
error; callers that gave up are dropped. No Ray, no clock: the test decides when a call returns."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.errors import InvalidInput, Unavailable
from serve_app.runtime.merging import QueueFull, RequestMerger


class HeldModel:
    """A model call that returns when the test releases it, recording what each call carried."""

    def __init__(self):
        self.calls: list[dict[str, np.ndarray]] = []
        self.release = asyncio.Event()
        self.fail_when = lambda inputs: None

    async def __call__(self, inputs):
        self.calls.append(inputs)
        await self.release.wait()
        if (error := self.fail_when(inputs)) is not None:
            raise error
        return {"score": inputs["x"].sum(axis=1) * 10, "echo": inputs["x"]}


def request(*values, dtype=np.float32) -> dict[str, np.ndarray]:
    return {"x": np.array([[v, v] for v in values], dtype=dtype)}


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def run(test):
    return asyncio.run(test())


def test_idle_requests_go_alone_and_those_arriving_meanwhile_share_one_call():
    async def test():
        model = HeldModel()
        merger = RequestMerger(model, max_rows=32, max_in_flight=1)
        first = asyncio.create_task(merger.infer(request(1)))
        await settle()
        waiting = [asyncio.create_task(merger.infer(request(v, v))) for v in (2, 3, 4)]
        await settle()
        assert len(model.calls) == 1  # the others wait for the slot
        model.release.set()
        answers = await asyncio.gather(first, *waiting)
        assert [len(c["x"]) for c in model.calls] == [1, 6]  # one call for the three, rows concatenated
        np.testing.assert_array_equal(answers[0]["score"], [20])
        for answer, value in zip(answers[1:], (2, 3, 4)):
            np.testing.assert_array_equal(answer["score"], [20 * value, 20 * value])
            assert answer["echo"].shape == (2, 2)
        expected = {"requests": 4, "calls": 2, "retried_singly": 0, "largest": 3, "requests_per_call": {"1": 1, "3": 1}}
        assert merger.stats.as_dict() | {"queued_ns": 0} == expected | {"queued_ns": 0}
        assert merger.stats.queued_ns > 0  # the three waited for the first call

    run(test)


def test_a_merged_call_holds_at_most_max_rows_and_only_requests_that_fit_together():
    async def test():
        model = HeldModel()
        merger = RequestMerger(model, max_rows=4, max_in_flight=1)
        tasks = [asyncio.create_task(merger.infer(request(0)))]
        await settle()
        tasks += [asyncio.create_task(merger.infer(r)) for r in (request(1, 1, 1), request(2), request(3, 3))]
        tasks.append(asyncio.create_task(merger.infer(request(4, dtype=np.float64))))  # another dtype
        await settle()
        model.release.set()
        await asyncio.gather(*tasks)
        rows_and_dtypes = [(len(c["x"]), c["x"].dtype.name) for c in model.calls]
        # 3 + 1 rows fill the second call; the 2-row request waits; the float64 one never joins float32.
        assert rows_and_dtypes == [(1, "float32"), (4, "float32"), (2, "float32"), (1, "float64")]

    run(test)


def test_one_bad_request_fails_alone_and_the_others_are_answered():
    async def test():
        model = HeldModel()
        model.fail_when = lambda inputs: InvalidInput("a NaN") if np.isnan(inputs["x"]).any() else None
        merger = RequestMerger(model, max_rows=32, max_in_flight=1)
        first = asyncio.create_task(merger.infer(request(1)))
        await settle()
        tasks = [asyncio.create_task(merger.infer(request(v))) for v in (2, np.nan, 3)]
        await settle()
        model.release.set()
        answers = await asyncio.gather(first, *tasks, return_exceptions=True)
        assert isinstance(answers[2], InvalidInput) and answers[2].message == "a NaN"
        np.testing.assert_array_equal(answers[1]["score"], [40])
        np.testing.assert_array_equal(answers[3]["score"], [60])
        assert [len(c["x"]) for c in model.calls] == [1, 3, 1, 1, 1]  # the merged call, then one by one
        assert merger.stats.retried_singly == 3

    run(test)


def test_a_shed_call_is_not_retried_request_by_request():
    async def test():
        model = HeldModel()
        merger = RequestMerger(model, max_rows=32, max_in_flight=1, is_shed=lambda e: isinstance(e, Unavailable))
        first = asyncio.create_task(merger.infer(request(1)))
        await settle()
        model.fail_when = lambda inputs: Unavailable("overloaded")
        tasks = [asyncio.create_task(merger.infer(request(v))) for v in (2, 3)]
        await settle()
        model.release.set()
        answers = await asyncio.gather(first, *tasks, return_exceptions=True)
        assert all(isinstance(a, Unavailable) for a in answers[1:]) and len(model.calls) == 2

    run(test)


def test_a_caller_that_gave_up_is_dropped_and_the_queue_keeps_moving():
    async def test():
        model = HeldModel()
        merger = RequestMerger(model, max_rows=32, max_in_flight=1)
        first = asyncio.create_task(merger.infer(request(1)))
        await settle()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(merger.infer(request(2)), 0)  # its own timeout, already out
        later = asyncio.create_task(merger.infer(request(3)))
        await settle()
        model.release.set()
        await asyncio.gather(first, later)
        assert [c["x"][:, 0].tolist() for c in model.calls] == [[1.0], [3.0]]  # request 2 never left

    run(test)


def test_calls_in_flight_are_capped_and_each_free_slot_takes_the_queue():
    async def test():
        model = HeldModel()
        merger = RequestMerger(model, max_rows=32, max_in_flight=2)
        tasks = [asyncio.create_task(merger.infer(request(v))) for v in range(6)]
        await settle()
        assert len(model.calls) == 2  # two slots, the other four wait
        model.release.set()
        await asyncio.gather(*tasks)
        assert [len(c["x"]) for c in model.calls] == [1, 1, 4]

    run(test)


def test_past_max_queued_a_request_is_refused_at_once_not_held():
    async def test():
        model = HeldModel()
        merger = RequestMerger(model, max_rows=32, max_in_flight=1, max_queued=2)
        tasks = [asyncio.create_task(merger.infer(request(v))) for v in range(3)]  # one in flight, two queued
        await settle()
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            await merger.infer(request(9))
        tasks[1].cancel()  # a caller gives up: its place is free again
        await settle()
        tasks.append(asyncio.create_task(merger.infer(request(4))))
        await settle()
        model.release.set()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(answers[1], asyncio.CancelledError) and len(model.calls) == 2
        np.testing.assert_array_equal(answers[3]["score"], [80])

    run(test)
