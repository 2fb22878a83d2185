"""A control call (load, unload, traffic) answers by its deadline, counted from its start: a
redeploy whose steps hang or run late answers 202's LOADING instead of outliving the proxy's
timeout. Serve's parts are replaced by fakes here; tests/serve/test_model_control.py runs the real
ones on a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace

import pytest

from serve_app.deployments import redeploy
from serve_app.errors import Conflict

OLD_ARGS = {"repository": "model_repository", "versions": {"fraud": [1]}}
NEW_ARGS = {"repository": "model_repository", "versions": {"fraud": [1, 2]}}
BEFORE = {"router": {"status": "HEALTHY", "message": ""}, "fraud-v1": {"status": "HEALTHY", "message": ""}}
LOADING = {**BEFORE, "fraud-v2": {"status": "UPDATING", "message": "starting a replica"}}


def build(args: dict) -> dict:
    """The graph builder the fake config names (its result goes to the faked _deployment_names)."""
    return args


class Router:
    """A router handle whose start_time never answers: the new graph's routers are not up."""

    def __init__(self) -> None:
        self.asked = 0
        self.start_time = SimpleNamespace(remote=self._start_time)

    async def _start_time(self) -> float:
        self.asked += 1
        await asyncio.Event().wait()  # never set
        raise AssertionError("unreachable")


@pytest.fixture
def control(monkeypatch):
    """redeploy's Serve and Ray calls faked: returns the router handle and the list of submissions."""
    router, submitted, state = Router(), [], {"polls": 0}
    context = SimpleNamespace(app_name="default", deployment="router")
    monkeypatch.setattr(
        redeploy,
        "serve",
        SimpleNamespace(get_replica_context=lambda: context, get_deployment_handle=lambda *_: router),
    )

    @contextlib.asynccontextmanager
    async def unlocked(*_):
        yield

    monkeypatch.setattr(redeploy, "control_lock", unlocked)
    config = {"name": "default", "import_path": f"{__name__}:build", "args": OLD_ARGS, "deployments": []}
    monkeypatch.setattr(redeploy, "_declared_applications", lambda: ({"default": dict(config)}, None))
    monkeypatch.setattr(redeploy, "_deployment_names", lambda _: set(LOADING))

    def states(_app: str) -> dict:
        state["polls"] += 1
        return BEFORE if not submitted else LOADING

    monkeypatch.setattr(redeploy, "_deployment_states", states)
    monkeypatch.setattr(redeploy, "LOAD_WAIT_S", 1.0)
    return SimpleNamespace(router=router, submitted=submitted, state=state, monkeypatch=monkeypatch)


def test_a_change_whose_new_graph_never_answers_answers_loading_by_its_deadline(control):
    control.monkeypatch.setattr(redeploy, "_apply_applications", lambda *a: control.submitted.append(a))

    answer = asyncio.run(redeploy.redeploy(NEW_ARGS, "load fraud v2", {}, redeploy.config_version(OLD_ARGS)))

    assert answer["state"] == "LOADING" and answer["pending"] == {"fraud-v2": LOADING["fraud-v2"]}
    assert answer["added"] == ["fraud-v2"] and answer["removed"] == []
    assert answer["config_version"] == redeploy.config_version(NEW_ARGS)
    assert len(control.submitted) == 1


def test_the_deadline_counts_from_the_call_not_from_the_submission(control):
    """Steps before the submission that use up the whole wait leave none after it: the change is
    submitted and answered at once, without a single question to the new graph."""

    def slow_submission(*args) -> None:
        ends = time.monotonic() + redeploy.LOAD_WAIT_S
        while time.monotonic() <= ends:  # the controller slow to take it, on a busy machine
            time.sleep(0.05)
        control.submitted.append(args)

    control.monkeypatch.setattr(redeploy, "_apply_applications", slow_submission)
    polls_before_submission = 1  # the state read before the submission (what "added" compares with)

    answer = asyncio.run(redeploy.redeploy(NEW_ARGS, "load fraud v2", {}, redeploy.config_version(OLD_ARGS)))

    assert answer["state"] == "LOADING" and answer["added"] == ["fraud-v2"]
    assert len(control.submitted) == 1
    assert control.router.asked == 0 and control.state["polls"] == polls_before_submission


def test_a_change_based_on_an_old_config_is_refused_before_anything_is_submitted(control):
    control.monkeypatch.setattr(redeploy, "_apply_applications", lambda *a: control.submitted.append(a))

    with pytest.raises(Conflict, match="the application's config changed since this router was built"):
        asyncio.run(redeploy.redeploy(NEW_ARGS, "load fraud v2", {}, "0123456789abcdef"))
    assert control.submitted == []


class NewRouter:
    """A router handle answered by a router of the new graph (started after the submission)."""

    def __init__(self) -> None:
        self.start_time = SimpleNamespace(remote=self._start_time)

    async def _start_time(self) -> float:
        return time.time() + 3600


@pytest.mark.parametrize("old_routers_stop", [False, True])
def test_a_change_answers_ready_only_once_the_old_routers_have_left_the_proxy(control, old_routers_stop):
    """Routers surge: the new graph answers and every deployment is healthy while the old routers
    still run, and then drain, reachable through the proxy. READY means the next request sees the
    change, so it waits for both; old routers that never stop leave the call LOADING."""
    control.monkeypatch.setattr(redeploy, "_apply_applications", lambda *a: control.submitted.append(a))
    control.monkeypatch.setattr(redeploy.serve, "get_deployment_handle", lambda *_: NewRouter())
    control.monkeypatch.setattr(redeploy, "_deployment_states", lambda _app: {**BEFORE, "fraud-v2": BEFORE["router"]})
    control.monkeypatch.setattr(redeploy.ray_compat, "ingress_draining_s", lambda: 0.3)
    left: list[float] = []

    def old_routers(*_) -> int:
        if old_routers_stop and not left:
            left.append(time.monotonic())
        return 0 if old_routers_stop else 1

    control.monkeypatch.setattr(redeploy, "_routers_started_before", old_routers)

    answer = asyncio.run(redeploy.redeploy(NEW_ARGS, "load fraud v2", {}, redeploy.config_version(OLD_ARGS)))
    answered = time.monotonic()

    if old_routers_stop:
        assert answer["state"] == "READY" and answer["pending"] == {}
        assert answered >= left[0] + 0.3  # not before the last old router's draining was over
    else:
        assert answer["state"] == "LOADING" and answer["pending"] == {}
