"""Closed-loop HTTP load generator, run in its own process so it does not share the server's GIL.

    python benchmarks/loadgen.py --url URL --body request.json --concurrency 32 --duration-s 10

Prints one JSON object: requests, errors, requests_per_s, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np


async def _worker(client: httpx.AsyncClient, url: str, body: bytes, stop_at: float, latencies: list, errors: list):
    headers = {"Content-Type": "application/json"}
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        response = await client.post(url, content=body, headers=headers)
        if response.status_code == 200:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(response.status_code)


async def run(url: str, body: bytes, concurrency: int, duration_s: float, warmup_s: float) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await asyncio.gather(
            *(_worker(client, url, body, time.perf_counter() + warmup_s, [], []) for _ in range(concurrency))
        )
        latencies: list[float] = []
        errors: list[int] = []
        start = time.perf_counter()
        await asyncio.gather(
            *(_worker(client, url, body, start + duration_s, latencies, errors) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, type=Path, help="file holding the JSON request body")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.body.read_bytes(), args.concurrency, args.duration_s, args.warmup_s))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
