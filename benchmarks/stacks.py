"""The same models and request stream through every serving stack, side by side, in one run.

    python benchmarks/stacks.py [--stacks naive,vanilla,mlserver,single,full] [--duration-s 5]
                                [--concurrency 1,8,32,64] [--models fraud,ffn] [--smoke]

Stacks (each started in processes of its own, then stopped before the next):
  limit     the model in-process with ONNX Runtime: rows/s at batch 1 and at 256 rows a call
  naive     one FastAPI process under uvicorn calling ONNX Runtime per request (servers/naive.py)
  vanilla   Ray Serve as a competent user deploys it by hand: one deployment per model, @serve.batch,
            max_ongoing_requests 64, throughput mode, Serve's default ingress (servers/ray_stack.py
            --stack vanilla); vanilla:RAY_SERVE_ENABLE_HA_PROXY=1 puts Ray's HAProxy in front instead
  hop       vanilla behind one more deployment that forwards the body: what a second hop costs
  mlserver  MLServer with adaptive batching (32 rows, 5 ms), in its own environment
            (benchmarks/.mlserver, made by `make bench-env`), same scorer (servers/mlserver_runtime.py)
  single    serve-app's single-model graph
  full      serve-app's full graph: challenger at 5%, shadow at 100%, drift monitor on (fraud)
  local     configs/local.yaml under `serve run`, as `make run` serves it (fraud only: its models are
            the demo's), through Ray's HAProxy ingress (serve_app/config.py: RAY_SERVE_ENV)
Variants, to compare settings in one run: single+replica (preprocessing in a replica of its own),
single+nomerge (the router sends each request alone: no batching before the hop),
single+ingress=N (the router's max_ongoing_requests), single+batch=N and single+wait=S (the models'
dynamic_batching max_batch_size and batch_wait_timeout_s;
+batch=1 is unbatched), single:RAY_SERVE_FLAG=value+... (Ray Serve's environment flags, for that
stack's cluster); they combine, e.g. single+batch=1+wait=0:RAY_SERVE_THROUGHPUT_OPTIMIZED=1.
Models: the demo fraud model (v2, raw transaction columns through its preprocessor) and ffn, a
38M-parameter feed-forward stack where batching matters. Requests of 1 row and of 256 rows (V2 JSON,
the same bytes for every stack; --format binary: Triton's binary tensor extension, which only the
serve-app stacks speak), closed-loop from wrk (else loadgen.py) in a separate process, at each
concurrency for --duration-s after --warmup-s. Peak memory: the RSS of every process of the stack,
sampled through each point. Writes benchmarks/results/stacks-<date>.json and .md and a plot of
throughput against p99. The headline per stack: the highest rows/s with p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml
from common import HERE, RESULTS, drive, result_header, write_result

from serve_app.config import RAY_SERVE_ENV, free_port, haproxy_side_ports_env
from serve_app.demo import build_demo_repository, request_columns, synthetic_transactions
from serve_app.large_models import BIG_DIMS, build_ffn_model
from serve_app.protocol.raw import tensor_to_raw
from serve_app.protocol.rest import request_body
from serve_app.protocol.tensors import numpy_dtype

sys.path.insert(0, str(HERE / "servers"))
from plain import PlainScorer, decode_inputs

ROOT = HERE.parent
SLA_MS = 50.0
MLSERVER = HERE / ".mlserver" / "bin" / "mlserver"
STACKS = ("naive", "vanilla", "hop", "mlserver", "single", "full", "local")
BATCHING_OPTIONS = {"batch": "max_batch_size", "wait": "batch_wait_timeout_s"}
INGRESS_OPTION = "ingress"
"""single+ingress=N: the router's max_ongoing_requests (GraphArgs.max_ongoing_requests_ingress)."""
ROUTERS_OPTION = "routers"
"""full+routers=N: router replicas (GraphArgs.num_replicas_ingress); full+inrouter: models in the router."""
SERVED = {"fraud": 2, "ffn": 1}


# -- the workload --------------------------------------------------------------------------


def build_workdir() -> Path:
    """The demo repository plus ffn, each with copies of its served version as challenger/shadow."""
    workdir = Path(tempfile.mkdtemp(prefix="stacks-"))
    repository = workdir / "repository"
    build_demo_repository(repository)
    build_ffn_model(repository)
    shutil.copytree(repository / "fraud" / "2", repository / "fraud" / "3")
    for version in (2, 3):
        shutil.copytree(repository / "ffn" / "1", repository / "ffn" / str(version))
    for model in ("fraud", "ffn"):
        config = repository / model / "config.yaml"
        config.write_text(config.read_text().replace("latest: 2", "latest: 3").replace("latest: 1", "latest: 3"))
    return workdir


def write_bodies(workdir: Path, models: list[str], sizes: list[int]) -> dict[tuple[str, int], Path]:
    bodies = {}
    rng = np.random.default_rng(0)
    for model in models:
        for rows in sizes:
            if model == "fraud":
                document = request_body(request_columns(synthetic_transactions(rows, seed=rows)))
            else:
                data = rng.standard_normal((rows, BIG_DIMS[0])).astype(np.float32)
                document = {
                    "inputs": [
                        {
                            "name": "embedding",
                            "datatype": "FP32",
                            "shape": list(data.shape),
                            "data": data.ravel().tolist(),
                        }
                    ]
                }
            path = workdir / f"{model}-{rows}.json"
            path.write_text(json.dumps(document))
            bodies[model, rows] = path
            binary, header_length = binary_body(document)
            (workdir / f"{model}-{rows}.bin").write_bytes(binary)
            (workdir / f"{model}-{rows}.bin.header").write_text(str(header_length))
    return bodies


def binary_body(document: dict) -> tuple[bytes, int]:
    """The same request in Triton's binary tensor extension: a JSON header, then each tensor's
    bytes; the outputs come back binary too."""
    inputs, chunks = [], []
    for tensor in document["inputs"]:
        data = [d.encode() if isinstance(d, str) else d for d in tensor["data"]]
        raw = tensor_to_raw(np.array(data, dtype=numpy_dtype(tensor["datatype"])).reshape(tensor["shape"]))
        described = {k: v for k, v in tensor.items() if k != "data"}
        inputs.append({**described, "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(chunks), len(header)


def limit(repository: Path, bodies: dict[tuple[str, int], Path]) -> list[dict]:
    """The model alone, in this process: ONNX Runtime on already-preprocessed tensors, every core."""
    points = []
    for (model, rows), body in bodies.items():
        scorer = PlainScorer(repository / model / str(SERVED[model]), threads=os.cpu_count())
        inputs = decode_inputs(json.loads(body.read_text()))
        if scorer.preprocessor is not None:
            inputs = scorer.preprocessor.transform({k: v.reshape(-1) for k, v in inputs.items()})
        scorer.session.run(None, inputs)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < 2.0:
            scorer.session.run(None, inputs)
            calls += 1
        elapsed = time.perf_counter() - start
        points.append(
            {
                "stack": "limit",
                "model": model,
                "rows": rows,
                "concurrency": 1,
                "errors": 0,
                "requests_per_s": round(calls / elapsed, 1),
                "rows_per_s": round(calls * rows / elapsed),
                "p50_ms": round(1000 * elapsed / calls, 3),
                "p99_ms": None,
                "peak_rss_mb": round(psutil.Process().memory_info().rss / 2**20),
            }
        )
    return points


# -- the stacks ----------------------------------------------------------------------------


class Stack:
    """A server in processes of its own: started, asked until it answers, then stopped."""

    def __init__(self, name: str, workdir: Path):
        self.name, self.workdir, self.port, self.grpc_port = name, workdir, free_port(), free_port()
        self.process: subprocess.Popen | None = None

    def command(self) -> tuple[list[str], dict]:
        repository = str(self.workdir / "repository")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), str(HERE / "servers")])}
        if self.name == "naive":
            models = [f"--model={m}={v}" for m, v in SERVED.items()]
            return [
                sys.executable,
                str(HERE / "servers" / "naive.py"),
                "--repository",
                repository,
                "--port",
                str(self.port),
                *models,
            ], env
        if self.name == "mlserver":
            return [str(MLSERVER), "start", str(self._mlserver_settings())], env
        # single+replica+batch=1: options after '+'; single:RAY_SERVE_X=0+...: Serve's flags
        layout, _, flags = self.name.partition(":")
        env.update(dict(flag.split("=", 1) for flag in flags.split("+") if flag))
        if layout == "local":  # make run's environment; flags given here win
            env = {**RAY_SERVE_ENV, **haproxy_side_ports_env(free_port(), free_port()), **env}
            return [str(Path(sys.executable).parent / "serve"), "run", str(self._local_config())], env
        storage = self.workdir / f"storage-{len(list(self.workdir.glob('storage-*')))}"
        stack, *options = layout.split("+")
        settings = dict(option.split("=", 1) for option in options if "=" in option)
        ingress = settings.pop(INGRESS_OPTION, None)
        routers = settings.pop(ROUTERS_OPTION, None)
        if settings:
            repository = str(self._repository_with(settings))
        return [
            sys.executable,
            str(HERE / "servers" / "ray_stack.py"),
            "--stack",
            stack,
            "--repository",
            repository,
            "--storage",
            str(storage),
            "--port",
            str(self.port),
            "--preprocessing",
            "replica" if "replica" in options else "in_model",
            *(["--no-merge"] if "nomerge" in options else []),
            *(["--in-router"] if "inrouter" in options else []),
            *(["--routers", routers] if routers else []),
            *(["--max-ongoing-ingress", ingress] if ingress else []),
        ], env

    def _local_config(self) -> Path:
        """configs/local.yaml on this run's repository, storage and ports."""
        config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
        config["http_options"]["port"], config["grpc_options"]["port"] = self.port, self.grpc_port
        (application,) = config["applications"]
        storage = self.workdir / f"storage-{len(list(self.workdir.glob('storage-*')))}"
        application["args"].update(repository=str(self.workdir / "repository"), storage_uri=str(storage))
        path = self.workdir / f"{self.name.replace(':', '-')}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def serves(self, model: str) -> bool:
        """Whether this stack serves `model`: configs/local.yaml serves the demo's models only."""
        return not self.name.startswith("local") or model == "fraud"

    def _repository_with(self, batching: dict[str, str]) -> Path:
        """The benchmark repository with other dynamic_batching settings: edited configs, linked versions."""
        folder = self.workdir / "repository-{}".format("-".join(f"{k}{v}" for k, v in sorted(batching.items())))
        for model_dir in (self.workdir / "repository").iterdir():
            (folder / model_dir.name).mkdir(parents=True, exist_ok=True)
            for version in model_dir.iterdir():
                target = folder / model_dir.name / version.name
                if version.is_dir() and not target.exists():
                    target.symlink_to(version)
            config = yaml.safe_load((model_dir / "config.yaml").read_text())
            for option, value in batching.items():
                config["dynamic_batching"][BATCHING_OPTIONS[option]] = yaml.safe_load(value)
            (folder / model_dir.name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return folder

    def _mlserver_settings(self) -> Path:
        folder = self.workdir / "mlserver"
        folder.mkdir(exist_ok=True)
        settings = {
            "http_port": self.port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "host": "127.0.0.1",
            "debug": False,
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        for model, version in SERVED.items():
            (folder / model).mkdir(exist_ok=True)
            uri = str(self.workdir / "repository" / model / str(version))
            model_settings = {
                "name": model,
                "implementation": "mlserver_runtime.OnnxModel",
                "max_batch_size": 32,
                "max_batch_time": 0.005,
                "parameters": {"uri": uri},
            }
            (folder / model / "model-settings.json").write_text(json.dumps(model_settings))
        return folder

    def __enter__(self) -> Stack:
        command, env = self.command()
        log = open(self.workdir / f"{self.name}.log", "w")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.workdir / (self.name + '.log')}")
            if self._answers():
                self._settle()
                return self
            time.sleep(1)
        raise TimeoutError(f"{self.name} did not answer within 300 s")

    def _settle(self, idle_cores: float = 0.5, window_s: float = 3.0, timeout_s: float = 180.0) -> None:
        """Wait until the stack's processes together use under `idle_cores` over a window: what a
        stack still does after its first answer (serve-app's drift monitor building its detectors,
        Ray starting workers) must not land in the first point."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = sum(self.cpu_seconds().values())
            time.sleep(window_s)
            if sum(self.cpu_seconds().values()) - before < idle_cores * window_s:
                return
        print(f"{self.name}: still busy {timeout_s:g} s after its first answer; measuring anyway", file=sys.stderr)

    def _answers(self) -> bool:
        try:
            body = min(self.workdir.glob("fraud-*.json")).read_bytes()  # any request the stack must answer
            response = httpx.post(
                self.url("fraud"), content=body, timeout=10, headers={"Content-Type": "application/json"}
            )
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    def url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{model}/infer"

    def rss_mb(self) -> float:
        """Every process of the stack: the server and all it started (Ray's raylet, GCS, workers)."""
        total = 0
        for process in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / 2**20

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time so far of every process of the stack, summed by its role (Ray names its actors)."""
        totals: dict[str, float] = {}
        for process in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                role = _role(process)
                totals[role] = totals.get(role, 0.0) + times.user + times.system
        return totals

    def _processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def __exit__(self, *_) -> None:
        # serve run stops on Ctrl-C (SIGINT), the other servers on SIGTERM
        os.killpg(self.process.pid, signal.SIGINT if self.name.startswith("local") else signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        time.sleep(2)  # let the ports and Ray's processes go


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (latencies and CPU from the same run); the spread is kept."""
    ordered = sorted(runs, key=lambda run: run["requests_per_s"])
    point = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        point["runs_requests_per_s"] = [run["requests_per_s"] for run in runs]
    return point


def _role(process: psutil.Process) -> str:
    """proxy, the ingress replica, model replicas, other Ray processes, or the server itself."""
    command = process.cmdline() or [process.name()]
    if process.name() == "haproxy":
        return "haproxy"
    if "ProxyActor" in command[0]:
        return "proxy"
    if "ServeReplica" in command[0]:
        deployment = command[0].strip().rsplit(":", 1)[-1]
        return "model" if deployment.endswith("-model") or deployment == "VanillaModel" else deployment.lower()
    joined = " ".join(command[:3])
    return "ray (other)" if joined.startswith("ray::") or "/ray/" in joined else "server"


def measure(stack: Stack, model: str, rows: int, body: Path, concurrency: int, args) -> dict:
    headers = None
    if args.format == "binary":
        header_length = body.with_suffix(".bin.header").read_text()
        body, headers = body.with_suffix(".bin"), {"Inference-Header-Content-Length": header_length}
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], stack.rss_mb())
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_before = stack.cpu_seconds()
    try:
        point = drive(stack.url(model), body, concurrency, args.duration_s, args.warmup_s, headers)
    finally:
        done.set()
        sampler.join()
    cpu = {role: seconds - cpu_before.get(role, 0.0) for role, seconds in stack.cpu_seconds().items()}
    answered = max(point["requests"], 1) * (1 + args.warmup_s / args.duration_s)  # warm-up requests cost too
    point.update(
        stack=stack.name,
        model=model,
        rows=rows,
        rows_per_s=round(point["requests_per_s"] * rows),
        peak_rss_mb=round(peak[0]),
        cpu_ms_per_request={r: round(1000 * s / answered, 2) for r, s in sorted(cpu.items())},
    )
    return point


# -- the report ----------------------------------------------------------------------------


def headline(points: list[dict]) -> dict:
    """Per stack, model and request size: the highest rows/s whose p99 is under the SLA."""
    best: dict[str, dict] = {}
    for p in points:
        key = f"{p['stack']} {p['model']} {p['rows']}"
        within = p["stack"] == "limit" or (p["p99_ms"] is not None and p["p99_ms"] < SLA_MS and not p["errors"])
        if within and p["rows_per_s"] > best.get(key, {}).get("rows_per_s", -1):
            best[key] = {"rows_per_s": p["rows_per_s"], "concurrency": p["concurrency"], "p99_ms": p["p99_ms"]}
    return best


def markdown(result: dict) -> str:
    points, best = result["points"], result["headline"]
    lines = [
        f"# Serving stacks side by side ({result['date']}, {result['machine']['cpus']} CPUs)",
        "",
        f"Headline: the highest rows/s with p99 under {SLA_MS:g} ms (the fraud SLA); `-` where no point met it.",
        "",
    ]
    for model in result["models"]:
        for rows in result["sizes"]:
            limit_best = best.get(f"limit {model} {rows}", {}).get("rows_per_s")
            lines += [
                f"## {model}, {rows}-row requests",
                "",
                "| stack | headline rows/s | at c | vs limit | vs naive | vs vanilla | vs mlserver |",
                "|---|---|---|---|---|---|---|",
            ]
            for stack in ["limit", *result["stacks"]]:
                entry = best.get(f"{stack} {model} {rows}")
                if entry is None:
                    lines.append(f"| {stack} | - | | | | | |")
                    continue

                def ratio(other: str, entry=entry, model=model, rows=rows) -> str:
                    base = best.get(f"{other} {model} {rows}", {}).get("rows_per_s")
                    return f"{entry['rows_per_s'] / base:.2f}x" if base else ""

                vs_limit = f"{entry['rows_per_s'] / limit_best:.3f}x" if limit_best else ""
                lines.append(
                    f"| {stack} | {entry['rows_per_s']:,} | {entry['concurrency']} | {vs_limit} | "
                    f"{ratio('naive')} | {ratio('vanilla')} | {ratio('mlserver')} |"
                )
            lines += [
                "",
                "| stack | c | req/s | rows/s | p50 ms | p99 ms | errors | peak RSS MB | CPU ms/request |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for p in points:
                if p["model"] == model and p["rows"] == rows:
                    lines.append(
                        f"| {p['stack']} | {p['concurrency']} | {p['requests_per_s']:,} | "
                        f"{p['rows_per_s']:,} | {p['p50_ms']} | {p['p99_ms']} | {p['errors']} | "
                        f"{p['peak_rss_mb']:,} | {_cpu(p)} |"
                    )
            lines.append("")
    return "\n".join(lines)


def _cpu(point: dict) -> str:
    """CPU per answered request: the total, then by role (proxy, router, model, ...)."""
    roles = point.get("cpu_ms_per_request")
    if not roles:
        return ""
    parts = ", ".join(f"{role} {ms:g}" for role, ms in sorted(roles.items(), key=lambda item: -item[1]) if ms >= 0.05)
    return f"{sum(roles.values()):.2f} ({parts})"


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, r) for m in result["models"] for r in result["sizes"]]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (model, rows) in zip(axes[0], panels):
        for stack in result["stacks"]:
            series = sorted(
                (p["p99_ms"], p["rows_per_s"])
                for p in result["points"]
                if (p["stack"], p["model"], p["rows"]) == (stack, model, rows) and p["p99_ms"]
            )
            if series:
                axis.plot([s[0] for s in series], [s[1] for s in series], marker="o", label=stack)
        axis.axvline(SLA_MS, color="grey", linestyle="--", linewidth=1)
        axis.set(title=f"{model}, {rows}-row requests", xlabel="p99 latency (ms)", ylabel="rows/s", xscale="log")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--models", default="fraud,ffn")
    parser.add_argument("--sizes", default="1,256", help="rows per request")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per point; the median run is reported")
    parser.add_argument(
        "--format",
        choices=["json", "binary"],
        default="json",
        help="request bodies: V2 JSON, or binary tensors (serve-app stacks only)",
    )
    parser.add_argument("--smoke", action="store_true", help="a short run that only checks the harness works")
    parser.add_argument("--name", default="stacks", help="results file name (another for a partial comparison)")
    args = parser.parse_args()
    if args.smoke:
        args.stacks, args.sizes, args.concurrency, args.duration_s, args.warmup_s = "naive,single", "1", "2", 1, 0.5
    stacks = [s for s in args.stacks.split(",") if s]
    if args.format == "binary" and any(
        s.split("+")[0].split(":")[0] not in ("single", "full", "local") for s in stacks
    ):
        parser.error("--format binary: only the serve-app stacks (single, full, local) speak the binary extension")
    if "mlserver" in stacks and not MLSERVER.exists():
        print("mlserver: skipped, its environment is missing (make bench-env)", file=sys.stderr)
        stacks.remove("mlserver")
    models, sizes = args.models.split(","), [int(s) for s in args.sizes.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    workdir = build_workdir()
    bodies = write_bodies(workdir, ["fraud", *[m for m in models if m != "fraud"]], sizes)
    points = limit(workdir / "repository", {k: v for k, v in bodies.items() if k[0] in models})
    for name in stacks:
        with Stack(name, workdir) as stack:
            for model in filter(stack.serves, models):
                for rows in sizes:
                    for c in concurrency:
                        runs = [measure(stack, model, rows, bodies[model, rows], c, args) for _ in range(args.repeat)]
                        point = median_run(runs)
                        points.append(point)
                        print(json.dumps(point), flush=True)
    result = {
        **result_header(args.name),
        "models": models,
        "sizes": sizes,
        "stacks": stacks,
        "format": args.format,
        "settings": {"duration_s": args.duration_s, "warmup_s": args.warmup_s, "sla_ms": SLA_MS, "repeat": args.repeat},
        "points": points,
    }
    result["headline"] = headline(points)
    if args.smoke:
        print(markdown(result))
        return
    out = write_result(result)
    (RESULTS / f"{args.name}-{result['date']}.md").write_text(markdown(result))
    plot(result, RESULTS / f"{args.name}-{result['date']}.png")
    print(markdown(result))
    print(f"written to {out} (and .md, .png)")


if __name__ == "__main__":
    main()
