"""What serve_app/ray_compat.py relies on in Ray's private API is still there, in the shape it uses.

A Ray upgrade that drops or reshapes one of these fails here, naming the Ray version and what is
missing, instead of in a router replica at the first load or unload. No Ray cluster is started: the
controller client is replaced where a call would reach it, and building an application graph with
.bind() starts nothing (checked below).
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import ray
from pydantic import ValidationError
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serve_app import ray_compat


def _gone(what: str) -> str:
    return (
        f"Ray {ray.__version__} no longer provides {what}, which serve_app/ray_compat.py uses: "
        "adapt ray_compat.py to this Ray, then widen the ray pin in pyproject.toml"
    )


def _attribute(module_name: str, name: str):
    module = importlib.import_module(module_name)
    assert hasattr(module, name), _gone(f"{module_name}.{name}")
    return getattr(module, name)


def _parameters(function, what: str) -> dict[str, inspect.Parameter]:
    assert callable(function), _gone(f"{what} as a callable")
    return dict(inspect.signature(function).parameters)


@pytest.fixture(autouse=True)
def no_ray_started():
    """Nothing here starts Ray (in the whole suite, the session's cluster may be up already)."""
    was_up = ray.is_initialized()
    yield
    assert ray.is_initialized() == was_up, "the test started Ray; unit tests must not"


class FakeClient:
    def __init__(self, details: dict | None = None):
        self.details = details or {}
        self.deployed: list = []

    def get_serve_details(self) -> dict:
        return self.details

    def deploy_apps(self, config) -> None:
        self.deployed.append(config)


@pytest.fixture
def fake_client(monkeypatch) -> FakeClient:
    client = FakeClient()
    _attribute("ray.serve.context", "_get_global_client")  # patching a name Ray dropped would hide it
    monkeypatch.setattr("ray.serve.context._get_global_client", lambda: client)
    return client


@serve.deployment
class Node:
    def __init__(self, *args, **kwargs):
        pass


# The private names ray_compat uses.


def test_the_global_controller_client_getter_takes_no_required_argument():
    get_client = _attribute("ray.serve.context", "_get_global_client")
    required = [
        p.name
        for p in _parameters(get_client, "ray.serve.context._get_global_client").values()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    assert required == [], _gone(f"ray.serve.context._get_global_client() callable with no argument (needs {required})")


def test_the_controller_client_gets_serve_details_and_deploys_apps():
    client_class = _attribute("ray.serve._private.client", "ServeControllerClient")
    annotation = inspect.signature(_attribute("ray.serve.context", "_get_global_client")).return_annotation
    assert "ServeControllerClient" in str(annotation), _gone(
        f"_get_global_client() returning a ServeControllerClient (it is annotated {annotation})"
    )
    for method, arguments in [("get_serve_details", ["self"]), ("deploy_apps", ["self", "config"])]:
        assert hasattr(client_class, method), _gone(f"ServeControllerClient.{method}")
        parameters = _parameters(getattr(client_class, method), f"ServeControllerClient.{method}")
        positional = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty]
        assert positional == arguments, _gone(f"ServeControllerClient.{method}{tuple(arguments)} (it is {positional})")


def test_an_application_built_with_bind_keeps_its_bound_deployment_and_starts_nothing():
    application = Node.bind(1, key="value")
    assert isinstance(application, serve.Application)
    assert hasattr(application, "_bound_deployment"), _gone("Application._bound_deployment")
    deployment = application._bound_deployment
    assert isinstance(deployment, serve.Deployment), _gone("Application._bound_deployment as a Deployment")
    assert (deployment.name, deployment.init_args, deployment.init_kwargs) == ("Node", (1,), {"key": "value"}), _gone(
        "Deployment.name, init_args and init_kwargs as bound"
    )  # and the autouse fixture holds that binding started no Ray


# The public schema deploy_applications validates with: the document redeploy submits.


def test_the_deploy_schema_takes_the_document_a_redeploy_submits():
    deployed_app_config = {
        "name": "control",
        "route_prefix": "/control",
        "import_path": "graphs.champion_challenger:build_app",
        "args": {"models": ["fraud"], "versions": {"fraud": [1, 3]}},
        "deployments": [{"name": "experiments", "user_config": {"traffic": {"fraud": {"challenger": 3}}}}],
    }
    for target_capacity in (None, 50.0):
        config = ServeDeploySchema.model_validate(
            {"applications": [deployed_app_config], "target_capacity": target_capacity}
        )
        application = config.applications[0]
        assert (application.name, application.args, config.target_capacity) == (
            "control",
            deployed_app_config["args"],
            target_capacity,
        ), _gone("ServeDeploySchema taking applications (name, args) and target_capacity as before")
        assert application.deployments[0].user_config == deployed_app_config["deployments"][0]["user_config"]


# ray_compat itself, with the controller client replaced.


def test_serve_instance_details_are_the_controller_clients(fake_client):
    fake_client.details = {"applications": {"control": {"deployed_app_config": {"name": "control"}}}}
    assert ray_compat.serve_instance_details() is fake_client.details


def test_deploy_applications_submits_the_validated_document(fake_client):
    document = {"applications": [{"name": "a", "import_path": "m:app", "args": {"x": 1}}], "target_capacity": None}
    ray_compat.deploy_applications(document)
    [config] = fake_client.deployed
    assert isinstance(config, ServeDeploySchema) and config.applications[0].args == {"x": 1}


def test_deploy_applications_refuses_a_bad_document_before_reaching_ray(monkeypatch):
    def unreachable():
        raise AssertionError("the controller client was asked for with a document Serve would refuse")

    _attribute("ray.serve.context", "_get_global_client")
    monkeypatch.setattr("ray.serve.context._get_global_client", unreachable)
    with pytest.raises(ValidationError):
        ray_compat.deploy_applications({"applications": [{"name": "a"}]})  # no import_path


def test_bound_deployments_are_every_node_of_the_graph_once_ingress_first():
    shared = Node.options(name="shared").bind()
    graph = Node.options(name="ingress").bind(
        Node.options(name="positional").bind(shared),
        [Node.options(name="in-list").bind()],
        {"nested": (Node.options(name="in-tuple").bind(),)},
        keyword=shared,
        plain="not a node",
    )
    names = [deployment.name for deployment in ray_compat.bound_deployments(graph)]
    assert names[0] == "ingress"
    assert sorted(names) == ["in-list", "in-tuple", "ingress", "positional", "shared"]
    assert ray_compat.bound_deployment(graph).name == "ingress"
