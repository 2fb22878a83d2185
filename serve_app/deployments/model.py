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
from serve_app.deployments.statistics import BoardClient
from serve_app.errors import InvalidInput
from serve_app.protocol.tensors import batch_size, check_inputs
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.runtime.batching import BatchStats, Call, IdleGate, predict_many, queued_rows, total_rows
from serve_app.statistics import StatisticsRecorder
from serve_app.statistics.recorder import report_forever


@serve.deployment
class ModelDeployment:
    """One model version behind @serve.batch. Batching knobs come from user_config
    (max_batch_size in rows, batch_wait_timeout_s) and change live through reconfigure()."""

    def __init__(
        self,
        repository: str,
        model: str,
        version: int,
        preprocess: bool = False,
        statistics: str | None = None,
    ):
        """preprocess: predict() takes the raw inputs and runs the version's preprocessor first
        (preprocessing: in_model), instead of a preprocessor replica's tensors; statistics: the
        key of the statistics board this replica reports its executions to."""
        replica_logging()
        model_version = ModelRepository(repository).version(model, version)
        self.config, self.version = model_version.config, version
        self.preprocessor = model_version.preprocessor if preprocess else None
        # The GPUs Ray gave this replica decide its device, whoever reserved them (config.yaml or a
        # Serve config's ray_actor_options): one source of truth.
        self.gpu_ids = ray.get_gpu_ids()
        self.runner = load_runner(self.config, model_version.model_file, model_version.precision, len(self.gpu_ids))
        self.stats = BatchStats()
        self.gate = IdleGate()
        self.metrics = ModelMetrics(model, version)
        self.recorder = StatisticsRecorder("model")
        self.statistics = BoardClient(statistics) if statistics is not None else None
        self._reporting: asyncio.Task | None = None
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
        if self._reporting is None and self.statistics is not None:
            self._reporting = asyncio.create_task(report_forever(self.recorder, self.statistics))
        arrived = time.perf_counter_ns()
        if self.preprocessor is not None:  # microseconds of numpy: on the loop, per request
            inputs = self.preprocessor.transform(inputs)
        # Checked alone first, so one bad request cannot fail the batch it would join.
        check_inputs(inputs, self.config.inputs, self.config.max_batch_size)
        call = Call(inputs, arrived, time.perf_counter_ns())
        if batch_size(inputs) >= self.batching.max_batch_size:  # a full batch already: no waiting
            return (await self._run([call]))[0]
        await self.gate.wait()
        return await self._predict_batch(call)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, batch_size_fn=queued_rows)
    async def _predict_batch(self, calls: list[Call]) -> list[dict[str, np.ndarray]]:
        with self.gate.busy():
            return await self._run(calls)

    async def _run(self, calls: list[Call]) -> list[dict[str, np.ndarray]]:
        # In a thread: ONNX Runtime releases the GIL, so requests keep arriving meanwhile.
        start = time.perf_counter_ns()
        requests = [c.inputs for c in calls]
        outputs = await asyncio.to_thread(predict_many, self.runner, requests, self.stats)
        infer_ns, rows = time.perf_counter_ns() - start, total_rows(requests)
        waited_ns = [start - c.prepared_ns for c in calls]
        self.metrics.batch(rows, infer_ns / 1e6, [w / 1e6 for w in waited_ns])
        input_ns = sum(c.prepared_ns - c.arrived_ns for c in calls)
        self.recorder.execution(self.config.name, self.version, rows, len(calls), sum(waited_ns), input_ns, infer_ns)
        return outputs

    def batch_stats(self) -> dict:
        return {**self.stats.as_dict(), **self.batching.model_dump()}

    def describe(self) -> dict:
        gpus = {"gpu_ids": [str(i) for i in self.gpu_ids], "placed_on": self.runner.placed_on}
        return {**self.runner.describe(), "pid": os.getpid(), **gpus}

    def ready(self) -> bool:
        return True
