"""The batch job against the loop a data engineer would write instead, side by side in one run.

    python benchmarks/batch_throughput.py [--rows 1000000] [--files 10] [--batch-size 16384] [--two-node]

The loop, in this one process: read each Parquet file, run the model version's preprocessor, score
with an ONNX Runtime session of default options, and write a Parquet file with the same columns as
the job's output. The job, `python -m batch` as a user runs it (it scores in the driver or
on a pool of one actor per CPU, whichever it estimates is done first): on the local cluster it
starts itself (whose start it reports apart), then on a cluster that is up and has run a job before
(as `ray job submit` meets it); there also with a pool of one actor per CPU asked for. With
--two-node, a pool of one actor per node on a local cluster of one node of one CPU, then of two such
nodes: rows/s with one actor against two, each on its own node.

On the running cluster it also measures the floor of a pool's start there, for one actor and for
one per CPU (bare actors that only import what a scoring actor must, actor_start_floor.py), beside
the target's time (twice the loop's): a pool whose floor alone is above it cannot meet the target.

Writes benchmarks/results/batch_throughput-<date>.json. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from common import result_header, write_result

from serve_app.demo import build_demo_repository, synthetic_transactions
from serve_app.repository import ModelRepository

ROOT = Path(__file__).parents[1]
MODEL, VERSION, PASS_THROUGH = "fraud", 1, ["transaction_id", "is_fraud"]


def generate(folder: Path, rows: int, files: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for n in range(files):
        frame = synthetic_transactions(rows // files, seed=1000 + n)
        frame["transaction_id"] = range(n * (rows // files), (n + 1) * (rows // files))
        paths.append(folder / f"part-{n:03d}.parquet")
        frame.to_parquet(paths[-1], index=False)
    return paths


def loop(repository: Path, paths: list[Path], output: Path) -> dict:
    """What a person writes: a file at a time, the whole file at once, in one process."""
    version = ModelRepository(repository).version(MODEL, VERSION)
    preprocessor = version.preprocessor
    session = ort.InferenceSession(str(version.model_file), providers=["CPUExecutionProvider"])
    features = [f.name for f in preprocessor.spec.features]
    output.mkdir(parents=True)
    start, rows = time.perf_counter(), 0
    for path in paths:
        table = pq.read_table(path, columns=[*PASS_THROUGH, *features])
        tensors = preprocessor.transform({name: table[name] for name in features})
        (scores,) = session.run(None, tensors)
        n = table.num_rows
        scored = table.select(PASS_THROUGH).append_column("source_file", pa.repeat(str(path), n))
        scored = scored.append_column("model", pa.repeat(MODEL, n)).append_column("fraud_probability", pa.array(scores))
        scored = scored.append_column("model_version", pa.repeat(pa.scalar(VERSION, pa.int64()), n))
        pq.write_table(scored, output / path.name)
        rows += n
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


def batch_job(
    config: Path, data: Path, output: Path, batch_size: int, address: str | None = None, num_actors: int | None = None
) -> dict:
    """`python -m batch`: where it chooses to score (num_actors None), or on a pool of num_actors."""
    command = [sys.executable, "-m", "batch", "--config", str(config), "--input", str(data), "--output", str(output)]
    command += ["--model", MODEL, "--version", str(VERSION), "--batch-size", str(batch_size)]
    command += ["--address", address] if address else []
    command += ["--num-actors", str(num_actors)] if num_actors else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"the batch job failed:\n{done.stderr[-4000:]}")
    shutil.rmtree(output)
    summary = json.loads(done.stdout[done.stdout.index("\n{") + 1 :])
    keys = ("rows", "seconds", "rows_per_s", "pool_start_s", "scoring_rows_per_s", "cluster_start_s", "placement")
    return {**{k: summary.get(k) for k in keys}, "actors": len(summary["actors"]), "nodes": len(summary["nodes"])}


def actor_start_floor(address: str, actors: int) -> float:
    """Seconds from a new driver's connection until `actors` bare actors have imported what a
    scoring actor must (actor_start_floor.py): no pool of that size on this cluster starts faster."""
    probe = [sys.executable, str(Path(__file__).with_name("actor_start_floor.py")), address, str(actors)]
    done = subprocess.run(probe, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"the actor start probe failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def on_running_cluster(nodes: int, cpus: int, runs: dict[str, Callable[[str], dict]], floors=()) -> dict:
    """Each of `runs` (a job, given the cluster's address) on a local cluster of `nodes` nodes of
    `cpus` CPUs (ray.cluster_utils: a raylet each), as `ray job submit` runs it on a cluster that is
    up, after a first job of the first kind: the first job with a pool also starts Ray Data's own
    actors, which stay for the jobs after it. Then the floor of a pool's start on that cluster for each pool size in
    `floors` (actor_start_floor)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    try:
        first = next(iter(runs.values()))(cluster.address)
        measured = {name: run(cluster.address) for name, run in runs.items()}
        floor = {str(actors): actor_start_floor(cluster.address, actors) for actors in floors}
        return {"first_job": first, **measured, "pool_start_floor_s": floor}
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--two-node", action="store_true", help="also one node against two, one CPU each")
    parser.add_argument("--workdir", help="where the data set and the output go; default: a new temporary folder")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="batch-bench-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"--workdir {workdir} is not empty")
    repository = workdir / "model_repository"
    build_demo_repository(repository)
    config = workdir / "serve.yaml"
    document = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    document["applications"][0]["args"]["repository"] = str(repository)
    config.write_text(yaml.safe_dump(document))
    paths = generate(workdir / "data", args.rows, args.files)
    baseline = loop(repository, paths, workdir / "by-loop")

    def job(address: str | None = None, num_actors: int | None = None) -> dict:
        return batch_job(config, workdir / "data", workdir / "by-job", args.batch_size, address, num_actors)

    fresh = job()  # the command line starts a local cluster of the machine's CPUs
    cpus = os.cpu_count() or 1
    # The pool's job first: the first job on the cluster also starts Ray Data's own actors.
    runs = {"job_on_an_actor_pool": lambda address: job(address, num_actors=cpus), "job": job}
    on_cluster = on_running_cluster(1, cpus, runs, floors=tuple(sorted({1, cpus})))
    running, pooled = on_cluster["job"], on_cluster["job_on_an_actor_pool"]
    target_s = 2 * baseline["seconds"]  # the job at 0.5x the loop's rows/s
    result = {
        **result_header("batch_throughput" if args.rows == 1_000_000 else f"batch_throughput-{args.rows}-rows"),
        "rows": args.rows,
        "files": args.files,
        "batch_size": args.batch_size,
        "loop": baseline,
        "job_on_a_new_local_cluster": fresh,
        "job_on_a_running_cluster": running,
        "job_on_an_actor_pool": pooled,
        "ratio_new_cluster": round(fresh["rows_per_s"] / baseline["rows_per_s"], 3),
        "ratio_running_cluster": round(running["rows_per_s"] / baseline["rows_per_s"], 3),
        "ratio_actor_pool": round(pooled["rows_per_s"] / baseline["rows_per_s"], 3),
        "ratio_once_the_pool_is_up": round(pooled["scoring_rows_per_s"] / baseline["rows_per_s"], 3),
        "target_seconds": round(target_s, 2),
        "pool_start_floor_s": on_cluster["pool_start_floor_s"],
    }
    if args.two_node:
        # A pool of one actor per node, chosen here: the job alone would score this input in the driver.
        one, two = (
            on_running_cluster(nodes, 1, {"pool": lambda address, n=nodes: job(address, num_actors=n)})["pool"]
            for nodes in (1, 2)
        )
        result["two_node"] = {
            "one_node_one_cpu": one,
            "two_nodes_one_cpu_each": two,
            "scaling": round(two["rows_per_s"] / one["rows_per_s"], 2),
            "scaling_once_the_pool_is_up": round(two["scoring_rows_per_s"] / one["scoring_rows_per_s"], 2),
        }
    out = write_result(result)
    print(json.dumps(result, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
