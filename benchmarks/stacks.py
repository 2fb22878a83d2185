"""The same models and request stream through every serving stack, side by side, in one run.

    python benchmarks/stacks.py [--stacks naive,vanilla,mlserver,single,full] [--duration-s 5]
                                [--concurrency 1,8,32,64] [--models fraud,ffn] [--smoke]

Stacks (each started in processes of its own, then stopped before the next):
  limit     the model in-process with ONNX Runtime: rows/s at batch 1 and at 256 rows a call
  naive     one FastAPI process under uvicorn calling ONNX Runtime per request (servers/naive.py)
  vanilla   Ray Serve, one deployment per model, no batching (servers/ray_stack.py --stack vanilla)
  mlserver  MLServer with adaptive batching (32 rows, 5 ms), in its own environment
            (benchmarks/.mlserver, made by `make bench-env`), same scorer (servers/mlserver_runtime.py)
  single    serve-app's single-model graph
  full      serve-app's full graph: challenger at 5%, shadow at 100%, drift monitor on (fraud)
Variants, to compare settings in one run: single+replica (preprocessing in a replica of its own),
single:RAY_SERVE_FLAG=value,... (Ray Serve's environment flags, for that stack's cluster).
Models: the demo fraud model (v2, raw transaction columns through its preprocessor) and ffn, a
38M-parameter feed-forward stack where batching matters. Requests of 1 row and of 256 rows (V2 JSON,
the same bytes for every stack), closed-loop from loadgen.py in a separate process, at each
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
from common import HERE, RESULTS, drive, free_port, result_header, write_result

from serve_app.demo import BIG_DIMS, build_demo_repository, build_ffn_model, request_columns, synthetic_transactions
from serve_app.protocol.rest import request_body

sys.path.insert(0, str(HERE / "servers"))
from plain import PlainScorer, decode_inputs

ROOT = HERE.parent
SLA_MS = 50.0
MLSERVER = HERE / ".mlserver" / "bin" / "mlserver"
STACKS = ("naive", "vanilla", "mlserver", "single", "full")
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
                document = {"inputs": [{"name": "embedding", "datatype": "FP32", "shape": list(data.shape),
                                        "data": data.ravel().tolist()}]}  # fmt: skip
            path = workdir / f"{model}-{rows}.json"
            path.write_text(json.dumps(document))
            bodies[model, rows] = path
    return bodies


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
        points.append({"stack": "limit", "model": model, "rows": rows, "concurrency": 1, "errors": 0,
                       "requests_per_s": round(calls / elapsed, 1), "rows_per_s": round(calls * rows / elapsed),
                       "p50_ms": round(1000 * elapsed / calls, 3), "p99_ms": None,
                       "peak_rss_mb": round(psutil.Process().memory_info().rss / 2**20)})  # fmt: skip
    return points


# -- the stacks ----------------------------------------------------------------------------


class Stack:
    """A server in processes of its own: started, asked until it answers, then stopped."""

    def __init__(self, name: str, workdir: Path):
        self.name, self.workdir, self.port = name, workdir, free_port()
        self.process: subprocess.Popen | None = None

    def command(self) -> tuple[list[str], dict]:
        repository = str(self.workdir / "repository")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE / "servers")])}
        if self.name == "naive":
            models = [f"--model={m}={v}" for m, v in SERVED.items()]
            return [sys.executable, str(HERE / "servers" / "naive.py"), "--repository", repository,
                    "--port", str(self.port), *models], env  # fmt: skip
        if self.name == "mlserver":
            return [str(MLSERVER), "start", str(self._mlserver_settings())], env
        # single+replica: preprocessing in a replica of its own; single:RAY_SERVE_X=0,...: Serve's flags
        layout, _, flags = self.name.partition(":")
        env.update(dict(flag.split("=", 1) for flag in flags.split(",") if flag))
        storage = self.workdir / f"storage-{len(list(self.workdir.glob('storage-*')))}"
        stack, _, preprocessing = layout.partition("+")
        return [sys.executable, str(HERE / "servers" / "ray_stack.py"), "--stack", stack, "--repository",
                repository, "--storage", str(storage), "--port", str(self.port),
                "--preprocessing", preprocessing or "in_model"], env  # fmt: skip

    def _mlserver_settings(self) -> Path:
        folder = self.workdir / "mlserver"
        folder.mkdir(exist_ok=True)
        settings = {"http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(),
                    "host": "127.0.0.1", "debug": False}  # fmt: skip
        (folder / "settings.json").write_text(json.dumps(settings))
        for model, version in SERVED.items():
            (folder / model).mkdir(exist_ok=True)
            uri = str(self.workdir / "repository" / model / str(version))
            model_settings = {"name": model, "implementation": "mlserver_runtime.OnnxModel",
                              "max_batch_size": 32, "max_batch_time": 0.005, "parameters": {"uri": uri}}  # fmt: skip
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
                return self
            time.sleep(1)
        raise TimeoutError(f"{self.name} did not answer within 300 s")

    def _answers(self) -> bool:
        try:
            body = (self.workdir / "fraud-1.json").read_bytes()
            response = httpx.post(self.url("fraud"), content=body, timeout=10,
                                  headers={"Content-Type": "application/json"})  # fmt: skip
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    def url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{model}/infer"

    def rss_mb(self) -> float:
        """Every process of the stack: the server and all it started (Ray's raylet, GCS, workers)."""
        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / 2**20

    def __exit__(self, *_) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        time.sleep(2)  # let the ports and Ray's processes go


def measure(stack: Stack, model: str, rows: int, body: Path, concurrency: int, args) -> dict:
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], stack.rss_mb())
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        point = drive(stack.url(model), body, concurrency, args.duration_s, args.warmup_s)
    finally:
        done.set()
        sampler.join()
    point.update(stack=stack.name, model=model, rows=rows, rows_per_s=round(point["requests_per_s"] * rows),
                 peak_rss_mb=round(peak[0]))  # fmt: skip
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
    lines = [f"# Serving stacks side by side ({result['date']}, {result['machine']['cpus']} CPUs)", "",
             f"Headline: the highest rows/s with p99 under {SLA_MS:g} ms (the fraud SLA); `-` where no point met it.",
             ""]  # fmt: skip
    for model in result["models"]:
        for rows in result["sizes"]:
            limit_best = best.get(f"limit {model} {rows}", {}).get("rows_per_s")
            lines += [f"## {model}, {rows}-row requests", "",
                      "| stack | headline rows/s | at c | vs limit | vs naive | vs vanilla | vs mlserver |",
                      "|---|---|---|---|---|---|---|"]  # fmt: skip
            for stack in ["limit", *result["stacks"]]:
                entry = best.get(f"{stack} {model} {rows}")
                if entry is None:
                    lines.append(f"| {stack} | - | | | | | |")
                    continue

                def ratio(other: str, entry=entry, model=model, rows=rows) -> str:
                    base = best.get(f"{other} {model} {rows}", {}).get("rows_per_s")
                    return f"{entry['rows_per_s'] / base:.2f}x" if base else ""

                vs_limit = f"{entry['rows_per_s'] / limit_best:.3f}x" if limit_best else ""
                lines.append(f"| {stack} | {entry['rows_per_s']:,} | {entry['concurrency']} | {vs_limit} | "
                             f"{ratio('naive')} | {ratio('vanilla')} | {ratio('mlserver')} |")  # fmt: skip
            lines += ["", "| stack | c | req/s | rows/s | p50 ms | p99 ms | errors | peak RSS MB |",
                      "|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for p in points:
                if p["model"] == model and p["rows"] == rows:
                    lines.append(f"| {p['stack']} | {p['concurrency']} | {p['requests_per_s']:,} | "
                                 f"{p['rows_per_s']:,} | {p['p50_ms']} | {p['p99_ms']} | {p['errors']} | "
                                 f"{p['peak_rss_mb']:,} |")  # fmt: skip
            lines.append("")
    return "\n".join(lines)


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, r) for m in result["models"] for r in result["sizes"]]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (model, rows) in zip(axes[0], panels):
        for stack in result["stacks"]:
            series = sorted((p["p99_ms"], p["rows_per_s"]) for p in result["points"]
                            if (p["stack"], p["model"], p["rows"]) == (stack, model, rows) and p["p99_ms"])  # fmt: skip
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
    parser.add_argument("--smoke", action="store_true", help="a short run that only checks the harness works")
    parser.add_argument("--name", default="stacks", help="results file name (another for a partial comparison)")
    args = parser.parse_args()
    if args.smoke:
        args.stacks, args.sizes, args.concurrency, args.duration_s, args.warmup_s = "naive,single", "1", "2", 1, 0.5
    stacks = [s for s in args.stacks.split(",") if s]
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
            for model in models:
                for rows in sizes:
                    for c in concurrency:
                        point = measure(stack, model, rows, bodies[model, rows], c, args)
                        points.append(point)
                        print(json.dumps(point), flush=True)
    result = {**result_header(args.name), "models": models, "sizes": sizes, "stacks": stacks,
              "settings": {"duration_s": args.duration_s, "warmup_s": args.warmup_s, "sla_ms": SLA_MS},
              "points": points}  # fmt: skip
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
