"""A Ray Serve stack for the benchmark, in a process of its own with its own local Ray cluster.

    python benchmarks/servers/ray_stack.py --stack vanilla|hop|single|full --repository R --port P

vanilla: what a competent user deploys by hand: one deployment per model whose __call__ takes the
         HTTP request, @serve.batch (32 requests, 5 ms: MLServer's settings here), max_ongoing_requests
         64, Ray's throughput mode, Serve's default ingress (its Python proxy); with
         RAY_SERVE_ENABLE_HA_PROXY=1 in the environment, behind Ray's HAProxy instead.
hop:     vanilla with one hop more: an ingress passes the body through a handle to the vanilla model
         deployment. The least any graph with a router in front of its models costs.
single:  serve-app's single-model graph (router, preprocessor, model with @serve.batch).
full:    serve-app's champion/challenger graph: fraud v2 champion, v1 challenger at 5%, v3 shadow at
         100% and the drift monitor on; ffn v1 champion, v2 challenger at 5%, v3 shadow at 100%.
Prints READY once every application runs; stops Serve and Ray on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import ray
from ray import serve
from starlette.requests import Request

sys.path.insert(0, str(Path(__file__).parent))
from plain import PlainScorer

from serve_app.config import RAY_SERVE_ENV, free_port, haproxy_side_ports_env

SERVED = {"fraud": 2, "ffn": 1}


VANILLA_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
"""Throughput mode with Serve's default ingress (the mode alone would turn direct ingress on)."""


@serve.deployment(max_ongoing_requests=64)
class VanillaModel:
    def __init__(self, version_dir: str):
        self.scorer = PlainScorer(version_dir)

    async def __call__(self, request: Request) -> dict:
        return await self.score(await request.body())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def score(self, bodies: list[bytes]) -> list[dict]:
        return self.scorer.answer_many(bodies)


@serve.deployment
class Forwarder:
    def __init__(self, model):
        self.model = model

    async def __call__(self, request: Request) -> dict:
        return await self.model.score.remote(await request.body())


def deploy(
    stack: str,
    repository: Path,
    storage: Path,
    preprocessing: str,
    max_ongoing_ingress: int | None,
    merge: bool = True,
    in_router: bool = False,
    routers: int = 1,
) -> None:
    if stack == "vanilla":
        for model, version in SERVED.items():
            app = VanillaModel.bind(str(repository / model / str(version)))
            serve.run(app, name=model, route_prefix=f"/v2/models/{model}/infer")
        return
    if stack == "hop":
        for model, version in SERVED.items():
            app = Forwarder.bind(VanillaModel.bind(str(repository / model / str(version))))
            serve.run(app, name=model, route_prefix=f"/v2/models/{model}/infer")
        return
    args = {
        "repository": str(repository),
        "models": list(SERVED),
        "storage_uri": str(storage),
        "preprocessing": preprocessing,
    }
    if max_ongoing_ingress:
        args["max_ongoing_requests_ingress"] = max_ongoing_ingress
    args["merge_before_hop"] = merge
    args["num_replicas_ingress"] = routers
    if in_router:
        args["in_router"] = list(SERVED)
    if stack == "single":
        from graphs.single_model import build_app

        args["versions"] = {model: [version] for model, version in SERVED.items()}
    else:
        from graphs.champion_challenger import build_app

        split = {"challenger_weight": 0.05, "shadows": [3], "shadow_fraction": 1.0}
        args["experiments"] = {
            "fraud": {"traffic": {"champion": 2, "challenger": 1, **split}},
            "ffn": {"traffic": {"champion": 1, "challenger": 2, **split}},
        }
        args["drift"] = {"fraud": {"window_size": 1000}}
    serve.run(build_app(args), name="serve-app", route_prefix="/")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", choices=["vanilla", "hop", "single", "full"], required=True)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--preprocessing", choices=["in_model", "replica"], default="in_model")
    parser.add_argument("--max-ongoing-ingress", type=int, help="the router's max_ongoing_requests")
    parser.add_argument("--no-merge", action="store_true", help="the router sends each request alone")
    parser.add_argument("--in-router", action="store_true", help="the models run in the router's process")
    parser.add_argument("--routers", type=int, default=1, help="router replicas")
    args = parser.parse_args()
    # serve-app as `make run` serves it, vanilla as above; flags already in the environment win.
    # HAProxy's stats and metrics ports: free ones, beside any other cluster on this machine.
    environment = RAY_SERVE_ENV if args.stack in ("single", "full") else VANILLA_ENV
    for key, value in {**environment, **haproxy_side_ports_env(free_port(), free_port())}.items():
        os.environ.setdefault(key, value)
    # Logical CPUs: every stack shares this machine's cores; the graphs only need room to schedule.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    deploy(
        args.stack,
        args.repository,
        args.storage,
        args.preprocessing,
        args.max_ongoing_ingress,
        not args.no_merge,
        args.in_router,
        args.routers,
    )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print("READY", flush=True)
    while not stopping:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
