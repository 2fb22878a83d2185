"""Request builders the tests share."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import ray
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
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"'{application['name']}' failed to deploy: {status.message} {status.deployments}")
        time.sleep(0.5)
    raise TimeoutError(f"'{application['name']}' did not become ready: {serve.status()}")


def snapshot(root: Path) -> list[str]:
    """Every path under a folder: equal snapshots mean nothing was added, removed or left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class Traffic:
    """A client sending requests back to back from its own thread, counting every answer."""

    def __init__(self, url: str, body: dict):
        self.url, self.body, self.answers, self.failures, self.slowest_s = url, body, Counter(), [], 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                headers = {"x-routing-key": f"user-{n}"}
                start = time.perf_counter()
                try:
                    response = http.post("/v2/models/fraud/infer", json=self.body, headers=headers)
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                    continue
                self.slowest_s = max(self.slowest_s, time.perf_counter() - start)
                if response.status_code == 200:
                    self.answers[response.headers["x-model-version"]] += 1
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=90)
        print(f"traffic: {dict(self.answers)} answered, {len(self.failures)} failed, slowest {self.slowest_s:.2f} s")


def graph_application(name: str, args: dict, **fields) -> dict:
    """A Serve config's application: the champion/challenger graph with these args, at /<name>."""
    graph = "graphs.champion_challenger:build_app"
    return {"name": name, "route_prefix": f"/{name}", "import_path": graph, "args": args, **fields}


STALE_ROUTER = "config changed since this router was built"


def send_change(http: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
    """A management call, sent again while it reaches a router of the graph before the last change
    (409: the config moved since that router was built) until a router of the current graph takes it."""

    def attempt() -> list[httpx.Response] | None:
        response = http.request(method, path, **kwargs)
        return None if response.status_code == 409 and STALE_ROUTER in response.text else [response]

    taken = wait_until(attempt, 90)
    assert taken, f"no router of the current graph took {method} {path}"
    return taken[0]


def wait_until(condition: Callable, timeout_s: float, interval_s: float = 0.5):
    """Poll until condition() is truthy; its last value (falsy when time ran out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


def scrape_metrics(metrics_url: str) -> dict[str, list[tuple[dict, float]]]:
    """Ray's Prometheus text, by metric name: (labels, value) per series."""
    series = defaultdict(list)
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        match = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            series[match.group(1)].append((labels, float(match.group(3))))
    return series


def metric_total(series: dict, application: str, name: str, **labels) -> float:
    """The sum over one application's series (Serve tags each with it) having these labels."""
    labels["application"] = application
    return sum(v for found, v in series.get(name, []) if all(found.get(k) == str(x) for k, x in labels.items()))


def replica_log_lines(application: str, deployment: str = "Router") -> list[str]:
    """Every line the deployment's replicas wrote to their Serve log files on this node."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    paths = logs.glob(f"replica_{application}_{deployment}_*.log")
    return [line for path in paths for line in path.read_text(errors="replace").splitlines()]
