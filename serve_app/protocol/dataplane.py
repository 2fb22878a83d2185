"""The data plane: one place that answers the protocol's questions.

REST (and, later, gRPC) are thin layers that decode a request, call the data plane,
and encode its answer, so both speak alike. Endpoints hide where a model runs: in
this process (LocalEndpoint) or behind Ray Serve deployments.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

import numpy as np

from serve_app import __version__
from serve_app.config import TensorSpec
from serve_app.errors import DeadlineExceeded, InvalidInput, ModelNotFound
from serve_app.protocol.messages import InferenceRequest, InferenceResponse
from serve_app.protocol.tensors import check_inputs, conform_scalar_columns, declared_dims
from serve_app.ranking import top_candidates
from serve_app.repository import ModelVersion
from serve_app.runtime import Runner
from serve_app.runtime.merging import RequestMerger

SERVER_NAME = "serve-app"


class Endpoint(ABC):
    """One served model version, as the protocol describes it."""

    merger: RequestMerger | None = None
    """Batching before the hop, when the version runs in another process."""

    def __init__(self, model: ModelVersion):
        self.name = model.name
        self.version = model.version
        self.platform = model.config.platform
        self.max_batch_size = model.config.max_batch_size
        self.input_specs: list[TensorSpec] = model.input_specs
        self.output_specs: list[TensorSpec] = list(model.config.outputs)
        self.ranking = model.config.ranking
        if self.ranking is not None:
            candidates = next(s for s in self.input_specs if s.name == self.ranking.candidates)
            self.output_specs.append(TensorSpec(name=self.ranking.output, datatype=candidates.datatype, dims=[-1]))
        self.precision = model.precision

    @abstractmethod
    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw named inputs (already checked against input_specs) -> named outputs."""

    async def ready(self) -> bool:
        return True

    async def describe(self) -> dict | None:
        """Where the version runs (device, platform, providers), if it can tell."""
        return None

    async def batch_stats(self) -> dict | None:
        """The version's batcher: its live max_batch_size and what it has batched, if it has one."""
        return None

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": self.platform,
            "inputs": [_spec_metadata(s, declared_dims(s)) for s in self.input_specs],
            "outputs": [_spec_metadata(s, s.dims) for s in self.output_specs],
            "parameters": {"precision": self.precision},
        }


class LocalEndpoint(Endpoint):
    """The model version in this process: the in-process reference the graph must match."""

    def __init__(self, model: ModelVersion, runner: Runner):
        super().__init__(model)
        self.preprocessor = model.preprocessor
        self.runner = runner

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.predict(inputs)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = self.preprocessor.transform(inputs) if self.preprocessor else inputs
        return self.runner.predict(tensors)


class DataPlane:
    def __init__(self, endpoints: list[Endpoint], extensions: list[str] | None = None):
        self.extensions = extensions or []
        self._models: dict[str, dict[int, Endpoint]] = {}
        for endpoint in endpoints:
            self._models.setdefault(endpoint.name, {})[endpoint.version] = endpoint

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for versions in self._models.values() for e in versions.values()]

    def endpoint(self, name: str, version: str | None = None) -> Endpoint:
        """The named version, or the newest served version when none is named."""
        versions = self._models.get(name)
        if versions is None:
            served = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model '{name}' is not served here (models: {served})")
        if version is None:
            return versions[max(versions)]
        if not (version.isascii() and version.isdigit()) or int(version) not in versions:
            served = ", ".join(str(v) for v in sorted(versions))
            raise ModelNotFound(f"model '{name}' has no version '{version}' (versions served: {served})")
        return versions[int(version)]

    def served(self, name: str | None = None, version: str | None = None) -> list[Endpoint]:
        """Every served version, a model's (None: all of them), or the one named."""
        if name is None:
            return self.endpoints
        if version is None:
            self.endpoint(name)  # an unknown model is ModelNotFound
            return [self._models[name][v] for v in sorted(self._models[name])]
        return [self.endpoint(name, version)]

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": self.extensions}

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        if version is not None:
            return self.endpoint(name, version).metadata()
        metadata = self.endpoint(name).metadata()
        metadata["versions"] = [str(v) for v in sorted(self._models[name])]
        return metadata

    async def server_ready(self) -> bool:
        states = await asyncio.gather(*(e.ready() for e in self.endpoints), return_exceptions=True)
        return all(state is True for state in states)

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        endpoint = self.endpoint(name, version)  # an unknown model is a 404, not "not ready"
        try:
            return await endpoint.ready() is True
        except Exception:  # a replica that cannot answer in time is simply not ready
            return False

    async def infer(
        self, name: str, version: str | None, request: InferenceRequest, merged: bool = False
    ) -> InferenceResponse:
        """merged: the request holds several clients' rows (a shadow's batch): the request-level
        outputs (a ranker's top_k) are left to `ranked`, per client request, after the split."""
        endpoint = self.endpoint(name, version)
        request.inputs = conform_scalar_columns(request.inputs, endpoint.input_specs)
        check_inputs(request.inputs, endpoint.input_specs, endpoint.max_batch_size)
        timeout_s = _timeout_s(request.parameters)
        try:
            outputs = await asyncio.wait_for(endpoint.infer(request.inputs), timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"the request's timeout of {timeout_s * 1000:g} ms ran out") from None
        if not merged:
            outputs = self.ranked(endpoint, request.inputs, outputs)
        if request.requested_outputs is not None:
            unknown = [o for o in request.requested_outputs if o not in outputs]
            if unknown:
                raise InvalidInput(f"unknown output(s) {unknown}; the model gives {list(outputs)}")
            outputs = {o: outputs[o] for o in request.requested_outputs}
        return InferenceResponse(
            model_name=endpoint.name, model_version=str(endpoint.version), outputs=outputs, id=request.id
        )

    @staticmethod
    def ranked(endpoint: Endpoint, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict:
        """A ranker's answer with its top candidates added (request-level: one client's rows only)."""
        if endpoint.ranking is None:
            return outputs
        return {**outputs, endpoint.ranking.output: top_candidates(endpoint.ranking, inputs, outputs)}


def _timeout_s(parameters: dict) -> float | None:
    """Triton's request parameter 'timeout', in microseconds (tritonclient's infer(timeout=...))."""
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return None
    if type(timeout_us) is not int or timeout_us <= 0:
        raise InvalidInput("parameters.timeout must be a positive whole number of microseconds")
    return timeout_us / 1e6


def _spec_metadata(spec: TensorSpec, shape: list[int]) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": shape}
