"""Deploy a running application's config again with changed args, from inside it, exactly as
`serve deploy` with an edited file would (what the repository API's load and unload do).

Serve fixes an application's deployments when it is deployed, so adding or removing a version is
a new deployment of the application's config: the router submits the same ServeDeploySchema the
dashboard's PUT submits (every declared application, this one changed), then waits, bounded, for a
router of the new graph, for every deployment to be healthy and for the old graph's routers to leave
the proxy.

No lost updates: a router computes a change from the args its graph was built from, so two changes
at once (through one router or several) could each undo the other. Changes are compare-and-set: the
graph builder stamps each router with the version of the config it was built from (`config_version`,
a digest of the args), and a change is applied only if the application's deployed config still has
that version, under the application's control lock (a named actor) held from the check to the
submission. Otherwise it is refused with 409 naming the current version: nothing changed, and the
call succeeds again once the new graph's routers answer it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import ray_compat
from serve_app.deployments.experiment import EXPERIMENTS_DEPLOYMENT
from serve_app.errors import Conflict, ServeAppError

T = TypeVar("T")
logger = logging.getLogger("ray.serve")
LOAD_WAIT_S = 55.0
"""A change answers within this long of its start, 202 (still loading) if the new graph is not up by
then: under the proxy's timeout (HAProxy's server timeout, 60 s, with room for the answer), which
would otherwise answer a plain 500 for a change that went through, and under tritonclient's default
network timeout (60 s). A gRPC client cannot tell 202 from 200: the longer the wait, the more often its
load or unload returns with the change live on two cores (about 50 s there for a load under traffic)."""
ASK_TIMEOUT_S = 5.0
LOCK_WAIT_S = 10.0
"""Longest a change waits for another one to this application to be submitted; then 409."""
CONTROL_NAMESPACE = "serve-app"
"""Where the control locks live: a name every router of the cluster finds."""
LOCK_LEASE_S = 60.0
"""A holder that died keeps the control lock no longer than this."""


def config_version(args: dict) -> str:
    """The version of an application's args: a digest of their canonical JSON."""
    return hashlib.sha256(json.dumps(args, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@ray.remote(num_cpus=0)
class ControlLock:
    """One application's management lock, as a lease: a holder that died cannot keep it."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.expires = 0.0

    def acquire(self, token: str, lease_s: float) -> bool:
        now = time.monotonic()
        if self.holder is None or now > self.expires:
            self.holder, self.expires = token, now + lease_s
        return self.holder == token

    def release(self, token: str) -> None:
        if self.holder == token:
            self.holder = None


@asynccontextmanager
async def control_lock(app_name: str, action: str):
    name = f"serve-app-control:{app_name}"
    lock = ControlLock.options(name=name, namespace=CONTROL_NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    token, deadline = uuid.uuid4().hex, time.monotonic() + LOCK_WAIT_S
    while not await lock.acquire.remote(token, LOCK_LEASE_S):
        if time.monotonic() > deadline:
            raise Conflict(
                f"{action}: another change to application '{app_name}' is in progress; nothing changed, retry"
            )
        await asyncio.sleep(0.2)
    try:
        yield
    finally:
        await lock.release.remote(token)


async def redeploy(args: dict, action: str, experiments: dict[str, dict], based_on: str | None) -> dict:
    """Called by a router replica: deploy its application again with `args` (and the experiment
    store's configured traffic of `experiments`), if its deployed config is still at version
    `based_on` (what the router was built from); what changed and whether it is all up. This
    replica serves until a router of the new graph runs, and finishes this call before it stops. It answers
    within LOAD_WAIT_S, however long the steps before the submission took on a busy machine."""
    called = time.monotonic()
    deadline = called + LOAD_WAIT_S
    context = serve.get_replica_context()
    app_name = context.app_name
    async with control_lock(app_name, action):
        declared, target_capacity = await asyncio.to_thread(_declared_applications)
        if app_name not in declared:
            raise Conflict(
                f"application '{app_name}' was deployed with serve.run, not from a config: load and unload "
                "deploy its config again as serve deploy does (use serve deploy or serve run <config.yaml>)"
            )
        current = config_version(declared[app_name].get("args", {}))
        if current != based_on:
            raise Conflict(
                f"{action}: the application's config changed since this router was built (config version "
                f"{current}, this router's {based_on}); nothing changed, retry once the new graph serves"
            )
        module, _, name = declared[app_name]["import_path"].partition(":")
        builder = getattr(importlib.import_module(module), name)
        try:  # built here first, so a broken version or config changes nothing
            names = _deployment_names(await asyncio.to_thread(builder, args))
        except (ServeAppError, ValueError) as error:
            raise Conflict(f"{action}: the new graph cannot be built, nothing changed: {error}") from None
        # The config's overrides stay, except for deployments the new graph no longer has (Serve
        # refuses a config that names a deployment its application lacks).
        overrides = declared[app_name].get("deployments", [])
        kept = [_with_traffic(o, experiments) for o in overrides if o["name"] in names]
        dropped = sorted(o["name"] for o in overrides if o["name"] not in names)
        declared[app_name] = {**declared[app_name], "args": args, "deployments": kept}
        before = await asyncio.to_thread(_deployment_states, app_name)
        submitted = time.time()
        await asyncio.to_thread(_apply_applications, declared, target_capacity)
    logger.info("%s: submitted %.1f s after the call", action, time.monotonic() - called)
    router = serve.get_deployment_handle(context.deployment, app_name)
    states, pending, routed, done = before, {}, False, False
    old_routers_left: float | None = None  # when the last router of the old graph stopped running
    draining_s = ray_compat.ingress_draining_s()
    while not done and time.monotonic() < deadline:
        states = await _by(deadline, asyncio.to_thread(_deployment_states, app_name)) or states
        # The router deployment is not HEALTHY until this replica has stopped: it is asked instead.
        pending = {n: s for n, s in states.items() if s["status"] != "HEALTHY" and n != context.deployment}
        if not routed:  # a router of the new graph answers (one started after the submission)
            started = await _by(min(deadline, time.monotonic() + ASK_TIMEOUT_S), _start_time(router))
            routed = started is not None and started > submitted
        if routed and old_routers_left is None:
            old = asyncio.to_thread(_routers_started_before, app_name, context.deployment, submitted)
            old_routers_left = time.monotonic() if await _by(deadline, old) == 0 else None
        # Routers surge (graphs/single_model.py): the old ones stop once the new ones run, and the proxy
        # still sends them requests while they drain. Answered after that, the change is what every
        # request sees next, as a Triton client expects of a load or unload that returned.
        drained = old_routers_left is not None and time.monotonic() >= old_routers_left + draining_s
        done = routed and drained and not pending and names <= set(states)
        if not done:
            await asyncio.sleep(0.5)
    if not done:
        logger.warning("%s: still loading %.0f s after the call: %s", action, LOAD_WAIT_S, pending)
    return {
        "action": action,
        "application": app_name,
        "config_version": config_version(args),
        "state": "READY" if done else "LOADING",
        "added": sorted(names - set(before)),
        "removed": sorted(set(before) - names),
        "overrides_dropped": dropped,
        "pending": pending,
    }


async def _by(deadline: float, awaitable: Awaitable[T]) -> T | None:
    """What `awaitable` gives, or None when it has not by `deadline` (time.monotonic())."""
    try:
        return await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        return None


async def _start_time(router: DeploymentHandle) -> float | None:
    """When the router replica that takes this call started; None while none is up."""
    try:
        return await router.start_time.remote()
    except Exception:  # none up yet (the old one stopping, the new one starting)
        return None


def _declared_applications() -> tuple[dict[str, dict], float | None]:
    """The applications deployed from a config (serve deploy / serve run <config>), as deployed,
    and the target capacity: what a redeploy must submit again, with one application changed."""
    details = ray_compat.serve_instance_details()  # Serve's public API gives no deployed config
    configs = {name: app.get("deployed_app_config") for name, app in details["applications"].items()}
    return {name: config for name, config in configs.items() if config}, details.get("target_capacity")


def _apply_applications(configs: dict[str, dict], target_capacity: float | None) -> None:
    """What `serve deploy` asks of the controller (through the dashboard's PUT)."""
    ray_compat.deploy_applications({"applications": list(configs.values()), "target_capacity": target_capacity})


def _deployment_names(application: serve.Application) -> set[str]:
    """Every deployment an application will have."""
    return {deployment.name for deployment in ray_compat.bound_deployments(application)}


def _with_traffic(override: dict, experiments: dict[str, dict]) -> dict:
    """A config's override of the experiment store, with the traffic just set through the API
    (its user_config would otherwise set the old traffic again)."""
    configured = override.get("user_config", {}).get("traffic")
    if override["name"] != EXPERIMENTS_DEPLOYMENT or configured is None:
        return override
    traffic = {**configured, **{model: e["traffic"] for model, e in experiments.items() if model in configured}}
    return {**override, "user_config": {**override["user_config"], "traffic": traffic}}


def _routers_started_before(app_name: str, deployment: str, submitted: float) -> int:
    """Router replicas still running that started before the change was submitted: the old graph's."""
    details = ray_compat.serve_instance_details()["applications"].get(app_name)
    replicas = details["deployments"].get(deployment, {}).get("replicas", []) if details else []
    return sum(r["state"] == "RUNNING" and r["start_time_s"] < submitted for r in replicas)


def _deployment_states(app_name: str) -> dict[str, dict]:
    application = serve.status().applications.get(app_name)
    if application is None:
        return {}
    return {name: {"status": d.status.value, "message": d.message} for name, d in application.deployments.items()}
