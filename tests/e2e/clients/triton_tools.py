"""What Triton's tools do after inference, with tritonclient against a running serve-app: read each
model's configuration and metadata, build requests from them alone (no shape known beforehand),
read the statistics, the repository index, and unload and load models with the admin token.

Run in its own process (tritonclient's protobuf modules clash with serve-app's). Exits non-zero on
the first failed check.

    python triton_tools.py --protocol http|grpc --url HOST:PORT[/PREFIX] [--application NAME]
        --models fraud,echo,dense [--token T --control fraud,dense]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

BATCH = 3
VARIABLE_SIZE = 2
"""The size given to a variable (-1) dimension other than the batch."""


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def wait_for(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            check(bool(value), what)
            return value
        time.sleep(0.5)


def refused(call, code: str, what: str) -> None:
    try:
        call()
    except InferenceServerException as error:
        check(code in str(error.status()), f"{what}: {error.status()} {error.message()}")
        return
    check(False, f"{what}: no error")


def values(datatype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Any valid tensor of a datatype and shape (what a load generator sends)."""
    if datatype == "BYTES":
        words = [f"v{i}".encode() for i in rng.integers(0, 5, int(np.prod(shape)))]
        return np.array(words, dtype=object).reshape(shape)
    dtype = triton_to_np_dtype(datatype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    return rng.integers(0, 5, shape).astype(dtype)


class Client:
    def __init__(self, protocol: str, url: str, application: str | None, token: str | None):
        self.grpc = protocol == "grpc"
        if self.grpc:
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module = module
        self.client = module.InferenceServerClient(url=url)
        self.headers = {"application": application} if self.grpc and application else {}
        self.auth = {**self.headers, "authorization": f"Bearer {token}"} if token else self.headers

    def json(self, call, *args, **kwargs) -> dict:
        options = {"as_json": True} if self.grpc else {}
        return call(*args, headers=self.headers, **options, **kwargs)

    def config(self, model: str, version: str = "") -> dict:
        config = self.json(self.client.get_model_config, model, version)
        return config["config"] if self.grpc else config

    def metadata(self, model: str) -> dict:
        return self.json(self.client.get_model_metadata, model)

    def statistics(self, model: str = "", version: str = "") -> list[dict]:
        return self.json(self.client.get_inference_statistics, model, version).get("model_stats", [])

    def index(self) -> dict[tuple[str, str], str]:
        entries = self.json(self.client.get_model_repository_index)
        entries = entries.get("models", []) if self.grpc else entries
        return {(e["name"], e.get("version", "")): e.get("state", "") for e in entries}

    def ready(self, model: str) -> bool:
        return self.client.is_model_ready(model, headers=self.headers)


def request_from(client: Client, model: str, rng: np.random.Generator):
    """Inputs and requested outputs built from the model's metadata and configuration only."""
    metadata, config = client.metadata(model), client.config(model)
    batched = int(config["max_batch_size"]) > 0
    datatypes = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    check([t["name"] for t in config["input"]] == list(datatypes), f"{model}: config and metadata name the same inputs")
    inputs = []
    for tensor in config["input"]:
        dims = [int(d) for d in tensor.get("dims", [])]
        shape = ([BATCH] if batched else []) + [VARIABLE_SIZE if d == -1 else d for d in dims]
        check(tensor["data_type"] == f"TYPE_{datatypes[tensor['name']]}".replace("BYTES", "STRING"), "data_type")
        array = values(datatypes[tensor["name"]], shape, rng)
        infer_input = client.module.InferInput(tensor["name"], shape, datatypes[tensor["name"]])
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    outputs = [client.module.InferRequestedOutput(t["name"]) for t in config["output"]]
    return inputs, outputs, config


def infer_from_config(client: Client, model: str, rng: np.random.Generator) -> None:
    inputs, outputs, config = request_from(client, model, rng)
    result = client.client.infer(model, inputs, outputs=outputs, headers=client.headers)
    for tensor in config["output"]:
        answer = result.as_numpy(tensor["name"])
        dims = [int(d) for d in tensor.get("dims", [])]
        expected = [BATCH, *dims]
        fits = answer is not None and len(answer.shape) == len(expected)
        fits = fits and all(e in (-1, a) for a, e in zip(answer.shape, expected))
        check(fits, f"{model}: output '{tensor['name']}' has the configured shape {expected}: {answer.shape}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["http", "grpc"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--application")
    parser.add_argument("--models", required=True)
    parser.add_argument("--token")
    parser.add_argument("--control", default="", help="models to unload and load again")
    parser.add_argument("--idle", default="", help="model:version that served nothing: its statistics are zeros")
    args = parser.parse_args()
    client = Client(args.protocol, args.url, args.application, args.token)
    rng = np.random.default_rng(7)
    models = args.models.split(",")

    server = client.json(client.client.get_server_metadata)
    extensions = {"binary_tensor_data", "model_configuration", "model_repository", "statistics"}
    check(set(server["extensions"]) == extensions, f"server metadata lists what is implemented: {server['extensions']}")

    for model in models:
        config = client.config(model)
        check(config["name"] == model and int(config["max_batch_size"]) > 0, f"{model}: config")
        check("dynamic_batching" in config and config["instance_group"][0]["kind"] == "KIND_CPU", f"{model}: batching")
        versions = client.metadata(model)["versions"]
        check(client.config(model, versions[0])["name"] == model, f"{model}: config of version {versions[0]}")
        before = {s["version"]: s for s in client.statistics(model)}
        check(set(before) == set(versions), f"{model}: statistics of every served version {sorted(before)}")
        sent = 4
        for _ in range(sent):
            infer_from_config(client, model, rng)
        newest = max(versions, key=int)
        start = before[newest]

        def counted(model=model, newest=newest, start=start, sent=sent):
            [now] = client.statistics(model, newest)
            rows = int(now.get("inference_count", 0)) - int(start.get("inference_count", 0))
            success = now["inference_stats"]["success"]
            done = int(success.get("count", 0)) - int(start["inference_stats"]["success"].get("count", 0))
            executed = int(now.get("execution_count", 0)) > int(start.get("execution_count", 0))
            return now if (rows, done, executed) == (sent * BATCH, sent, True) else None

        # Counted by the routers and the processes that ran the model, each reporting within a second.
        now = wait_for(counted, f"{model} v{newest}: {sent} requests of {BATCH} rows and their executions counted")
        batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in now["batch_stats"]}
        check(sum(batches.values()) == int(now["execution_count"]), f"{model}: executions by batch size {batches}")
        check(int(now["last_inference"]) > 0, f"{model}: last inference")

    everything = client.statistics()
    check({s["name"] for s in everything} >= set(models), "statistics of every model")
    not_found = "NOT_FOUND" if client.grpc else "404"
    refused(lambda: client.statistics("nope"), not_found, "statistics of an unknown model")
    refused(lambda: client.statistics(models[0], "9"), not_found, "statistics of an unknown version")
    refused(lambda: client.config("nope"), not_found, "config of an unknown model")
    refused(lambda: client.config(models[0], "9"), not_found, "config of an unknown version")
    if args.idle:
        [idle] = client.statistics(*args.idle.split(":"))
        counts = [int(idle.get(k, 0)) for k in ("inference_count", "execution_count", "last_inference")]
        success = int(idle["inference_stats"]["success"].get("count", 0))
        check(counts == [0, 0, 0] and success == 0, f"{args.idle} served nothing yet: zeros, not an error")
    index = client.index()
    check(all(index.get((m, v)) == "READY" for m in models for v in client.metadata(m)["versions"]), "index")

    if not args.control:
        return
    anonymous = {**client.headers}
    control = args.control.split(",")
    unauthenticated = "UNAUTHENTICATED" if client.grpc else "401"
    refused(lambda: client.client.unload_model(control[0], headers=anonymous), unauthenticated, "unload without token")
    refused(lambda: client.client.load_model("nope", headers=client.auth), not_found, "load an unknown model")
    for model in control:
        again(lambda model=model: client.client.unload_model(model, headers=client.auth))
        wait_for(lambda model=model: not client.ready(model), f"{model} unloaded: not ready")
        versions = {v for (name, v), state in client.index().items() if name == model}
        check(all(client.index()[(model, v)] == "UNAVAILABLE" for v in versions), f"{model} unloaded: index")
        again(lambda model=model: client.client.load_model(model, headers=client.auth))
        wait_for(lambda model=model: client.ready(model), f"{model} loaded again: ready")
        infer_from_config(client, model, rng)


def again(call, timeout_s: float = 90.0) -> None:
    """A management call, sent again while a router of the graph before the last change answers it
    (it refuses: the config moved since it was built) until a router of the current graph takes it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            call()
            return
        except InferenceServerException as error:
            if "config changed since this router was built" not in error.message() or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


if __name__ == "__main__":
    main()
