"""Single-row requests through the single-model graph, next to the same model in-process.

    python benchmarks/graph_latency.py [--duration-s 10] [--concurrency 1 32]

Starts a local Ray cluster on this machine, serves the demo graph, drives it from a
separate load-generator process, and writes benchmarks/results/graph_latency-<date>.json.
Nothing here is asserted: the figures are for reading side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
from common import result_header, write_result
from ray import serve

from graphs.single_model import build_app
from serve_app.config import free_port
from serve_app.demo import build_demo_repository, request_columns, synthetic_transactions
from serve_app.protocol.dataplane import LocalEndpoint
from serve_app.protocol.rest import request_body
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner

HERE = Path(__file__).parent


def in_process_rows_per_s(endpoint: LocalEndpoint, rows: int, duration_s: float) -> float:
    """The limit: preprocessing and ONNX Runtime in this process, no serving at all."""
    columns = request_columns(synthetic_transactions(rows, seed=5))
    endpoint.predict(columns)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration_s:
        endpoint.predict(columns)
        calls += 1
    return calls * rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repository", help="model repository; default: build the demo into a temporary folder")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    repository = Path(args.repository) if args.repository else workdir / "model_repository"
    if not args.repository:
        build_demo_repository(repository)
    version = ModelRepository(repository).served_versions("fraud")[-1]
    endpoint = LocalEndpoint(version, load_runner(version.config, version.model_file))
    limit = {
        f"batch_{rows}": round(in_process_rows_per_s(endpoint, rows, args.duration_s / 2), 1)
        for rows in (1, version.config.dynamic_batching.max_batch_size, version.config.max_batch_size)
    }

    port = free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"repository": str(repository), "models": ["fraud"]}), name="bench", route_prefix="/")
    body = workdir / "request.json"
    body.write_text(json.dumps(request_body(request_columns(synthetic_transactions(1, seed=6)))))
    url = f"http://127.0.0.1:{port}/v2/models/fraud/infer"
    graph = []
    for concurrency in args.concurrency:
        command = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--body", str(body)]
        command += ["--concurrency", str(concurrency), "--duration-s", str(args.duration_s)]
        graph.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    serve.shutdown()
    ray.shutdown()

    result = {
        **result_header("graph_latency"),
        "model": f"fraud v{version.version}",
        "in_process_rows_per_s": limit,
        "graph_single_row": graph,
    }
    out = write_result(result)
    print("| path | concurrency | req/s (rows/s) | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name, value in limit.items():
        print(f"| in-process, {name.replace('_', ' ')} | 1 | {value:,.0f} rows/s | | |")
    for point in graph:
        row = (point["concurrency"], f"{point['requests_per_s']:,.0f}", point["p50_ms"], point["p99_ms"])
        print("| graph, 1 row | {} | {} | {} | {} |".format(*row))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
