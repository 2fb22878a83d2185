"""What every benchmark here shares: free loopback ports and where results go."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def result_header(benchmark: str) -> dict:
    """What every result file starts with: which benchmark, when, on what."""
    import datetime
    import os
    import platform

    return {
        "benchmark": benchmark,
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def write_result(result: dict) -> Path:
    """benchmarks/results/<benchmark>-<date>.json: the figures the README quotes."""
    out = RESULTS / f"{result['benchmark']}-{result['date']}.json"
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out


def drive(
    url: str, body: Path, concurrency: int, duration_s: float, warmup_s: float, headers: dict | None = None
) -> dict:
    """One closed-loop point from loadgen.py, in a process of its own."""
    command = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--body", str(body)]
    for key, value in (headers or {}).items():
        command += ["--header", f"{key}:{value}"]
    command += ["--concurrency", str(concurrency), "--duration-s", str(duration_s), "--warmup-s", str(warmup_s)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def median_point(points: list[dict]) -> dict:
    """Median throughput and latencies of repeated points."""
    return {key: round(statistics.median(p[key] for p in points), 2) for key in ("requests_per_s", "p50_ms", "p99_ms")}


def demo_workdir() -> tuple[Path, Path, Path]:
    """A fresh demo repository, a storage folder beside it, and a one-row fraud request body."""
    import tempfile

    from serve_app.demo import build_demo_repository, request_columns, synthetic_transactions
    from serve_app.protocol.rest import request_body

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    repository, storage, body = workdir / "model_repository", workdir / "storage", workdir / "request.json"
    build_demo_repository(repository)
    body.write_text(json.dumps(request_body(request_columns(synthetic_transactions(1, seed=6)))))
    return repository, storage, body


def start_serve() -> int:
    """A local Ray cluster with Serve's HTTP proxy on a free loopback port; returns the port."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def round_fits(round_index: int, elapsed_s: float, round_s: float, budget_s: float) -> bool:
    """Whether another off/on round fits in the budget (the first always runs)."""
    if round_index > 1 and elapsed_s + round_s > budget_s:
        print(f"round {round_index} skipped: it would not fit in --budget-s {budget_s:g}", file=sys.stderr)
        return False
    return True
