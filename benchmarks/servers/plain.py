"""What a team serving a model by hand writes: decode the V2 JSON with json and numpy, run the
version's preprocessor and an ONNX Runtime session, encode the answer. Shared by the naive FastAPI
server, the vanilla Ray Serve deployment and the MLServer runtime, so that each stack does the same
work per request and only the serving machinery differs. Imports numpy, pandas, pydantic and
onnxruntime only (MLServer's environment has them, not the project's other dependencies).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve_app.features import Preprocessor

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


def decode_inputs(document: dict) -> dict[str, np.ndarray]:
    """The inputs of a V2 JSON request as arrays (BYTES as str)."""
    arrays = {}
    for item in document["inputs"]:
        if item["datatype"] == "BYTES":
            arrays[item["name"]] = np.array(item["data"], dtype=object).reshape(item["shape"])
        else:
            arrays[item["name"]] = np.asarray(item["data"], dtype=DTYPES[item["datatype"]]).reshape(item["shape"])
    return arrays


def encode_outputs(outputs: dict[str, np.ndarray]) -> dict:
    return {
        "outputs": [
            {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.ravel().tolist()}
            for name, array in outputs.items()
        ]
    }


class PlainScorer:
    """One model version: its optional preprocessor.json and model.onnx, run on the CPU."""

    def __init__(self, version_dir: str | Path, threads: int = 1):
        version_dir = Path(version_dir)
        preprocessor = version_dir / "preprocessor.json"
        self.preprocessor = Preprocessor.load(preprocessor) if preprocessor.is_file() else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def score(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.preprocessor is not None:
            inputs = self.preprocessor.transform({name: values.reshape(-1) for name, values in inputs.items()})
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, inputs)))

    def answer(self, body: bytes) -> dict:
        return encode_outputs(self.score(decode_inputs(json.loads(body))))

    def answer_many(self, bodies: list[bytes]) -> list[dict]:
        """Several requests in one model call, as a batcher does: rows concatenated, then split back."""
        requests = [decode_inputs(json.loads(body)) for body in bodies]
        rows = [len(next(iter(inputs.values()))) for inputs in requests]
        merged = {name: np.concatenate([inputs[name] for inputs in requests]) for name in requests[0]}
        bounds = np.cumsum(rows)[:-1]
        parts = {name: np.split(values, bounds) for name, values in self.score(merged).items()}
        return [encode_outputs({name: split[i] for name, split in parts.items()}) for i in range(len(bodies))]
