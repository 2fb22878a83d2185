"""What every benchmark here shares: free loopback ports and where results go."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


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
    """benchmarks/results/<benchmark>-<date>.json: the figures docs/speed.md quotes."""
    out = RESULTS / f"{result['benchmark']}-{result['date']}.json"
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out


WRK = shutil.which("wrk")
"""Debian's wrk (make bench-env installs it): the load generator of every HTTP throughput point."""


def drive(
    url: str, body: Path, concurrency: int, duration_s: float, warmup_s: float, headers: dict | None = None
) -> dict:
    """One closed-loop point, from wrk (compiled, so the load generator does not compete with the
    server for the cores as a Python client would), else from loadgen.py; in a process of its own."""
    if WRK is not None:
        return drive_wrk(url, body, concurrency, duration_s, warmup_s, headers or {})
    command = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--body", str(body)]
    for key, value in (headers or {}).items():
        command += ["--header", f"{key}:{value}"]
    command += ["--concurrency", str(concurrency), "--duration-s", str(duration_s), "--warmup-s", str(warmup_s)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def drive_wrk(url: str, body: Path, concurrency: int, duration_s: float, warmup_s: float, headers: dict) -> dict:
    """wrk with `concurrency` connections (two threads at most: two cores here), a warm-up run first."""
    env = {**os.environ, "WRK_BODY": str(body), "WRK_HEADERS": "\n".join(f"{k}:{v}" for k, v in headers.items())}
    threads = str(min(2, concurrency))

    def run(seconds: float) -> dict:
        command = [WRK, "-t", threads, "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--timeout", "30s"]
        command += ["-s", str(HERE / "wrk_post.lua"), url]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    if warmup_s > 0:
        run(warmup_s)
    result = run(duration_s)
    answered = result["requests"] - result["errors"]
    return {
        "concurrency": concurrency,
        "requests": answered,
        "errors": result["errors"],
        "requests_per_s": round(answered / (result["duration_us"] / 1e6), 1),
        "p50_ms": round(result["p50_us"] / 1000, 2),
        "p99_ms": round(result["p99_us"] / 1000, 2),
        "load_generator": "wrk",
    }


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

    from serve_app.config import free_port

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
