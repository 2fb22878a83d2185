"""What every runner does: check inputs, run in chunks of max_batch_size, warm up."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np

from serve_app.config import ModelConfig
from serve_app.protocol.tensors import NUMPY_DTYPES, batch_size, check_inputs

logger = logging.getLogger("serve_app.runtime")


class Runner(ABC):
    config: ModelConfig
    device: str
    """Where the model really runs, e.g. 'cpu' or 'cuda:0', for metadata and logs."""
    placed_on: str
    """'cuda' or 'cpu': where the GPUs given placed it (devices.placement), before any fallback."""

    @abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one chunk of at most max_batch_size rows."""

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the inputs against the model's declared tensors, then run them."""
        check_inputs(inputs, self.config.inputs)
        return self.run(inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run inputs already checked; rows beyond max_batch_size run in chunks."""
        rows = batch_size(inputs)
        step = self.config.max_batch_size
        if rows <= step:
            return self._run(inputs)
        parts = [self._run({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, rows, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def warm_up(self) -> None:
        zeros = {
            spec.name: np.zeros([1 if d == -1 else d for d in spec.dims], dtype=NUMPY_DTYPES[spec.datatype])
            for spec in self.config.inputs
        }
        self.predict(zeros)

    def describe(self) -> dict:
        return {"platform": self.config.platform, "device": self.device}
