"""The batch job: the online graph's preprocessing and model, run by Ray Data over Parquet.

    serve-app batch --config configs/local.yaml --input data/ --output scored/
    python -m batch --config configs/batch.yaml --input 's3://bucket/day=*/part-*.parquet' --output s3://bucket/scored
    ray job submit --working-dir . -- python -m batch --config configs/batch.yaml --input ... --output ...

The graph comes from an application's args in a Serve config (or a batch config that points at
one), so the model, version, preprocessor and drift detectors are those the online app serves.
Fragments of the input (runs of row groups) -> Scorer (reads, scores, writes), in a Ray Data actor
pool, or in the driver when it would be done before a pool could start (choose_placement), in rounds
of input files.
Each round is written under <output>/_staging/<part>/, its files are moved one by one to
<output>/<part>/ (object stores move files, not folders), and then the round is recorded in
<output>/_manifest.json, replaced whole (the commit point). A re-run skips the files the manifest
records and first deletes any part it does not (a round that died before its commit), so after a
crash anywhere and a re-run every input row is in the output exactly once. Rows that cannot be
scored go to <output>/<part>/_errors/ with the reason; the job goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs
import pyarrow.parquet as pq
import yaml
from pydantic import ValidationError

from serve_app.config import BatchSettings, DriftSettings, ExperimentGraphArgs, GraphArgs, describe_validation_error
from serve_app.errors import InvalidInput, RepositoryError
from serve_app.repository import ModelRepository, ModelVersion
from serve_app.scores import positive
from serve_app.storage import absolute_uri, bucket_of, open_storage, read_json, without_secrets, write_json

logger = logging.getLogger("serve_app.batch")
MANIFEST = "_manifest.json"
SUMMARY = "_summary.json"
STAGING = "_staging"
POOL_START_TIMEOUT_S = 600
POOL_START_S = 2.5
"""What a pool of scoring actors costs before its first row: a Ray job's actors are new processes
that import Ray Data and load the model (2.3-2.6 s on two cores, benchmarks/actor_start_floor.py).
A job the driver scores faster than that plus the pool's share of the rows runs in the driver."""
SOURCE_COLUMN = "source_file"


# --------------------------------------------------------------------------------------------
# Planning: everything that can be checked is checked before any work starts
# --------------------------------------------------------------------------------------------


@dataclass
class JobPlan:
    settings: BatchSettings
    graph: GraphArgs
    model: str
    versions: list[ModelVersion]
    """The version scored, then the challenger when compare is on."""
    input_fs: pyarrow.fs.FileSystem
    inputs: list[str]
    row_groups: dict[str, list[int]]
    """Each input file's row groups, by their row counts (from the footers read while planning)."""
    input_uri: str
    output_uri: str
    pass_through: list[str]
    needed: list[str]
    drift: DriftSettings | None

    @property
    def columns(self) -> list[str]:
        """What the actors read from each file: the copied columns, then the model's."""
        return [*self.pass_through, *(c for c in self.needed if c not in self.pass_through)]

    @property
    def version(self) -> ModelVersion:
        return self.versions[0]


def load_settings(config: str, overrides: dict[str, Any]) -> BatchSettings:
    """A Serve config (its applications) or a batch config (serve_config: ...), plus flags."""
    path = Path(config)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidInput(f"{config}: cannot read the config: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{config}: expected a mapping")
    if "applications" in document:
        document = {"serve_config": str(path)}
    elif "serve_config" in document:
        document = {**document, "serve_config": str(path.parent / document["serve_config"])}
    set_flags = {key: value for key, value in overrides.items() if value is not None}
    try:
        return BatchSettings.model_validate({**document, **set_flags})
    except ValidationError as error:
        raise InvalidInput(describe_validation_error(error, config)) from None


def graph_args(settings: BatchSettings) -> GraphArgs:
    """The application's args, as the online graph builder reads them (paths relative to the
    working directory, as `serve run` resolves them)."""
    source = settings.serve_config
    applications = yaml.safe_load(Path(source).read_text()).get("applications") or []
    app = next((a for a in applications if settings.app in (None, a.get("name"))), None)
    if app is None:
        raise InvalidInput(f"{source}: no application named '{settings.app}'")
    args = app.get("args") or {}
    model = ExperimentGraphArgs if "experiments" in args else GraphArgs
    try:
        return model.model_validate(args).with_resolved_paths()
    except ValidationError as error:
        raise InvalidInput(describe_validation_error(error, f"{source} (args of '{app.get('name')}')")) from None


def choose_versions(settings: BatchSettings, graph: GraphArgs) -> tuple[str, list[ModelVersion]]:
    repository = ModelRepository(graph.repository)
    experiments = getattr(graph, "experiments", {})
    served = graph.models or repository.model_names()
    model = settings.model
    if model is None:
        candidates = list(experiments) or served
        if len(candidates) != 1:
            raise InvalidInput(f"several models could be scored ({sorted(candidates)}): name one with --model")
        model = candidates[0]
    if model not in served:
        raise InvalidInput(f"model '{model}' is not served by this application (models: {sorted(served)})")
    traffic = experiments[model].traffic if model in experiments else None
    if settings.version is not None:
        version = settings.version
    elif traffic is not None:
        version = traffic.champion
    else:
        version = repository.served_versions(model, graph.versions.get(model))[-1].version
    versions = [repository.version(model, version)]
    if settings.compare:
        if traffic is None or traffic.challenger is None:
            raise InvalidInput(f"--compare: model '{model}' has no challenger in this application's experiment")
        versions.append(repository.version(model, traffic.challenger))
    for v in versions:
        v.check()
    return model, versions


def list_inputs(uri: str) -> tuple[pyarrow.fs.FileSystem, list[str]]:
    """A Parquet file, a folder (searched recursively), a glob, or any of these as a pyarrow URI."""
    # A URI's query (?endpoint_override=...) is no glob: there only * and [ are.
    query_at = uri.find("?") if "://" in uri else -1
    path, query = (uri, "") if query_at < 0 else (uri[:query_at], uri[query_at:])
    glob_at = next((i for i, c in enumerate(path) if c in ("*[" if query else "*?[")), None)
    prefix = path if glob_at is None else path[:glob_at].rpartition("/")[0]
    base = prefix + query
    try:
        filesystem, root = open_storage(base or ".")
        info = filesystem.get_file_info(root)
    except (OSError, ValueError) as error:  # unreachable, refused, or a URI pyarrow cannot open
        raise InvalidInput(f"input '{uri}': the store cannot be used: {error}") from None
    if info.type == pyarrow.fs.FileType.NotFound:
        raise InvalidInput(f"input '{uri}': no such file or folder")
    if info.type == pyarrow.fs.FileType.File:
        return filesystem, [root]
    selector = pyarrow.fs.FileSelector(root, recursive=True)
    relative = {
        f.path: f.path[len(root) :].lstrip("/")
        for f in filesystem.get_file_info(selector)
        if f.type == pyarrow.fs.FileType.File
    }
    # Hidden and underscored names (_SUCCESS, _manifest.json, .part files) are not data, as in Spark.
    files = [path for path, rel in relative.items() if not any(p.startswith(("_", ".")) for p in rel.split("/"))]
    if glob_at is not None:
        pattern = path[len(prefix) :].lstrip("/")
        files = [path for path in files if fnmatch.fnmatch(relative[path], pattern)]
    if not files:
        raise InvalidInput(f"input '{uri}': no files to score")
    return filesystem, sorted(files)


def required_columns(version: ModelVersion) -> list[str]:
    return [spec.name for spec in version.input_specs]


def check_inputs(
    filesystem: pyarrow.fs.FileSystem, files: list[str], needed: list[str]
) -> tuple[list[str], dict[str, list[int]]]:
    """Every file is Parquet and has every column the model needs; returns the common columns and
    each file's row groups (their row counts), both from the footers."""
    common: list[str] | None = None
    row_groups = {}
    for path in files:
        try:
            metadata = pq.read_metadata(path, filesystem=filesystem)
        except Exception as error:
            raise InvalidInput(f"input file {path} is not a readable Parquet file: {error}") from None
        names = metadata.schema.to_arrow_schema().names
        missing = [c for c in needed if c not in names]
        if missing:
            raise InvalidInput(f"input file {path} lacks the column(s) {missing} that the model needs")
        common = names if common is None else [c for c in common if c in names]
        row_groups[path] = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    return common or [], row_groups


def check_output(output_uri: str) -> None:
    """The output's store answers and, on an object store, its bucket exists (object stores create
    no bucket on a write): otherwise an error naming it, before any work."""
    try:
        filesystem, root = open_storage(output_uri)
        bucket = bucket_of(filesystem, root)
        if bucket is not None and filesystem.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            raise InvalidInput(f"output '{output_uri}': the bucket '{bucket}' does not exist")
        filesystem.get_file_info(root)
    except (OSError, ValueError) as error:  # unreachable, refused, or a URI pyarrow cannot open
        raise InvalidInput(f"output '{output_uri}': the store cannot be used: {error}") from None


def plan_job(settings: BatchSettings, input_uri: str, output_uri: str) -> JobPlan:
    graph = graph_args(settings)
    model, versions = choose_versions(settings, graph)
    needed = sorted({c for v in versions for c in required_columns(v)})
    input_fs, inputs = list_inputs(input_uri)
    columns, row_groups = check_inputs(input_fs, inputs, needed)
    if settings.pass_through is not None:
        missing = [c for c in settings.pass_through if c not in columns]
        if missing:
            raise InvalidInput(f"pass_through columns {missing} are not in every input file")
        pass_through = list(settings.pass_through)
    else:
        pass_through = [c for c in columns if c not in needed]
    drift = None
    if settings.drift:
        drift = graph.drift.get(model, DriftSettings())
    check_output(output_uri)
    return JobPlan(
        settings,
        graph,
        model,
        versions,
        input_fs,
        inputs,
        row_groups,
        input_uri,
        output_uri,
        pass_through,
        needed,
        drift,
    )


# --------------------------------------------------------------------------------------------
# Scoring: one actor of the pool reads a fragment, scores it and writes it, batch by batch
# --------------------------------------------------------------------------------------------


class Message:
    """A typed message through Ray Data: a row of one JSON column (Arrow takes it as it is)."""

    def row(self) -> dict[str, str]:
        return {type(self).__name__: json.dumps(asdict(self))}

    @classmethod
    def of(cls, row: dict[str, str]):
        return cls(**json.loads(row[cls.__name__]))


@dataclass(frozen=True)
class Fragment(Message):
    """Job -> scoring actor: some row groups of one input file, scored into one output file."""

    index: int
    file: str
    row_groups: list[int]
    rows: int
    part: str
    """The round's part: the output goes to <output>/_staging/<part>/ until the round commits."""


@dataclass(frozen=True)
class FragmentDone(Message):
    """Scoring actor -> job: what a fragment gave, and where it ran."""

    index: int
    part: str
    rows: int
    errors_by_reason: dict[str, int]
    started_at: float
    """When the actor began the fragment (seconds since the epoch)."""
    node_id: str
    pid: int
    gpu_ids: str
    placed_on: str
    device: str


def plan_fragments(row_groups: dict[str, list[int]], rows_per_fragment: int) -> list[tuple[str, list[int], int]]:
    """Each file's row groups (their row counts, by file) in runs of about rows_per_fragment rows:
    (file, row groups, rows). A row group is Parquet's unit of reading, so it is never split."""
    fragments: list[tuple[str, list[int], int]] = []
    for path, sizes in row_groups.items():
        groups: list[int] = []
        rows = 0
        for group, size in enumerate(sizes):
            groups.append(group)
            rows += size
            if rows >= rows_per_fragment:
                fragments.append((path, groups, rows))
                groups, rows = [], 0
        if groups or not sizes:  # the rest, or an empty file (its fragment writes nothing)
            fragments.append((path, groups, rows))
    return fragments


class Scorer:
    """Loads the preprocessor, the runtime and (optionally) the drift detectors once, then scores
    fragments: each is read a row group at a time, scored batch_size rows at a time, and written
    as it goes, so an actor holds one row group and one batch whatever the input's size. Rows it
    cannot score go to the round's _errors folder with the reason."""

    def __init__(
        self,
        repository: str,
        model: str,
        versions: list[int],
        input_fs: pyarrow.fs.FileSystem,
        columns: list[str],
        pass_through: list[str],
        output_uri: str,
        batch_size: int,
        num_cpus: float,
        drift: dict | None,
    ):
        import ray

        from serve_app.runtime import load_runner

        repo = ModelRepository(repository)
        self.versions = [repo.version(model, v) for v in versions]
        gpu_ids = [str(i) for i in ray.get_gpu_ids()]  # num_gpus_per_actor as Ray assigned it: CUDA when given one
        self.runners = [
            load_runner(_threads(v.config, num_cpus), v.model_file, v.precision, len(gpu_ids)) for v in self.versions
        ]
        self.input_fs, self.columns, self.pass_through, self.batch_size = input_fs, columns, pass_through, batch_size
        self.output_fs, self.output_root = open_storage(output_uri)
        self.detectors = None
        if drift:  # scipy and the detectors take a second to import: only where the job tests drift
            from serve_app.drift import detectors_for

            self.detectors = detectors_for(self.versions[0], DriftSettings.model_validate(drift))
        runner = self.runners[0]
        self.where = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "gpu_ids": ",".join(gpu_ids),
            "placed_on": runner.placed_on,
            "device": runner.device,
        }

    def __call__(self, row: dict) -> dict:
        fragment, started_at = Fragment.of(row), time.time()
        staging = f"{self.output_root}/{STAGING}/{fragment.part}"
        with self.input_fs.open_input_file(fragment.file) as handle:
            rows, failed = self._score_fragment(pq.ParquetFile(handle), fragment, staging)
        counts: dict[str, int] = {}
        if failed:
            errors = pa.concat_tables(failed, promote_options="permissive")
            self._write(f"{staging}/_errors", f"{fragment.index:06d}", errors)
            counts = {r["values"]: r["counts"] for r in errors["error"].value_counts().to_pylist()}
        return FragmentDone(fragment.index, fragment.part, rows, counts, started_at, **self.where).row()

    def _score_fragment(self, source: pq.ParquetFile, fragment: Fragment, staging: str) -> tuple[int, list[pa.Table]]:
        """Read, score and write batch by batch; returns the rows written and the rows set aside."""
        writer, rows, failed = None, 0, []
        batches = source.iter_batches(self.batch_size, row_groups=fragment.row_groups, columns=self.columns)
        try:
            for number, batch in enumerate(batches):
                scored, failures = self.score(pa.Table.from_batches([batch]), fragment, number)
                failed.extend(failures)
                if scored is None or not scored.num_rows:
                    continue
                if writer is None:
                    self.output_fs.create_dir(staging, recursive=True)
                    path = f"{staging}/{fragment.index:06d}.parquet"
                    writer = pq.ParquetWriter(path, scored.schema, filesystem=self.output_fs)
                writer.write_table(scored)
                rows += scored.num_rows
        finally:
            if writer is not None:
                writer.close()
        return rows, failed

    def score(self, batch: pa.Table, fragment: Fragment, number: int) -> tuple[pa.Table | None, list[pa.Table]]:
        """Batch `number` of a fragment: the scored rows, in the output's columns (None when the
        whole batch failed), and the rows set aside with an `error` column."""
        primary = self.versions[0]
        problems = _row_problems(primary, batch)
        bad = np.not_equal(problems, None)
        failed = [_with_error(batch.filter(bad), problems[bad])] if bad.any() else []
        good = batch.filter(~bad) if bad.any() else batch
        rows = good.num_rows
        columns = {name: good[name] for name in self.pass_through}
        columns[SOURCE_COLUMN] = pa.repeat(fragment.file, rows)
        columns["model"] = pa.repeat(primary.name, rows)
        try:
            for index, (version, runner) in enumerate(zip(self.versions, self.runners)):
                outputs = runner.predict(version.frame_tensors(good)) if rows else {}
                prefix = "" if index == 0 else "challenger_"
                for spec in version.config.outputs:
                    columns[prefix + spec.name] = _arrow(outputs.get(spec.name, np.empty((0,), dtype=np.float32)))
                columns[prefix + "model_version"] = pa.repeat(pa.scalar(version.version, pa.int64()), rows)
            scored = pa.table(columns)
            if self.detectors is not None and rows >= 20:
                drift = self._check_drift(good, scored[primary.config.outputs[0].name].to_numpy())
                staging = f"{self.output_root}/{STAGING}/{fragment.part}"
                self._write(f"{staging}/_drift", f"{fragment.index:06d}-{number}", drift)
        except Exception as error:  # the whole batch failed to score: set it aside, go on
            reasons = np.full(rows, f"{type(error).__name__}: {error}", dtype=object)
            return None, [*failed, _with_error(good, reasons)]
        return scored, failed

    def _check_drift(self, rows: pa.Table, scores: np.ndarray) -> pa.Table:
        detectors = self.detectors
        checked = detectors.check(detectors.schema.encode({c: rows[c] for c in rows.column_names}), scores)
        entries = [(name, f) for name, f in checked["data"]["features"].items()]
        entries.append(("score", checked["prediction"]))
        window_drift = bool(checked["data"]["is_drift"] or checked["prediction"]["is_drift"])
        return pa.table(
            {
                "name": [name for name, _ in entries],
                "kind": ["feature"] * (len(entries) - 1) + ["prediction"],
                "test": [f["test"] for _, f in entries],
                "statistic": [f["statistic"] for _, f in entries],
                "p_value": [f["p_value"] for _, f in entries],
                "is_drift": [f["is_drift"] for _, f in entries],
                "window_drift": [window_drift] * len(entries),
                "rows": [rows.num_rows] * len(entries),
            }
        )

    def _write(self, folder: str, name: str, table: pa.Table) -> None:
        """A side file under a name of its fragment's, so a fragment scored again replaces its own."""
        self.output_fs.create_dir(folder, recursive=True)
        pq.write_table(table, f"{folder}/{name}.parquet", filesystem=self.output_fs)


def _threads(config, num_cpus: float):
    """The version's config with ONNX Runtime's threads following the CPUs the actor reserved."""
    return config.model_copy(update={"instances": config.instances.model_copy(update={"num_cpus": num_cpus})})


def _arrow(values: np.ndarray) -> pa.Array:
    """A model output as an Arrow column: a value per row, or a fixed-size list per row."""
    if values.ndim == 1:
        return pa.array(values)
    flat = values.reshape(len(values), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _with_error(rows: pa.Table, reasons: np.ndarray) -> pa.Table:
    return rows.append_column("error", pa.array(reasons, pa.string()))


def _row_problems(version: ModelVersion, batch: pa.Table) -> np.ndarray:
    if version.preprocessor is not None:
        return version.preprocessor.row_problems(batch)
    return np.full(batch.num_rows, None, dtype=object)


# --------------------------------------------------------------------------------------------
# Placement: the driver or a pool of actors, whichever is done first
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a job's fragments are scored, and on what grounds."""

    where: str
    """"driver" (the job's own process) or "actor_pool"."""
    actors: int
    driver_rows_per_s: float | None = None
    """The driver's rate on the fragment it scored first (read, scored, written); None when num_actors
    or GPUs fixed the pool."""
    estimate_s: dict[str, float] | None = None
    """Seconds each placement would take for the rest: the driver at its rate, the pool POOL_START_S
    plus its share."""


def choose_placement(rows: int, driver_rows_per_s: float | None, actors: int) -> Placement:
    """The driver when it would be done before a pool of `actors` actors, each as fast, would be; a
    pool of one is never faster, and an input without rows has nothing to start a pool for."""
    rate = None if driver_rows_per_s is None else round(driver_rows_per_s, 1)
    if not rows or not driver_rows_per_s or actors <= 1:
        return Placement("driver", 0, rate)
    driver_s = rows / driver_rows_per_s
    pool_s = POOL_START_S + rows / (driver_rows_per_s * actors)
    estimate = {"driver": round(driver_s, 2), "actor_pool": round(pool_s, 2)}
    if driver_s <= pool_s:
        return Placement("driver", 0, rate, estimate)
    return Placement("actor_pool", actors, rate, estimate)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def run_job(plan: JobPlan) -> dict:
    """Score every input file not done yet; returns (and writes) the summary. The driver or one pool
    of actors (choose_placement) scores the fragments of every round; a round commits as soon as its
    last fragment is back."""
    import ray

    settings = plan.settings
    out_fs, root = open_storage(plan.output_uri)
    job = _job_identity(plan)
    manifest = read_json(plan.output_uri, MANIFEST) or {"job": job, "done": {}}
    if manifest.get("job") != job:
        raise InvalidInput(
            f"{plan.output_uri} holds the output of another job ({manifest.get('job')}), not of this one ({job}): "
            "give another --output"
        )
    pending = [f for f in plan.inputs if f not in manifest["done"]]
    resources = ray.cluster_resources()
    pool = _pool_size(settings, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
    _discard_uncommitted(out_fs, root, set(manifest["done"].values()))
    started, started_at = time.perf_counter(), time.time()
    rounds = {
        f"part-{uuid.uuid4().hex[:12]}": pending[i : i + settings.files_per_round]
        for i in range(0, len(pending), settings.files_per_round)
    }
    part_of = {file: part for part, files in rounds.items() for file in files}
    pieces = plan_fragments({f: plan.row_groups[f] for f in pending}, _rows_per_fragment(plan, pending, pool))
    fragments = [Fragment(i, file, groups, rows, part_of[file]) for i, (file, groups, rows) in enumerate(pieces)]
    waiting = Counter(f.part for f in fragments)
    done: list[FragmentDone] = []
    committed = 0
    placement = None
    if fragments:
        scorer_args = {
            "repository": plan.graph.repository,
            "model": plan.model,
            "versions": [v.version for v in plan.versions],
            "input_fs": plan.input_fs,
            "columns": plan.columns,
            "pass_through": plan.pass_through,
            "output_uri": plan.output_uri,
            "batch_size": settings.batch_size,
            "num_cpus": settings.num_cpus_per_actor,
            "drift": plan.drift.model_dump() if plan.drift else None,
        }
        if settings.num_actors is None and not settings.num_gpus_per_actor:  # the job chooses
            placement, results = _scored_by_driver_or_pool(settings, fragments, pool, scorer_args)
        else:
            placement = Placement("actor_pool", min(pool, len(fragments)))
            results = _scored_by_pool(settings, fragments, placement.actors, scorer_args)
        with contextlib.closing(results):  # a failed commit stops the pool too
            for row in results:
                result = FragmentDone.of(row)
                done.append(result)
                waiting[result.part] -= 1
                if waiting[result.part] == 0:
                    _commit(plan, manifest, out_fs, root, result.part, rounds[result.part])
                    committed += 1
                    rows = sum(d.rows for d in done if d.part == result.part)
                    print(
                        f"round {committed}/{len(rounds)}: {len(rounds[result.part])} file(s), {rows:,} rows scored, "
                        f"committed at {time.perf_counter() - started:.1f} s",
                        flush=True,
                    )
    _remove(out_fs, f"{root}/{STAGING}")
    elapsed = time.perf_counter() - started
    summary = _summary(plan, out_fs, root, list(rounds), done, len(plan.inputs) - len(pending), elapsed)
    if placement is not None:
        summary["placement"] = asdict(placement)
    if done:  # how long the scorers took to start and load the model, and the rate once they had
        pool_start_s = max(0.0, min(d.started_at for d in done) - started_at)
        summary["pool_start_s"] = round(pool_start_s, 2)
        summary["scoring_rows_per_s"] = round(summary["rows"] / max(elapsed - pool_start_s, 1e-9), 1)
    write_json(plan.output_uri, SUMMARY, summary)
    return summary


def _scored_by_driver_or_pool(
    settings: BatchSettings, fragments: list[Fragment], pool: int, scorer_args: dict
) -> tuple[Placement, Iterator[dict]]:
    """The driver scores a fragment with rows (reads, scores and writes it for real), then goes on
    alone or hands the rest to a pool, whichever that fragment's rate says is done first."""
    first = next((f for f in fragments if f.rows), fragments[0])
    rest = [f for f in fragments if f is not first]
    scorer, began = Scorer(**scorer_args), time.perf_counter()
    first_done = scorer(first.row())
    rate = first.rows / max(time.perf_counter() - began, 1e-9) if first.rows else None
    placement = choose_placement(sum(f.rows for f in rest), rate, min(pool, max(len(rest), 1)))
    if placement.where == "driver":
        return placement, _after(first_done, (scorer(f.row()) for f in rest))
    return placement, _after(first_done, _scored_by_pool(settings, rest, placement.actors, scorer_args))


def _after(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    """`first`, then what `rest` gives; closing it closes `rest` (a pool stops with it)."""
    yield first
    yield from rest


def _scored_by_pool(settings: BatchSettings, fragments: list[Fragment], actors: int, scorer_args: dict):
    """FragmentDone rows from a Ray Data pool of `actors` Scorers, as each fragment is done."""
    import ray
    from ray.data import ActorPoolStrategy

    scored = ray.data.from_items([f.row() for f in fragments], override_num_blocks=len(fragments)).map(
        Scorer,
        fn_constructor_kwargs=scorer_args,
        compute=ActorPoolStrategy(size=actors),
        num_cpus=settings.num_cpus_per_actor,
        num_gpus=settings.num_gpus_per_actor or None,
    )
    # The whole pool up before the first fragment is handed out, and fragments handed to any actor
    # (a fragment's description lives where the job runs; its rows are read where it is scored),
    # so that every actor, on every node, takes its share. A pool the cluster cannot place fails,
    # naming it, instead of waiting. Set on this dataset's own copy of the context, not the process's.
    scored.context.wait_for_min_actors_s = POOL_START_TIMEOUT_S
    scored.context.execution_options.actor_locality_enabled = False
    yield from scored.iter_rows()


def _commit(plan: JobPlan, manifest: dict, filesystem, root: str, part: str, files: list[str]) -> None:
    """A round's files moved into place, then the manifest that records them replaced whole: the
    round's commit point."""
    _publish(filesystem, f"{root}/{STAGING}/{part}", f"{root}/{part}")
    manifest["done"].update({f: part for f in files})
    write_json(plan.output_uri, MANIFEST, manifest)


def _pool_size(settings: BatchSettings, cpus: float, gpus: float) -> int:
    """num_actors, or as many as the cluster's CPUs (and GPUs, where actors take them) allow; a
    pool that asks for more than the cluster has would wait forever."""
    fits = int(cpus // settings.num_cpus_per_actor)
    if settings.num_gpus_per_actor:
        fits = min(fits, int(gpus // settings.num_gpus_per_actor))
    if settings.num_actors is None:
        return max(1, fits)
    if settings.num_actors > fits:
        raise InvalidInput(
            f"the actor pool needs {settings.num_actors} actors of {settings.num_cpus_per_actor:g} CPU(s)"
            + (f" and {settings.num_gpus_per_actor:g} GPU(s)" if settings.num_gpus_per_actor else "")
            + f"; the cluster has {cpus:g} CPUs and {gpus:g} GPUs, room for {fits}: lower num_actors"
        )
    return settings.num_actors


def _rows_per_fragment(plan: JobPlan, files: list[str], pool: int) -> int:
    """About four fragments per actor, so that actors finish together; never below a batch."""
    rows = sum(sum(plan.row_groups[f]) for f in files)
    return max(plan.settings.batch_size, -(-rows // (4 * pool)))


def _job_identity(plan: JobPlan) -> dict:
    """What an output folder's manifest belongs to: resuming another job's output would mix them."""
    source = without_secrets(absolute_uri(plan.input_uri))  # written in the manifest: no credentials
    return {"model": plan.model, "versions": [v.version for v in plan.versions], "input": source}


def _discard_uncommitted(filesystem: pyarrow.fs.FileSystem, root: str, committed: set[str]) -> None:
    """Staging, and parts the manifest does not record: rounds of a job that died before their
    commit. Their input files are pending again, so they are scored again, once."""
    _remove(filesystem, f"{root}/{STAGING}")
    if filesystem.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return
    for entry in filesystem.get_file_info(pyarrow.fs.FileSelector(root)):
        if entry.base_name.startswith("part-") and entry.base_name not in committed:
            logger.warning("deleting %s: a round that was not committed (its files are scored again)", entry.path)
            if entry.type == pyarrow.fs.FileType.Directory:
                filesystem.delete_dir(entry.path)
            else:
                filesystem.delete_file(entry.path)


def _publish(filesystem: pyarrow.fs.FileSystem, staging: str, final: str) -> None:
    """Every file of a staged round to its place under `final`, one file at a time (a rename on a
    local disk, a copy and a delete on an object store, which cannot move folders)."""
    files = filesystem.get_file_info(pyarrow.fs.FileSelector(staging, recursive=True))
    for entry in sorted((f for f in files if f.type == pyarrow.fs.FileType.File), key=lambda f: f.path):
        _place(filesystem, entry.path, final + entry.path[len(staging) :])


def _place(filesystem: pyarrow.fs.FileSystem, source: str, target: str) -> None:
    filesystem.create_dir(target.rpartition("/")[0], recursive=True)
    filesystem.move(source, target)


def _remove(filesystem: pyarrow.fs.FileSystem, path: str) -> None:
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        filesystem.delete_dir(path)


def _side_table(filesystem: pyarrow.fs.FileSystem, root: str, parts: list[str], folder: str) -> pd.DataFrame:
    paths = [f"{root}/{p}/{folder}" for p in parts]
    paths = [p for p in paths if filesystem.get_file_info(p).type == pyarrow.fs.FileType.Directory]
    if not paths:
        return pd.DataFrame()
    return pa.concat_tables(
        [pads.dataset(p, filesystem=filesystem, format="parquet").to_table() for p in paths], promote_options="default"
    ).to_pandas()


def _summary(
    plan: JobPlan, filesystem, root: str, parts: list[str], done: list[FragmentDone], skipped: int, elapsed: float
) -> dict:
    rows = sum(d.rows for d in done)
    reasons: Counter[str] = Counter()
    for d in done:
        reasons.update(d.errors_by_reason)
    actors = {d.pid: {k: getattr(d, k) for k in ("node_id", "pid", "gpu_ids", "placed_on", "device")} for d in done}
    summary: dict[str, Any] = {
        "model": plan.model,
        "version": plan.version.version,
        "files": {"scored": len(plan.inputs) - skipped, "skipped_already_done": skipped},
        "rows": rows,
        "error_rows": sum(reasons.values()),
        "seconds": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed, 1) if elapsed > 0 else None,
        "fragments": len(done),
        "actors": sorted(actors.values(), key=lambda a: (a["node_id"], a["pid"])),
        "nodes": sorted({d.node_id for d in done}),
        "devices": sorted({d.device for d in done}),
        "errors_by_reason": dict(reasons.most_common(10)),
    }
    if len(plan.versions) > 1 and parts:
        summary["comparison"] = _comparison(plan, filesystem, root, parts)
    if plan.drift is not None:
        summary["drift"] = _drift_summary(_side_table(filesystem, root, parts, "_drift"))
    return summary


def _comparison(plan: JobPlan, filesystem, root: str, parts: list[str]) -> dict:
    output = plan.version.config.outputs[0].name
    columns = [output, f"challenger_{output}"]
    table = pa.concat_tables(
        [pads.dataset(f"{root}/{p}", filesystem=filesystem, format="parquet").to_table(columns=columns) for p in parts]
    )
    champion, challenger = (table[c].to_numpy().astype(np.float64) for c in columns)
    difference = np.abs(champion - challenger)
    threshold = plan.version.config.decision_threshold
    return {
        "champion_version": plan.versions[0].version,
        "challenger_version": plan.versions[1].version,
        "output": output,
        "rows": len(champion),
        "decision_threshold": threshold,
        "agreement": round(float(np.mean(positive(champion, threshold) == positive(challenger, threshold))), 6),
        "mean_abs_difference": round(float(difference.mean()), 6) if len(difference) else None,
        "max_abs_difference": round(float(difference.max()), 6) if len(difference) else None,
        "correlation": round(float(np.corrcoef(champion, challenger)[0, 1]), 6) if len(champion) > 1 else None,
    }


def _drift_summary(checks: pd.DataFrame) -> dict:
    if checks.empty:
        return {"batches_checked": 0}
    windows = checks[checks["kind"] == "prediction"]  # one row per batch checked
    features = {
        name: {
            "batches_drifting": int(group["is_drift"].sum()),
            "batches": len(group),
            "median_p_value": None if group["p_value"].isna().all() else round(float(group["p_value"].median()), 6),
        }
        for name, group in checks.groupby("name")
    }
    return {
        "batches_checked": len(windows),
        "batches_drifting": int(windows["window_drift"].sum()),
        "features": features,
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a Serve config (configs/local.yaml) or a batch config")
    parser.add_argument("--app", help="the application in the Serve config; default: the first")
    parser.add_argument("--input", required=True, help="a Parquet file, a folder, a glob, or a pyarrow URI of one")
    parser.add_argument("--output", required=True, help="folder or pyarrow URI to write the scored rows to")
    parser.add_argument("--model", help="default: the model of the app's experiment, or its only model")
    parser.add_argument("--version", type=int, help="default: the experiment's champion, or the newest version")
    parser.add_argument("--compare", action="store_true", default=None, help="also score the challenger")
    parser.add_argument("--drift", action="store_true", default=None, help="test each batch for drift")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--num-actors", type=int, help="a pool of this many; default: driver or pool")
    parser.add_argument("--num-cpus-per-actor", type=float)
    parser.add_argument("--files-per-round", type=int)
    parser.add_argument("--num-gpus-per-actor", type=float)
    parser.add_argument("--address", help="Ray cluster to join; default: RAY_ADDRESS, else a local one")


def run_from_args(args: argparse.Namespace) -> dict:
    import ray

    flags = (
        "app",
        "model",
        "version",
        "compare",
        "drift",
        "batch_size",
        "num_actors",
        "num_cpus_per_actor",
        "num_gpus_per_actor",
        "files_per_round",
    )
    overrides = {flag: getattr(args, flag) for flag in flags}
    plan = plan_job(load_settings(args.config, overrides), args.input, args.output)
    print(
        f"scoring {plan.model} v{plan.version.version}"
        + (f" and challenger v{plan.versions[1].version}" if len(plan.versions) > 1 else "")
        + f" over {len(plan.inputs)} file(s) into {args.output}",
        flush=True,
    )
    connecting = time.perf_counter()
    ray.init(address=args.address, ignore_reinit_error=True)
    cluster_start_s = round(time.perf_counter() - connecting, 2)
    summary = {**run_job(plan), "cluster_start_s": cluster_start_s}  # the job's seconds and rows/s exclude it
    print(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    try:
        run_from_args(parser.parse_args(argv))
    except (InvalidInput, RepositoryError) as error:
        print(f"batch: {error.message}", file=sys.stderr)
        return 1
    return 0
