from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import ray
from ray import serve

from serve_app.config import DynamicBatching
from serve_app.deployments.logs import flush_replica_log, replica_logging
from serve_app.deployments.metrics import ModelMetrics
from serve_app.errors import InvalidInput
from serve_app.protocol.tensors import batch_size, check_inputs
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.runtime.batching import BatchStats, IdleGate, predict_many, queued_rows, total_rows


@serve.deployment
class ModelDeployment:
    """One model version behind @serve.batch. Batching knobs come from user_config
    (max_batch_size in rows, batch_wait_timeout_s) and change live through reconfigure()."""

    def __init__(self, repository: str, model: str, version: int, preprocess: bool = False):
        """preprocess: predict() takes the raw inputs and runs the version's preprocessor first
        (preprocessing: in_model), instead of a preprocessor replica's tensors."""
        replica_logging()
        model_version = ModelRepository(repository).version(model, version)
        self.config = model_version.config
        self.preprocessor = model_version.preprocessor if preprocess else None
        # The GPUs Ray gave this replica decide its device, whoever reserved them (config.yaml or a
        # Serve config's ray_actor_options): one source of truth.
        self.gpu_ids = ray.get_gpu_ids()
        self.runner = load_runner(self.config, model_version.model_file, model_version.precision, len(self.gpu_ids))
        self.stats = BatchStats()
        self.gate = IdleGate()
        self.metrics = ModelMetrics(model, version)
        self.reconfigure(self.config.dynamic_batching.model_dump())  # until user_config says otherwise
        flush_replica_log()

    def reconfigure(self, user_config: dict) -> None:
        settings = DynamicBatching.model_validate(user_config)
        if settings.max_batch_size > self.config.max_batch_size:
            raise InvalidInput(
                f"user_config max_batch_size {settings.max_batch_size} exceeds the model's "
                f"max_batch_size {self.config.max_batch_size}"
            )
        self._predict_batch.set_max_batch_size(settings.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.batching = settings

    async def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrived = time.perf_counter()
        if self.preprocessor is not None:  # microseconds of numpy: on the loop, per request
            inputs = self.preprocessor.transform(inputs)
        # Checked alone first, so one bad request cannot fail the batch it would join.
        check_inputs(inputs, self.config.inputs, self.config.max_batch_size)
        if batch_size(inputs) >= self.batching.max_batch_size:  # a full batch already: no waiting
            return (await self._run([inputs], [arrived]))[0]
        await self.gate.wait()
        return await self._predict_batch((inputs, arrived))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, batch_size_fn=queued_rows)
    async def _predict_batch(self, queued: list[tuple[dict[str, np.ndarray], float]]) -> list[dict[str, np.ndarray]]:
        with self.gate.busy():
            return await self._run([inputs for inputs, _ in queued], [arrived for _, arrived in queued])

    async def _run(self, requests: list[dict[str, np.ndarray]], arrived: list[float]) -> list[dict[str, np.ndarray]]:
        # In a thread: ONNX Runtime releases the GIL, so requests keep arriving meanwhile.
        start = time.perf_counter()
        outputs = await asyncio.to_thread(predict_many, self.runner, requests, self.stats)
        waited_ms = [1000 * (start - t) for t in arrived]
        self.metrics.batch(total_rows(requests), 1000 * (time.perf_counter() - start), waited_ms)
        return outputs

    def batch_stats(self) -> dict:
        return {**self.stats.as_dict(), **self.batching.model_dump()}

    def describe(self) -> dict:
        gpus = {"gpu_ids": [str(i) for i in self.gpu_ids], "placed_on": self.runner.placed_on}
        return {**self.runner.describe(), "pid": os.getpid(), **gpus}

    def ready(self) -> bool:
        return True
