"""The single-model graph plus experiments: a weighted sticky champion/challenger split, shadow
mirroring, a prediction log, feedback, and an experiment store that promotes or rolls back.

    applications:
      - import_path: graphs.champion_challenger:build_app
        args:
          repository: model_repository
          storage_uri: serve_app_storage
          experiments:
            fraud:
              traffic: {champion: 1, challenger: 2, challenger_weight: 0.05}

With `drift` args (see graphs.single_model) the drift monitor watches the models named there;
`on_drift: freeze_experiment` pauses the experiment's automatic decisions while drift lasts.

Live changes: the experiment store's user_config ({"traffic": {model: ...}}) takes new weights
through `serve deploy`; the deployment is named 'experiments'.
"""

from __future__ import annotations

from ray.serve import Application

from graphs.single_model import drift_monitor, router, version_pipelines
from serve_app.config import ExperimentGraphArgs, GraphArgs
from serve_app.deployments.experiment import EXPERIMENTS_DEPLOYMENT, ExperimentDeployment
from serve_app.deployments.redeploy import config_version
from serve_app.deployments.statistics import new_statistics_board
from serve_app.errors import RepositoryError
from serve_app.repository import ModelRepository


def build_app(args: dict) -> Application:
    settings = ExperimentGraphArgs.model_validate(args).with_resolved_paths()
    repository = ModelRepository(settings.repository)
    served = repository.check(settings.models, settings.versions)  # a broken repository fails at start
    loaded = {(v.name, v.version) for v in served}
    for model, experiment in settings.experiments.items():
        if model not in {v.name for v in served}:
            raise RepositoryError(f"experiment '{model}': the model is not among those served")
        for version in experiment.traffic.versions:
            if version not in repository.available_versions(model):
                raise RepositoryError(f"experiment '{model}': version {version} is not in the repository")
            if (model, version) not in loaded:  # a traffic version outside the version policy is loaded too
                extra = repository.version(model, version)
                extra.check()
                served.append(extra)
                loaded.add((model, version))
    statistics = new_statistics_board()
    pipelines = version_pipelines(settings, served, statistics)
    traffic = {model: e.traffic.model_dump() for model, e in settings.experiments.items()}
    experiments = ExperimentDeployment.options(
        name=EXPERIMENTS_DEPLOYMENT,
        user_config={"traffic": traffic},
        ray_actor_options={"num_cpus": settings.num_cpus_ingress},
    ).bind(
        settings.storage_uri,
        {model: e.settings.model_dump() for model, e in settings.experiments.items()},
        settings.feedback_window_requests,
        {model: repository.config(model).decision_threshold for model in settings.experiments},
    )
    router_settings = settings.model_dump(include=set(GraphArgs.model_fields))
    return router(settings).bind(
        router_settings,
        pipelines,
        experiments,
        traffic,
        drift_monitor(settings, served, experiments),
        settings.model_dump(mode="json"),
        config_version(args),
        statistics,
    )
