"""The batch job against the limit: one generated Parquet data set scored by `python -m batch` (Ray
Data, an actor pool) and by a plain in-process loop (the same preprocessor and ONNX Runtime session,
chunk by chunk), on the same machine, in one run.

    python benchmarks/batch_throughput.py [--rows 1000000] [--files 10] [--actors 2] [--batch-size 8192]

Writes benchmarks/results/batch_throughput-<date>.json. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from common import result_header, write_result

from serve_app.demo import build_demo_repository, synthetic_transactions
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner

ROOT = Path(__file__).parents[1]


def generate(folder: Path, rows: int, files: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for n in range(files):
        frame = synthetic_transactions(rows // files, seed=1000 + n)
        frame["transaction_id"] = range(n * (rows // files), (n + 1) * (rows // files))
        paths.append(folder / f"part-{n:03d}.parquet")
        frame.to_parquet(paths[-1], index=False)
    return paths


def in_process(repository: Path, paths: list[Path], batch_size: int) -> dict:
    """The limit: read each file, preprocess and run ONNX Runtime in chunks, in this one process."""
    version = ModelRepository(repository).version("fraud", 1)
    runner, preprocessor = load_runner(version.config, version.model_file), version.preprocessor
    names = [f.name for f in preprocessor.spec.features]
    start, rows = time.perf_counter(), 0
    for path in paths:
        for chunk in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=names):
            frame = chunk.to_pandas()
            runner.run(preprocessor.transform({n: frame[n].to_numpy() for n in names}))
            rows += len(frame)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


def batch_job(config: Path, data: Path, output: Path, actors: int, batch_size: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "batch",
        "--config",
        str(config),
        "--input",
        str(data),
        "--output",
        str(output),
        "--num-actors",
        str(actors),
        "--batch-size",
        str(batch_size),
        "--version",
        "1",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    summary = json.loads(done.stdout[done.stdout.index("\n{") + 1 :])
    return {**summary, "wall_seconds_with_cluster_start": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8192)
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
    limit = in_process(repository, paths, args.batch_size)
    job = batch_job(config, workdir / "data", workdir / "scored", args.actors, args.batch_size)
    result = {
        **result_header("batch_throughput"),
        "rows": args.rows,
        "files": args.files,
        "actors": args.actors,
        "batch_size": args.batch_size,
        "in_process": limit,
        "batch_job": {k: job[k] for k in ("rows", "seconds", "rows_per_s", "wall_seconds_with_cluster_start")},
        "ratio": round(job["rows_per_s"] / limit["rows_per_s"], 3),
    }
    out = write_result(result)
    print("| path | rows | seconds | rows/s | vs in-process |")
    print("|---|---|---|---|---|")
    print(
        f"| in-process loop (ONNX Runtime) | {limit['rows']:,} | {limit['seconds']} | {limit['rows_per_s']:,} | 1.0x |"
    )
    print(
        f"| batch job ({args.actors} actors) | {job['rows']:,} | {job['seconds']} | {round(job['rows_per_s']):,} |",
        f"{result['ratio']:.2f}x |",
    )
    print(f"batch job wall time including the Ray cluster start: {job['wall_seconds_with_cluster_start']} s")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
