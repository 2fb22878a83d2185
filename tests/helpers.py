"""Request builders the tests share."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from ray import serve

from serve_app.protocol.raw import tensor_to_raw
from serve_app.protocol.tensors import datatype_of


def binary_body(tensors: dict[str, np.ndarray], **document) -> tuple[bytes, int]:
    """A binary-extension request as tritonclient.http builds it: JSON header, then each tensor's bytes."""
    inputs, chunks = [], []
    for name, array in tensors.items():
        raw = tensor_to_raw(array)
        shape = list(array.shape)
        parameters = {"binary_data_size": len(raw)}
        inputs.append({"name": name, "datatype": datatype_of(array), "shape": shape, "parameters": parameters})
        chunks.append(raw)
    header = json.dumps({"inputs": inputs, **document}).encode()
    return header + b"".join(chunks), len(header)


def serve_deploy(dashboard_url: str, application: dict, config_path: Path, ready: Callable[[], bool]) -> None:
    """`serve deploy` one application, as ops do, and wait until it runs and `ready()` holds."""
    config_path.write_text(yaml.safe_dump({"applications": [application]}))
    serve_cli = str(Path(sys.executable).parent / "serve")
    subprocess.run([serve_cli, "deploy", str(config_path), "--address", dashboard_url], check=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = serve.status().applications.get(application["name"])
        if status is not None and status.status == "RUNNING" and ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"'{application['name']}' did not become ready: {serve.status()}")


def snapshot(root: Path) -> list[str]:
    """Every path under a folder: equal snapshots mean nothing was added, removed or left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
