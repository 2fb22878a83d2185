"""Triton's model configuration, statistics and model repository extensions, answered from a
router's Gateway; REST and gRPC are thin layers over these, so both answer alike."""

from __future__ import annotations

import asyncio

from serve_app.gateway import ASK_TIMEOUT_S, Gateway
from serve_app.protocol.model_config import triton_model_config

EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]
"""What server metadata announces: exactly the extensions implemented."""
CONFIG_SOURCES = ("triton", "repository")


class TritonExtensions:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def model_config(self, model: str, version: str | None, source: str = "triton") -> dict:
        """Triton's model configuration of what clients send and get; source "repository": the
        repository's own config.yaml as JSON, for operators."""
        endpoint = self.gateway.dataplane.endpoint(model, version)
        config = self.gateway.configs[model]
        if source == "repository":
            return config.model_dump(mode="json")
        return triton_model_config(endpoint, config, self.gateway.settings)

    async def statistics(self, model: str | None, version: str | None) -> dict:
        """Every served version's statistics, a model's, or one version's, summed over the
        application's replicas (this replica's latest counts reported first, so they are in)."""
        gateway = self.gateway
        keys = [(e.name, e.version) for e in gateway.dataplane.served(model, version)]
        await gateway.report_statistics()
        totals = await asyncio.wait_for(gateway.statistics.totals(keys), ASK_TIMEOUT_S)
        return {"model_stats": [t.as_triton() for t in totals]}

    def repository_index(self, ready_only: bool) -> list[dict]:
        """Every version on disk and whether it is served."""
        served = {(e.name, e.version) for e in self.gateway.dataplane.endpoints}
        entries = self.gateway.repository.index(served)
        return [e for e in entries if e["state"] == "READY"] if ready_only else entries
