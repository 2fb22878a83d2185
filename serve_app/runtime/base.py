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

    def graph_dims(self, name: str) -> list[int | None] | None:
        """An input's dims as the model file declares them (None: variable), if the runtime tells."""
        return None

    def warm_up(self) -> None:
        """One row of zeros; a dimension the config leaves variable takes the model file's size."""
        zeros = {}
        for spec in self.config.inputs:
            graph = self.graph_dims(spec.name) or [None] * len(spec.dims)
            dims = [d if d != -1 else (g if isinstance(g, int) and g > 0 else 1) for d, g in zip(spec.dims, graph)]
            zeros[spec.name] = np.zeros(dims, dtype=NUMPY_DTYPES[spec.datatype])
        self.predict(zeros)

    def describe(self) -> dict:
        return {"platform": self.config.platform, "device": self.device}
