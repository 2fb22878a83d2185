"""The one place serve_app touches Ray Serve's private API, so a Ray upgrade has one file to check
(and tests/unit/test_ray_compat.py says what is gone). pyproject.toml pins Ray to the minor series
these were checked against.

What a router replica needs to redeploy its own application (serve_app.deployments.redeploy) has no
public Python API: `serve.status()` gives statuses but no deployed config, and `serve deploy` goes
through the dashboard's REST API (GET/PUT /api/serve/applications/), whose address (a port chosen at
`ray start`) a replica has no public way to learn, which may not run at all, and which asks for Ray's
auth token. The dashboard's handlers call the same controller client used here.

The private names are imported where used: a Ray without them breaks load and unload, not the router.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray import serve
from ray.serve.schema import ServeDeploySchema


def serve_instance_details() -> dict[str, Any]:
    """Serve's instance details as the controller reports them: the body of the dashboard's
    `GET /api/serve/applications/` (a ServeInstanceDetails as a dict), with each application's
    `deployed_app_config` and the `target_capacity`.

    Private: `ray.serve.context._get_global_client().get_serve_details()`, the call `serve.status()`
    itself makes before it drops the configs. Raises RayServeException if Serve is not running.
    """
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def deploy_applications(document: dict[str, Any]) -> None:
    """Deploy a `serve deploy` config document (a ServeDeploySchema as a dict): the applications it
    lists replace every application deployed from a config. Returns once the controller has taken it,
    before anything is up; ValidationError if the document is not a valid config.

    Private: `_get_global_client().deploy_apps(...)`, what the dashboard's PUT handler calls after it
    validates the same document (and what `serve run <config.yaml>` calls).
    """
    from ray.serve.context import _get_global_client

    config = ServeDeploySchema.model_validate(document)  # first: a bad document never reaches Ray
    _get_global_client().deploy_apps(config)


def bound_deployment(application: serve.Application) -> serve.Deployment:
    """The deployment an application node binds, with the args it was bound with (`init_args`,
    `init_kwargs`: public), where the graph's other nodes are.

    Private: `Application._bound_deployment`; Application has no public attribute (Ray keeps this one
    for its own graph build, "made private so users don't use it").
    """
    return application._bound_deployment


def bound_deployments(application: serve.Application) -> list[serve.Deployment]:
    """Every deployment of an application graph, each node once (the ingress first): the nodes bound in
    init args and kwargs, directly or in lists, tuples, dicts and dataclasses. Ray's own build (before it renames
    deployments whose names clash) walks the same graph."""
    found: list[serve.Deployment] = []
    seen: set[int] = set()
    pending: list[Any] = [application]
    while pending:
        item = pending.pop()
        if isinstance(item, serve.Application):
            if id(item) in seen:
                continue
            seen.add(id(item))
            deployment = bound_deployment(item)
            found.append(deployment)
            pending.extend([*deployment.init_args, *deployment.init_kwargs.values()])
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):  # e.g. serve_app.messages.Pipeline
            pending.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return found


def ingress_draining_s() -> float:
    """How long a stopping ingress replica stays reachable from outside, for a load balancer to drop
    it: Ray's HAProxy sends it requests that long. Zero behind Serve's own proxy, whose handles drop
    a stopping replica at once.

    Private: `ray.serve._private.constants` (RAY_SERVE_ENABLE_DIRECT_INGRESS and
    RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, read from the environment Ray's processes share).
    """
    from ray.serve._private import constants

    if not constants.RAY_SERVE_ENABLE_DIRECT_INGRESS:
        return 0.0
    return float(constants.RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S)
