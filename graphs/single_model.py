"""Router (HTTP ingress) -> Preprocessor -> Model (@serve.batch), one pipeline per served version.

applications:
  - import_path: graphs.single_model:build_app
    args: {repository: model_repository, models: [fraud]}
"""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from serve_app.config import GraphArgs
from serve_app.deployments.model import ModelDeployment
from serve_app.deployments.preprocessor import PreprocessorDeployment
from serve_app.deployments.router import Router
from serve_app.repository import ModelRepository, ModelVersion


def build_app(args: dict) -> Application:
    settings = GraphArgs.model_validate(args)
    # Resolved here, in the process that reads the config, so every replica finds the same folder.
    settings = settings.model_copy(update={"repository": str(Path(settings.repository).resolve())})
    served = ModelRepository(settings.repository).check(settings.models)  # a broken repository fails at start
    pipelines = [version_pipeline(settings.repository, version, settings) for version in served]
    return Router.options(
        num_replicas=settings.num_replicas_ingress,
        max_ongoing_requests=settings.max_ongoing_requests_ingress,
        ray_actor_options={"num_cpus": settings.num_cpus_ingress},
    ).bind(settings.model_dump(), pipelines)


def version_pipeline(repository: str, version: ModelVersion, settings: GraphArgs) -> dict:
    """The Preprocessor and Model deployments of one version, named '<model>-v<version>-...'."""
    config = version.config
    prefix = f"{config.name}-v{version.version}"
    preprocessor = None
    if version.preprocessor is not None:
        preprocessor = PreprocessorDeployment.options(
            name=f"{prefix}-preprocessor",
            num_replicas=config.instances.num_replicas,
            max_ongoing_requests=settings.max_ongoing_requests_ingress,
            ray_actor_options={"num_cpus": settings.num_cpus_ingress},
        ).bind(repository, config.name, version.version)
    runner = ModelDeployment.options(
        name=f"{prefix}-model",
        num_replicas=config.instances.num_replicas,
        # @serve.batch only fills a batch with requests the replica has accepted.
        max_ongoing_requests=max(2 * config.dynamic_batching.max_batch_size, config.max_batch_size),
        user_config=config.dynamic_batching.model_dump(),
        ray_actor_options={"num_cpus": config.instances.num_cpus, "num_gpus": config.instances.num_gpus},
    ).bind(repository, config.name, version.version)
    return {"model": config.name, "version": version.version, "preprocessor": preprocessor, "runner": runner}
