"""A user's install: the project without extras, `pip install -c requirements.lock <project>`, into a
fresh virtual environment of INSTALL_PYTHON (the Makefile's $(PYTHON); default python3). Neither torch
nor alibi-detect comes with it; it builds the demo repository, serves configs/local.yaml in a Ray
cluster of its own and answers a V2 inference request; a PyTorch command names the extra it needs.

`make check-install` runs these (marker `install`); `make test` leaves them out. pip here reads this
machine's pip config, so wheels may come from its local folders (tests/install/test_lock.py checks the
lock against the public index). The sizes of the lean and the development environment go to
test-output/install-sizes.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import psutil
import pytest
import yaml

from serve_app.config import RAY_SERVE_ENV, free_port, haproxy_side_ports_env
from serve_app.demo import request_columns, synthetic_transactions
from serve_app.features import Preprocessor
from serve_app.large_models import dense_layers
from serve_app.protocol.rest import request_body
from tests.helpers import wait_until

pytestmark = [pytest.mark.install, pytest.mark.timeout(1800)]

ROOT = Path(__file__).parents[2]
PYTHON = os.environ.get("INSTALL_PYTHON") or "python3"
SIZES = ROOT / "test-output" / "install-sizes.json"
READY_DEADLINE_S = 600
"""Starting Ray and deploying the demo graph on a busy two-core machine."""


def run(command: list, **options) -> subprocess.CompletedProcess:
    """`command`, its output captured; a failure shows the output's end."""
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, **options)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{(result.stdout + result.stderr)[-5000:]}"
    return result


def environment(venv: Path, **extra: str) -> dict[str, str]:
    """This process's environment for commands of `venv`, without the development venv's traces."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    inherited = {k: v for k, v in inherited.items() if not k.startswith("RAY_")}
    return {**inherited, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", **extra}


def size_mib(path: Path) -> float:
    """What `du` counts for `path`, in MiB."""
    return int(run(["du", "-sk", path]).stdout.split()[0]) / 1024


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> Path:
    """A fresh virtual environment holding the project without extras, installed from a copy of the
    checkout (so the build writes nothing into it), with the lock as constraints."""
    work = tmp_path_factory.mktemp("lean")
    source, venv = work / "serve-app", work / "venv"
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # not a file deleted in the working tree
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    started = time.monotonic()
    run([PYTHON, "-m", "venv", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "-c", ROOT / "requirements.lock", source], env=environment(venv))
    version = run([python, "-c", "import platform; print(platform.python_version())"]).stdout.strip()
    print(f"\nlean venv: Python {version}, installed in {time.monotonic() - started:.0f} s: {venv}", flush=True)
    return venv


@pytest.fixture(scope="module")
def repository(lean, tmp_path_factory) -> Path:
    """The demo repository, built by the lean environment's `serve-app demo build`."""
    root = tmp_path_factory.mktemp("demo") / "model_repository"
    run([lean / "bin" / "serve-app", "demo", "build", "--out", root], env=environment(lean))
    return root


def test_the_lean_install_has_neither_torch_nor_alibi_detect(lean):
    probe = "import importlib.util; print([m for m in ('torch', 'alibi_detect') if importlib.util.find_spec(m)])"
    assert run([lean / "bin" / "python", "-c", probe], env=environment(lean)).stdout.strip() == "[]"


def test_the_sizes_of_the_lean_and_the_development_environment(lean):
    sizes = {
        "python": run(
            [lean / "bin" / "python", "-c", "import platform; print(platform.python_version())"]
        ).stdout.strip(),
        "lean_venv_mib": round(size_mib(lean), 1),
        "lean_venv_installs": "serve-app (no extras)",
        "dev_venv_mib": round(size_mib(Path(sys.prefix)), 1),
        "dev_venv": str(Path(sys.prefix)),
        "unit": "MiB (du -sk / 1024)",
    }
    SIZES.parent.mkdir(exist_ok=True)
    SIZES.write_text(json.dumps(sizes, indent=1) + "\n")
    print(f"\n{SIZES.relative_to(ROOT)}: {json.dumps(sizes)}", flush=True)


def test_a_pytorch_command_fails_naming_the_torch_extra(lean, repository, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"")
    command = [
        lean / "bin" / "serve-app",
        "export",
        "--repository",
        repository,
        "--model",
        "fraud",
        "--torch",
        model,
        "--example",
        repository / "fraud" / "1" / "reference.parquet",
    ]
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=environment(lean))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "serve-app[torch]" in result.stderr, result.stderr


def stop(process: subprocess.Popen, ray_temp: Path) -> None:
    """serve run as Ctrl-C stops it (Serve, then the Ray cluster it started), and then whatever of
    that cluster is left: its process group, and any process whose command line names its temp dir."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the session serve run was started in
    left = [p for p in psutil.process_iter(["cmdline"]) if _of_cluster(p, ray_temp)]
    for leftover in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(left, timeout=30)


@dataclass
class Served:
    """`serve run` of the lean environment: its process, its base URL and the ports clients use."""

    process: subprocess.Popen
    url: str
    ports: tuple[int, int]
    ray_temp: Path


@pytest.fixture(scope="module")
def served(lean, repository, tmp_path_factory) -> Served:
    """configs/local.yaml, on the demo repository, free ports and temporary storage, served by the lean
    environment's `serve run` in a Ray cluster of its own, once /v2/health/ready says so."""
    work = tmp_path_factory.mktemp("serve")
    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    http_port, grpc_port = free_port(), free_port()
    config["http_options"]["port"], config["grpc_options"]["port"] = http_port, grpc_port
    (application,) = config["applications"]
    application["args"].update(repository=str(repository), storage_uri=str(work / "storage"))
    (work / "serve.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # A Ray temp dir of its own (short: Ray's socket paths must fit 107 bytes), and RAY_ADDRESS=local:
    # ray.init in serve run starts a new cluster, never attaching to another one on this machine.
    ray_temp = Path(tempfile.mkdtemp(prefix="ray-lean-", dir="/tmp"))
    ray_env = {**RAY_SERVE_ENV, **haproxy_side_ports_env(free_port(), free_port())}
    env = environment(lean, RAY_ADDRESS="local", RAY_TMPDIR=str(ray_temp), RAY_USAGE_STATS_ENABLED="0", **ray_env)
    url = f"http://127.0.0.1:{http_port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    log_path = work / "serve-run.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(lean / "bin" / "serve"), "run", str(work / "serve.yaml")],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = time.monotonic()
        wait_until(lambda: process.poll() is not None or ready(), timeout_s=READY_DEADLINE_S)
        output = log_path.read_text()[-6000:]
        assert process.poll() is None, f"serve run exited {process.returncode}:\n{output}"
        assert ready(), f"not ready after {READY_DEADLINE_S} s:\n{output}"
        print(f"\nserving {url} after {time.monotonic() - started:.0f} s", flush=True)
        yield Served(process, url, (http_port, grpc_port), ray_temp)
    finally:
        stop(process, ray_temp)
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_it_serves_the_demo_and_scores_a_v2_request(served, repository):
    frame = synthetic_transactions(8, seed=5)
    body = request_body(request_columns(frame), request_id="lean-install")
    response = httpx.post(f"{served.url}/v2/models/fraud/versions/1/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("fraud", "1", "lean-install")
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("fraud_probability", "FP32", [8])

    # The scores the repository's fraud v1 gives these rows, computed here: its preprocessor, then
    # its dense layers (ReLU between them) and a sigmoid, in float64.
    version = repository / "fraud" / "1"
    h = Preprocessor.load(version / "preprocessor.json").transform_frame(frame).astype(np.float64)
    layers = dense_layers(onnx.load(version / "model.onnx"))
    for index, (weight, bias) in enumerate(layers):
        h = h @ weight + bias
        h = np.maximum(h, 0.0) if index < len(layers) - 1 else h
    np.testing.assert_allclose(output["data"], 1.0 / (1.0 + np.exp(-h.ravel())), rtol=1e-4, atol=1e-6)


def test_ctrl_c_leaves_nothing_listening_on_the_clients_ports(served):
    """Last in this module: it stops the server. HAProxy, which holds ports 8000 and 9000 (here free
    ones), is a child of a Ray actor and must go with the cluster."""
    served.process.send_signal(signal.SIGINT)
    served.process.wait(timeout=120)
    listening = {port: _listening(port) for port in served.ports}
    leftover = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if _of_cluster(p, served.ray_temp)]
    assert not any(listening.values()) and not leftover, f"after Ctrl-C: {listening}, processes {leftover}"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _of_cluster(process: psutil.Process, ray_temp: Path) -> bool:
    return any(str(ray_temp) in part for part in process.info["cmdline"] or [])
