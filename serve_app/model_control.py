"""Loading and unloading model versions in a running application (Triton's model repository
extension: POST /v2/repository/models/{name}/load and .../unload), and changing an experiment's
traffic.

Serve fixes an application's deployments when it is deployed, so each of these changes is a
redeploy of the same application with changed args, which is exactly what `serve deploy` with an
edited config does. Serve rolls the graph over: new replicas start, old ones finish the requests
they took before they stop. This module works out the new args and refuses what must not happen
(an unknown model or version, the only serving version, a version an experiment routes to); the
router performs the redeploy. A change made here lasts until the config file is deployed again:
the file is what ops keep, so a version meant to stay belongs in it (`versions:` or the policy).
"""

from __future__ import annotations

import copy

from pydantic import ValidationError

from serve_app.config import TrafficSettings, describe_validation_error
from serve_app.errors import Conflict, InvalidInput, ModelNotFound
from serve_app.onboarding import check_name
from serve_app.repository import ModelRepository


class ModelControl:
    def __init__(self, args: dict, served: dict[str, list[int]], live_traffic: dict[str, TrafficSettings]):
        """args: the application's args as deployed; served: the versions it serves now, per model;
        live_traffic: each experiment's traffic now (promotions and rollbacks included)."""
        self.args = copy.deepcopy(args)
        self.served = {model: sorted(versions) for model, versions in served.items()}
        self.repository = ModelRepository(self.args["repository"])
        self.pinned: dict[str, dict[int, str]] = {}
        """Versions that must stay loaded, and why: what experiments route to now and in the args."""
        configured = {
            m: TrafficSettings.model_validate(e["traffic"]) for m, e in self.args.get("experiments", {}).items()
        }
        for source, traffic_by_model in (("configured", configured), ("live", live_traffic)):
            for model, traffic in traffic_by_model.items():
                roles = {traffic.champion: "champion", traffic.challenger: "challenger"}
                roles.update({v: "shadow" for v in traffic.shadows if v not in roles})
                for version, role in roles.items():
                    if version is not None:
                        self.pinned.setdefault(model, {}).setdefault(version, f"the experiment's {source} {role}")

    def load(self, model: str, version: int | None = None) -> dict | None:
        """Args that also serve `version` of `model` (None: the versions its version policy selects
        now, which is how a newly registered version is picked up); None when that is served already
        (Triton's load of a loaded model succeeds)."""
        self._known(model)
        args = copy.deepcopy(self.args)
        if args.get("models") is not None and model not in args["models"]:
            args["models"] = sorted({*args["models"], model})
        if version is None:
            chosen = [v.version for v in self.repository.served_versions(model)]  # a broken one is named here
            explicit = model in args.get("versions", {})
            if not explicit and model in self.served and set(chosen) <= set(self.served[model]):
                return None
            args.get("versions", {}).pop(model, None)
            return args
        if version not in self.repository.available_versions(model):
            raise ModelNotFound(f"model '{model}' has no version {version} in the repository")
        self.repository.version(model, version).check()
        if version in self.served.get(model, []):
            raise Conflict(f"{model} v{version} is already loaded")
        args.setdefault("versions", {})[model] = sorted({*self.served.get(model, []), version})
        return args

    def unload(self, model: str, version: int | None = None) -> dict:
        """Args without `version` of `model` (None: without the model)."""
        self._known(model)
        if model not in self.served:
            raise ModelNotFound(f"model '{model}' is not loaded")
        args = copy.deepcopy(self.args)
        pinned = self.pinned.get(model, {})
        if version is None:
            if pinned:
                raise Conflict(f"model '{model}' has an experiment ({sorted(pinned)}): it cannot be unloaded")
            if list(self.served) == [model]:
                raise Conflict(f"model '{model}' is the only model this application serves")
            args["models"] = sorted(set(self.served) - {model})
            args.get("versions", {}).pop(model, None)
            return args
        if version not in self.served[model]:
            raise ModelNotFound(f"{model} v{version} is not loaded (loaded: {self.served[model]})")
        if version in pinned:
            raise Conflict(f"{model} v{version} is {pinned[version]}: change the experiment's traffic first")
        remaining = [v for v in self.served[model] if v != version]
        if not remaining:
            raise Conflict(f"{model} v{version} is the only version of '{model}' serving: load another first")
        args.setdefault("versions", {})[model] = remaining
        return args

    def set_traffic(self, model: str, traffic: dict) -> dict:
        """Args whose experiment for `model` starts anew with `traffic` (its versions are loaded)."""
        self._known(model)
        if "experiments" not in self.args:
            raise Conflict("this application's graph has no experiments (deploy graphs.champion_challenger)")
        try:
            settings = TrafficSettings.model_validate(traffic)
        except ValidationError as error:
            raise InvalidInput(describe_validation_error(error, "traffic")) from None
        absent = sorted(set(settings.versions) - set(self.repository.available_versions(model)))
        if absent:
            raise ModelNotFound(f"model '{model}' has no version(s) {absent} in the repository")
        args = copy.deepcopy(self.args)
        experiment = args["experiments"].setdefault(model, {})
        experiment["traffic"] = settings.model_dump()
        if args.get("models") is not None and model not in args["models"]:
            args["models"] = sorted({*args["models"], model})
        return args

    def _known(self, model: str) -> None:
        check_name(model)  # letters, digits, '_', '.', '-': no path into the repository
        self.repository.config(model)  # ModelNotFound names it
