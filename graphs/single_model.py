"""Router (HTTP ingress) -> Preprocessor -> Model (@serve.batch), one pipeline per served version,
a statistics board (deployments/statistics.py), and a drift monitor when the args name models under `drift`.

applications:
  - import_path: graphs.single_model:build_app
    args: {repository: model_repository, models: [fraud], drift: {fraud: {window_size: 1000}}}
"""

from __future__ import annotations

from ray.serve import Application

from serve_app.config import GraphArgs
from serve_app.deployments.drift_monitor import DriftMonitorDeployment
from serve_app.deployments.model import ModelDeployment
from serve_app.deployments.preprocessor import PreprocessorDeployment
from serve_app.deployments.redeploy import LOAD_WAIT_S, config_version
from serve_app.deployments.router import Router
from serve_app.deployments.statistics import new_statistics_board
from serve_app.drift import feature_schema, load_reference
from serve_app.errors import RepositoryError
from serve_app.messages import Pipeline
from serve_app.repository import ModelRepository, ModelVersion

DRIFT_DEPLOYMENT = "drift-monitor"
SURGE_PERCENT = 100
"""Every change of the application's args restarts all its replicas (Serve's code version hashes the
args). Routers, preprocessors and CPU model replicas start their replacements before the old ones stop
(Serve's max_surge_percent), so the old graph serves meanwhile and requests do not wait on a restart.
Not the experiment store and the drift monitor (each the single owner of its state), nor a replica
holding a GPU (its replacement would wait for the GPU it holds)."""


def build_app(args: dict) -> Application:
    settings = GraphArgs.model_validate(args).with_resolved_paths()
    served = ModelRepository(settings.repository).check(settings.models, settings.versions)  # fails at start
    statistics = new_statistics_board()
    return router(settings).bind(
        settings.model_dump(),
        version_pipelines(settings, served, statistics),
        drift=drift_monitor(settings, served),
        app_args=settings.model_dump(mode="json"),
        config_version=config_version(args),
        statistics=statistics,
    )


def router(settings: GraphArgs):
    # An old replica finishes its requests before it stops, a load or unload included (it waits
    # for the new graph, up to LOAD_WAIT_S).
    return Router.options(
        num_replicas=settings.num_replicas_ingress,
        max_ongoing_requests=settings.max_ongoing_requests_ingress,
        # The router is rarely what saturates; the versions behind it shed (max_queued_requests).
        max_queued_requests=settings.max_ongoing_requests_ingress,
        graceful_shutdown_timeout_s=LOAD_WAIT_S + 30,
        max_surge_percent=SURGE_PERCENT,
        ray_actor_options={"num_cpus": settings.num_cpus_ingress},
    )


def drift_monitor(settings: GraphArgs, served: list[ModelVersion], experiments: Application | None = None):
    """The drift monitor of the models in settings.drift, or None. Each version's reference and
    features are checked here, so a bad drift config fails at start, not in a replica."""
    if not settings.drift:
        return None
    watched = [v for v in served if v.name in settings.drift]
    unknown = sorted(set(settings.drift) - {v.name for v in served})
    if unknown:
        raise RepositoryError(f"drift: models {unknown} are not among those served")
    for version in watched:
        feature_schema(version, settings.drift[version.name], load_reference(version, settings.drift[version.name]))
    return DriftMonitorDeployment.options(
        name=DRIFT_DEPLOYMENT, ray_actor_options={"num_cpus": settings.num_cpus_ingress}
    ).bind(
        settings.repository,
        settings.storage_uri,
        {model: s.model_dump() for model, s in settings.drift.items()},
        [(v.name, v.version) for v in watched],
        experiments,
    )


def version_pipelines(settings: GraphArgs, served: list[ModelVersion], statistics: str) -> list[Pipeline]:
    """Every served version's pipeline, once in_router is checked; its model replicas report to the
    statistics board."""
    check_in_router(settings, served)
    return [version_pipeline(settings.repository, version, settings, statistics) for version in served]


def check_in_router(settings: GraphArgs, served: list[ModelVersion]) -> None:
    """in_router names models of the repository (one unloaded for now is simply not served), and
    none of the served versions asks for a GPU (routers have none)."""
    unknown = sorted(set(settings.in_router) - set(ModelRepository(settings.repository).model_names()))
    if unknown:
        raise RepositoryError(f"in_router: models {unknown} are not in the repository")
    for version in served:
        runtime, instances = version.config.runtime, version.config.instances
        if version.name in settings.in_router and (instances.num_gpus > 0 or runtime.device == "cuda"):
            raise RepositoryError(
                f"model '{version.name}' v{version.version} asks for a GPU (instances.num_gpus, runtime.device): "
                "it cannot run in the router (in_router); serve it on model replicas"
            )


def version_pipeline(repository: str, version: ModelVersion, settings: GraphArgs, statistics: str) -> Pipeline:
    """The Preprocessor and Model deployments of one version, named '<model>-v<version>-...'; none
    for a model in_router (the router runs it)."""
    config = version.config
    if config.name in settings.in_router:
        return Pipeline(config.name, version.version)
    prefix = f"{config.name}-v{version.version}"
    preprocessor = None
    in_model = version.preprocessor is not None and settings.preprocessing == "in_model"
    if version.preprocessor is not None and not in_model:
        preprocessor = PreprocessorDeployment.options(
            name=f"{prefix}-preprocessor",
            num_replicas=config.instances.num_replicas,
            max_ongoing_requests=settings.max_ongoing_requests_ingress,
            max_queued_requests=settings.max_queued_requests,
            max_surge_percent=SURGE_PERCENT,
            ray_actor_options={"num_cpus": settings.num_cpus_ingress},
        ).bind(repository, config.name, version.version)
    runner = ModelDeployment.options(
        name=f"{prefix}-model",
        num_replicas=config.instances.num_replicas,
        # @serve.batch only fills a batch with requests the replica has accepted.
        max_ongoing_requests=max(2 * config.dynamic_batching.max_batch_size, config.max_batch_size),
        max_queued_requests=settings.max_queued_requests,
        user_config=config.dynamic_batching.model_dump(),
        max_surge_percent=0 if config.instances.num_gpus > 0 else SURGE_PERCENT,
        ray_actor_options={"num_cpus": config.instances.num_cpus, "num_gpus": config.instances.num_gpus},
    ).bind(repository, config.name, version.version, preprocess=in_model, statistics=statistics)
    return Pipeline(config.name, version.version, runner, preprocessor)
