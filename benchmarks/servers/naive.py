"""Naive serving, the "Flask serving" teams migrate from: one FastAPI process under uvicorn,
ONNX Runtime called per request, no batching.

    python benchmarks/servers/naive.py --repository R --model fraud=1 --model ffn=1 --port P
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).parent))
from plain import PlainScorer


def make_app(scorers: dict[str, PlainScorer]) -> FastAPI:
    app = FastAPI()

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> JSONResponse:
        return JSONResponse(scorers[model].answer(await request.body()))

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repository", required=True)
    parser.add_argument("--model", action="append", required=True, help="name=version")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    chosen = dict(item.split("=") for item in args.model)
    scorers = {name: PlainScorer(Path(args.repository) / name / version) for name, version in chosen.items()}
    uvicorn.run(make_app(scorers), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
