"""JSON vs binary REST vs gRPC for a 64x256 FP32 input, side by side in one run.

    python benchmarks/protocol_formats.py [--duration-s 10] [--concurrency 1 8]

Serves the demo's `dense` model (256 -> 64 projection) on a local Ray cluster and drives it
from a separate load-generator process with the same tensor in each encoding. Also times the
server's request decoding alone, in this process. Writes benchmarks/results/protocol_formats-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import yaml
from common import result_header, write_result
from ray import serve

from graphs.single_model import build_app
from serve_app.config import free_port
from serve_app.demo import build_demo_repository
from serve_app.protocol import grpc_codec
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.raw import tensor_to_raw
from serve_app.protocol.rest import parse_infer_request, request_body

HERE = Path(__file__).parent
LOCAL_CONFIG = HERE.parent / "configs" / "local.yaml"
SHAPE = (64, 256)


def encodings(tensor: np.ndarray) -> dict[str, tuple[bytes, dict]]:
    """The same request three ways: body bytes and HTTP headers."""
    json_body = json.dumps(request_body({"INPUT": tensor})).encode()
    raw = tensor_to_raw(tensor)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "FP32",
                    "shape": list(SHAPE),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    grpc_request = pb.ModelInferRequest(model_name="dense")
    grpc_request.inputs.add(name="INPUT", datatype="FP32", shape=list(SHAPE))
    grpc_request.raw_input_contents.append(raw)
    return {
        "rest_json": (json_body, {}),
        "rest_binary": (header + raw, {"Inference-Header-Content-Length": str(len(header))}),
        "grpc": (grpc_request.SerializeToString(), {}),
    }


def decode_us(name: str, body: bytes, headers: dict, repeat: int = 200) -> float:
    """Microseconds the server spends turning one request body into numpy."""
    if name == "grpc":
        decode = lambda: grpc_codec.request_from_proto(pb.ModelInferRequest.FromString(body))  # noqa: E731
    else:
        length = int(headers["Inference-Header-Content-Length"]) if headers else None
        decode = lambda: parse_infer_request(body, length)  # noqa: E731
    decode()
    start = time.perf_counter()
    for _ in range(repeat):
        decode()
    return (time.perf_counter() - start) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    repository = workdir / "model_repository"
    build_demo_repository(repository)
    tensor = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    bodies = encodings(tensor)

    http_port, grpc_port = free_port(), free_port()
    grpc_options = yaml.safe_load(LOCAL_CONFIG.read_text())["grpc_options"] | {"port": grpc_port}
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options)
    serve.run(build_app({"repository": str(repository), "models": ["dense"]}), name="bench", route_prefix="/")
    points = []
    for name, (body, headers) in bodies.items():
        path = workdir / f"{name}.bin"
        path.write_bytes(body)
        for concurrency in args.concurrency:
            command = [sys.executable, str(HERE / "loadgen.py"), "--body", str(path)]
            command += ["--concurrency", str(concurrency), "--duration-s", str(args.duration_s)]
            if name == "grpc":
                command += ["--grpc", f"127.0.0.1:{grpc_port}"]
            else:
                command += ["--url", f"http://127.0.0.1:{http_port}/v2/models/dense/infer"]
                command += [f"--header={k}:{v}" for k, v in headers.items()]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            points.append({"format": name, "request_bytes": len(body), **result})
    serve.shutdown()
    ray.shutdown()

    decoding = {name: round(decode_us(name, body, headers), 1) for name, (body, headers) in bodies.items()}
    result = {
        **result_header("protocol_formats"),
        "input": f"FP32 {SHAPE[0]}x{SHAPE[1]}",
        "decode_us": decoding,
        "points": points,
    }
    out = write_result(result)
    print("| format | request bytes | server decode (µs) | concurrency | req/s | vs JSON | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    baseline = {p["concurrency"]: p["requests_per_s"] for p in points if p["format"] == "rest_json"}
    for p in points:
        ratio = p["requests_per_s"] / baseline[p["concurrency"]] if baseline[p["concurrency"]] else float("nan")
        row = (p["format"], p["request_bytes"], decoding[p["format"]], p["concurrency"], p["requests_per_s"])
        print("| {} | {:,} | {} | {} | {} |".format(*row), f"{ratio:.1f}x | {p['p50_ms']} | {p['p99_ms']} |")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
