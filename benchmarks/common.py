"""What every benchmark here shares: free loopback ports and where results go."""

from __future__ import annotations

import json
import socket
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_result(result: dict) -> Path:
    """benchmarks/results/<benchmark>-<date>.json: the figures the README quotes."""
    out = RESULTS / f"{result['benchmark']}-{result['date']}.json"
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out
