"""Triton's own load generator, perf_analyzer, driving each demo model of configs/local.yaml (as
`make run` serves it) over HTTP and gRPC, building its requests from the server's model
configuration alone: what a Triton user runs first against a new server.

perf_analyzer is not on the package index as a program of its own; tritonclient's wheels up to
2.41 carry it. `--install` (`make perf-analyzer`) takes that wheel, and CUDA's runtime library it
links against (nvidia-cuda-runtime-cu12, no GPU needed), into benchmarks/.triton/; Debian's libb64
(`apt-get install libb64-0d`) provides the one other library it needs.

    python benchmarks/triton_perf.py --install
    python benchmarks/triton_perf.py [--models fraud,echo,dense] [--concurrency 1,8] [--measurement-ms 4000]

Results: benchmarks/results/perf-analyzer-<date>.json and .md. perf_analyzer measures from its
own process, which shares the machine's cores with the server: compare its figures with each
other, not with wrk's.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from common import HERE, RESULTS, result_header, write_result
from stacks import Stack, build_workdir, write_bodies

from serve_app.demo import ECHO_DATATYPES

TOOLS = HERE / ".triton"
PERF_ANALYZER = TOOLS / "perf_analyzer"
CUDA_RUNTIME = TOOLS / "cuda"
WHEELS = {"tritonclient==2.41.1": "manylinux1_x86_64", "nvidia-cuda-runtime-cu12==12.9.79": "manylinux2014_x86_64"}
ECHO_COLUMNS = 4
"""The echo model's inputs have a variable per-row dimension: perf_analyzer must be told its size
(--shape), as Triton's own tools require for any variable dimension."""
FIELDS = {
    "Inferences/Second": "throughput",
    "p50 latency": "p50_us",
    "p99 latency": "p99_us",
    "Avg latency": "avg_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
}


def install() -> None:
    wheels = TOOLS / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for requirement, platform in WHEELS.items():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--platform", platform, "--python-version", "3.11", "-d", str(wheels), requirement],
            check=True,
        )  # fmt: skip
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.endswith("/bin/perf_analyzer"):
                    PERF_ANALYZER.write_bytes(archive.read(member))
                    PERF_ANALYZER.chmod(0o755)
                elif member.endswith("lib/libcudart.so.12"):
                    CUDA_RUNTIME.mkdir(exist_ok=True)
                    (CUDA_RUNTIME / "libcudart.so.12").write_bytes(archive.read(member))
    missing = [line for line in _ldd().splitlines() if "not found" in line]
    if missing:
        sys.exit(f"perf_analyzer still misses {missing}: apt-get install libb64-0d")
    print(f"perf_analyzer installed at {PERF_ANALYZER}")


def _env() -> dict:
    return {**os.environ, "LD_LIBRARY_PATH": str(CUDA_RUNTIME)}


def _ldd() -> str:
    return subprocess.run(["ldd", str(PERF_ANALYZER)], capture_output=True, text=True, env=_env()).stdout


def run(model: str, protocol: str, url: str, concurrency: str, measurement_ms: int, out: Path) -> list[dict]:
    command = [
        str(PERF_ANALYZER), "-m", model, "-i", protocol, "-u", url, "--concurrency-range", concurrency,
        "--measurement-interval", str(measurement_ms), "--stability-percentage", "50", "--max-trials", "4",
        "-f", str(out),
    ]  # fmt: skip
    if model == "echo":
        command += [f"--shape=INPUT_{d}:{ECHO_COLUMNS}" for d in ECHO_DATATYPES]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"perf_analyzer {model} over {protocol} failed:\n{result.stdout[-2000:]}{result.stderr}")
    print(result.stdout[-1500:], flush=True)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    return [
        {"model": model, "protocol": protocol, "concurrency": int(r["Concurrency"])}
        | {key: float(r[column]) for column, key in FIELDS.items() if column in r}
        for r in rows
    ]


def markdown(result: dict) -> str:
    lines = [
        f"# perf_analyzer against configs/local.yaml ({result['date']})",
        "",
        "Requests built by perf_analyzer from the server's model configuration (echo: `--shape` for its",
        "variable dimension); one row per request. Latencies in ms; server columns are what perf_analyzer",
        "read from the statistics extension (average per request). For `fraud`, perf_analyzer reads the",
        "newest version's statistics (v2, Triton's default version), while local.yaml's experiment sends",
        "95% of requests to v1: its server columns describe v2's 5%.",
        "",
        "| model | protocol | concurrency | infer/s | p50 | p99 | server queue | server compute |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        compute = p.get("server_compute_input_us", 0) + p.get("server_compute_infer_us", 0)
        lines.append(
            f"| {p['model']} | {p['protocol']} | {p['concurrency']} | {p['throughput']:,.1f} | "
            f"{p['p50_us'] / 1000:.2f} | {p['p99_us'] / 1000:.2f} | {p.get('server_queue_us', 0) / 1000:.2f} | "
            f"{compute / 1000:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true", help="fetch perf_analyzer into benchmarks/.triton/")
    parser.add_argument("--models", default="fraud,echo,dense")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--concurrency", default="1:8:7", help="perf_analyzer's range, start:end:step")
    parser.add_argument("--measurement-ms", type=int, default=4000)
    args = parser.parse_args()
    if args.install:
        install()
        return
    if not PERF_ANALYZER.exists():
        sys.exit("perf_analyzer is missing: make perf-analyzer")
    workdir = build_workdir()
    write_bodies(workdir, ["fraud"], [1])
    points = []
    with Stack("local", workdir) as stack:
        for model in args.models.split(","):
            for protocol in args.protocols.split(","):
                port = stack.port if protocol == "http" else stack.grpc_port
                out = workdir / f"perf-{model}-{protocol}.csv"
                points += run(model, protocol, f"127.0.0.1:{port}", args.concurrency, args.measurement_ms, out)
    result = {**result_header("perf-analyzer"), "settings": vars(args), "points": points}
    out = write_result(result)
    (RESULTS / f"perf-analyzer-{result['date']}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"written to {out} (and .md)")


if __name__ == "__main__":
    main()
