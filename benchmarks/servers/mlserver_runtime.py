"""An MLServer runtime for the benchmark: the same PlainScorer behind MLServer's Open Inference
Protocol server, with its adaptive batching (max_batch_size / max_batch_time in model-settings.json).
Runs in MLServer's own environment (benchmarks/.mlserver), never in the project's."""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse
from plain import PlainScorer


class OnnxModel(MLModel):
    async def load(self) -> bool:
        self.scorer = PlainScorer(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {}
        for item in payload.inputs:
            if item.datatype == "BYTES":
                inputs[item.name] = np.array(StringCodec.decode_input(item), dtype=object)
            else:
                inputs[item.name] = NumpyCodec.decode_input(item)
        outputs = self.scorer.score(inputs)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(name, value) for name, value in outputs.items()]
        )
