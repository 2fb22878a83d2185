"""Closed-loop load generator, run in its own process so it does not share the server's GIL.

    python benchmarks/loadgen.py --url URL --body request.bin [--header K:V ...] --concurrency 32 --duration-s 10
    python benchmarks/loadgen.py --grpc HOST:PORT --body model_infer_request.bin --concurrency 8

For gRPC the body is a serialized ModelInferRequest, sent as raw bytes to
/inference.GRPCInferenceService/ModelInfer (no stubs: nothing to parse on the client side).
Prints one JSON object: requests, errors, requests_per_s, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


async def _worker(send: Callable[[], Awaitable[bool]], stop_at: float, latencies: list, errors: list) -> None:
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        if await send():
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(1)


async def _drive(send, concurrency: int, duration_s: float, warmup_s: float) -> dict:
    await asyncio.gather(*(_worker(send, time.perf_counter() + warmup_s, [], []) for _ in range(concurrency)))
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(*(_worker(send, start + duration_s, latencies, errors) for _ in range(concurrency)))
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


async def run_http(url: str, body: bytes, headers: dict, concurrency: int, duration_s: float, warmup_s: float):
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def send() -> bool:
            response = await client.post(url, content=body, headers=headers)
            return response.status_code == 200

        return await _drive(send, concurrency, duration_s, warmup_s)


async def run_grpc(target: str, body: bytes, concurrency: int, duration_s: float, warmup_s: float):
    import grpc

    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(MODEL_INFER)

        async def send() -> bool:
            try:
                await call(body, timeout=60)
            except grpc.aio.AioRpcError:
                return False
            return True

        return await _drive(send, concurrency, duration_s, warmup_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", help="HTTP URL to POST the body to")
    parser.add_argument("--grpc", help="host:port of a gRPC inference service")
    parser.add_argument("--body", required=True, type=Path, help="file holding the request body")
    parser.add_argument("--header", action="append", default=[], help="HTTP header as Name:value (repeatable)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    args = parser.parse_args()
    body = args.body.read_bytes()
    if args.grpc:
        result = asyncio.run(run_grpc(args.grpc, body, args.concurrency, args.duration_s, args.warmup_s))
    else:
        headers = dict(h.split(":", 1) for h in args.header) | {"Content-Type": "application/json"}
        result = asyncio.run(run_http(args.url, body, headers, args.concurrency, args.duration_s, args.warmup_s))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
