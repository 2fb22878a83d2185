"""The batch job: the online graph's preprocessing and model, run by Ray Data over Parquet.

    serve-app batch --config configs/local.yaml --input data/ --output scored/
    python -m batch --config configs/batch.yaml --input 's3://bucket/day=*/part-*.parquet' --output s3://bucket/scored
    ray job submit --working-dir . -- python -m batch --config configs/batch.yaml --input ... --output ...

The graph comes from an application's args in a Serve config (or a batch config that points at
one), so the model, version, preprocessor and drift detectors are those the online app serves.
read_parquet -> map_batches(Scorer, ActorPoolStrategy) -> write_parquet, in rounds of input files.
Each round is written under <output>/_staging/<part>/, its files are moved one by one to
<output>/<part>/ (object stores move files, not folders), and then the round is recorded in
<output>/_manifest.json, replaced whole (the commit point). A re-run skips the files the manifest
records and first deletes any part it does not (a round that died before its commit), so after a
crash anywhere and a re-run every input row is in the output exactly once. Rows that cannot be
scored go to <output>/<part>/_errors/ with the reason; the job goes on.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
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
from serve_app.storage import open_storage, read_json, write_json

logger = logging.getLogger("serve_app.batch")
MANIFEST = "_manifest.json"
SUMMARY = "_summary.json"
STAGING = "_staging"
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
    input_uri: str
    output_uri: str
    pass_through: list[str]
    drift: DriftSettings | None

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
    from graphs.single_model import resolve_paths

    source = settings.serve_config
    applications = yaml.safe_load(Path(source).read_text()).get("applications") or []
    app = next((a for a in applications if settings.app in (None, a.get("name"))), None)
    if app is None:
        raise InvalidInput(f"{source}: no application named '{settings.app}'")
    args = app.get("args") or {}
    model = ExperimentGraphArgs if "experiments" in args else GraphArgs
    try:
        return resolve_paths(model.model_validate(args))
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
    glob_at = next((i for i, c in enumerate(uri) if c in "*?["), None)
    base = uri if glob_at is None else uri[:glob_at].rpartition("/")[0]
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
        pattern = uri[len(base) :].lstrip("/")
        files = [path for path in files if fnmatch.fnmatch(relative[path], pattern)]
    if not files:
        raise InvalidInput(f"input '{uri}': no files to score")
    return filesystem, sorted(files)


def required_columns(version: ModelVersion) -> list[str]:
    return [spec.name for spec in version.input_specs]


def check_inputs(filesystem: pyarrow.fs.FileSystem, files: list[str], needed: list[str]) -> list[str]:
    """Every file is Parquet and has every column the model needs; returns the common columns."""
    common: list[str] | None = None
    for path in files:
        try:
            schema = pq.read_schema(path, filesystem=filesystem)
        except Exception as error:
            raise InvalidInput(f"input file {path} is not a readable Parquet file: {error}") from None
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise InvalidInput(f"input file {path} lacks the column(s) {missing} that the model needs")
        common = schema.names if common is None else [c for c in common if c in schema.names]
    return common or []


def check_output(output_uri: str) -> None:
    """The output's store answers and, on an object store, its bucket exists (object stores create
    no bucket on a write): otherwise an error naming it, before any work."""
    try:
        filesystem, root = open_storage(output_uri)
        bucket = root.split("/", 1)[0] if "://" in output_uri and not output_uri.startswith("file:") else None
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
    columns = check_inputs(input_fs, inputs, needed)
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
    return JobPlan(settings, graph, model, versions, input_fs, inputs, input_uri, output_uri, pass_through, drift)


# --------------------------------------------------------------------------------------------
# Scoring: one actor of the pool
# --------------------------------------------------------------------------------------------


class Scorer:
    """Loads the preprocessor, the runtime and (optionally) the drift detectors once, then scores
    batches. Rows it cannot score are written to the round's _errors folder with the reason."""

    def __init__(
        self,
        repository: str,
        model: str,
        versions: list[int],
        pass_through: list[str],
        side_uri: str,
        drift: dict | None,
    ):
        import ray

        from serve_app.drift import detectors_for
        from serve_app.runtime import load_runner

        repo = ModelRepository(repository)
        self.versions = [repo.version(model, v) for v in versions]
        gpu_ids = [str(i) for i in ray.get_gpu_ids()]  # num_gpus_per_actor as Ray assigned it: CUDA when given one
        self.runners = [load_runner(v.config, v.model_file, v.precision, len(gpu_ids)) for v in self.versions]
        self.pass_through = pass_through
        self.filesystem, self.side_root = open_storage(side_uri)
        self.detectors = detectors_for(self.versions[0], DriftSettings.model_validate(drift)) if drift else None
        node = ray.get_runtime_context().get_node_id()
        runner = self.runners[0]
        devices = {"gpu_ids": [",".join(gpu_ids)], "placed_on": [runner.placed_on], "device": [runner.device]}
        self._write("_actors", pa.table({"node_id": [node], "pid": [os.getpid()], **devices}))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.rename(columns={"path": SOURCE_COLUMN})
        primary = self.versions[0]
        problems = _row_problems(primary, batch)
        good = batch[problems.isna().to_numpy()]
        failed = [(batch[problems.notna().to_numpy()], problems[problems.notna()])]
        result = good[[*self.pass_through, SOURCE_COLUMN]].reset_index(drop=True)
        try:
            for index, (version, runner) in enumerate(zip(self.versions, self.runners)):
                outputs = runner.predict(version.frame_tensors(good)) if len(good) else {}
                prefix = "" if index == 0 else "challenger_"
                for spec in version.config.outputs:
                    values = outputs.get(spec.name, np.empty((0,), dtype=np.float32))
                    result[prefix + spec.name] = list(values) if values.ndim > 1 else values
                result[prefix + "model_version"] = np.full(len(good), version.version, dtype=np.int64)
            result.insert(len(self.pass_through) + 1, "model", primary.name)
            if self.detectors is not None and len(good) >= 20:
                self._check_drift(good, result[primary.config.outputs[0].name].to_numpy())
        except Exception as error:  # the whole batch failed to score: set it aside, go on
            reason = f"{type(error).__name__}: {error}"
            failed.append((good, pd.Series([reason] * len(good), index=good.index)))
            result = result.iloc[0:0]
        self._write_errors(failed)
        return result

    def _check_drift(self, rows: pd.DataFrame, scores: np.ndarray) -> None:
        detectors = self.detectors
        checked = detectors.check(detectors.schema.encode(rows), scores)
        entries = [(name, f) for name, f in checked["data"]["features"].items()]
        entries.append(("score", checked["prediction"]))
        self._write(
            "_drift",
            pa.table(
                {
                    "name": [name for name, _ in entries],
                    "kind": ["feature"] * (len(entries) - 1) + ["prediction"],
                    "test": [f["test"] for _, f in entries],
                    "statistic": [f["statistic"] for _, f in entries],
                    "p_value": [f["p_value"] for _, f in entries],
                    "is_drift": [f["is_drift"] for _, f in entries],
                    "window_drift": [bool(checked["data"]["is_drift"] or checked["prediction"]["is_drift"])]
                    * len(entries),
                    "rows": [len(rows)] * len(entries),
                }
            ),
        )

    def _write_errors(self, failed: list[tuple[pd.DataFrame, pd.Series]]) -> None:
        frames = []
        for rows, reasons in failed:
            if len(rows):
                frame = rows.copy()
                frame["error"] = reasons.to_numpy()
                frames.append(frame.astype({c: str for c in rows.columns if rows[c].dtype == object}))
        if frames:
            self._write("_errors", pa.Table.from_pandas(pd.concat(frames), preserve_index=False))

    def _write(self, folder: str, table: pa.Table) -> None:
        self.filesystem.create_dir(f"{self.side_root}/{folder}", recursive=True)
        pq.write_table(table, f"{self.side_root}/{folder}/{uuid.uuid4().hex}.parquet", filesystem=self.filesystem)


def _row_problems(version: ModelVersion, batch: pd.DataFrame) -> pd.Series:
    if version.preprocessor is not None:
        return version.preprocessor.row_problems(batch)
    return pd.Series([None] * len(batch), index=batch.index, dtype=object)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def run_job(plan: JobPlan) -> dict:
    """Score every input file not done yet; returns (and writes) the summary."""
    import ray
    from ray.data import ActorPoolStrategy

    settings = plan.settings
    _check_room(settings, ray.cluster_resources().get("CPU", 0.0))
    out_fs, root = open_storage(plan.output_uri)
    job = _job_identity(plan)
    manifest = read_json(plan.output_uri, MANIFEST) or {"job": job, "done": {}}
    if manifest.get("job") != job:
        raise InvalidInput(
            f"{plan.output_uri} holds the output of another job ({manifest.get('job')}), not of this one ({job}): "
            "give another --output"
        )
    pending = [f for f in plan.inputs if f not in manifest["done"]]
    skipped = len(plan.inputs) - len(pending)
    _discard_uncommitted(out_fs, root, set(manifest["done"].values()))
    started = time.perf_counter()
    parts: list[str] = []
    rounds = [pending[i : i + settings.files_per_round] for i in range(0, len(pending), settings.files_per_round)]
    for number, files in enumerate(rounds, 1):
        part = f"part-{uuid.uuid4().hex[:12]}"
        staging = f"{root}/{STAGING}/{part}"
        round_started = time.perf_counter()
        dataset = ray.data.read_parquet(files, filesystem=plan.input_fs, include_paths=True)
        scored = dataset.map_batches(
            Scorer,
            fn_constructor_kwargs={
                "repository": plan.graph.repository,
                "model": plan.model,
                "versions": [v.version for v in plan.versions],
                "pass_through": plan.pass_through,
                "side_uri": _uri(plan.output_uri, staging),
                "drift": plan.drift.model_dump() if plan.drift else None,
            },
            batch_size=settings.batch_size,
            batch_format="pandas",
            compute=ActorPoolStrategy(size=settings.num_actors),
            num_cpus=settings.num_cpus_per_actor,
            num_gpus=settings.num_gpus_per_actor or None,
        )
        scored.write_parquet(staging, filesystem=out_fs)
        _publish(out_fs, staging, f"{root}/{part}")
        manifest["done"].update({f: part for f in files})
        write_json(plan.output_uri, MANIFEST, manifest)  # the commit point of the round
        parts.append(part)
        rows = _count(out_fs, f"{root}/{part}")
        print(
            f"round {number}/{len(rounds)}: {len(files)} file(s), {rows:,} rows scored "
            f"in {time.perf_counter() - round_started:.1f} s",
            flush=True,
        )
    _remove(out_fs, f"{root}/{STAGING}")
    elapsed = time.perf_counter() - started
    summary = _summary(plan, out_fs, root, parts, skipped, elapsed)
    write_json(plan.output_uri, SUMMARY, summary)
    return summary


def _check_room(settings: BatchSettings, cpus: float) -> None:
    """Actors that take every CPU leave none for reading the files: the job would wait forever."""
    wanted = settings.num_actors * settings.num_cpus_per_actor
    if wanted > cpus - 1:
        raise InvalidInput(
            f"the actor pool reserves {wanted:g} CPUs (num_actors {settings.num_actors} x num_cpus_per_actor "
            f"{settings.num_cpus_per_actor:g}) of the cluster's {cpus:g}; reading and writing need at least one "
            "more: lower num_actors or num_cpus_per_actor"
        )


def _job_identity(plan: JobPlan) -> dict:
    """What an output folder's manifest belongs to: resuming another job's output would mix them."""
    source = plan.input_uri if "://" in plan.input_uri else str(Path(plan.input_uri).resolve())
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


def _uri(output_uri: str, path: str) -> str:
    """A path under the output root, as a URI every actor can open."""
    if "://" not in output_uri:
        return path
    scheme = output_uri.split("://", 1)[0]
    return f"{scheme}://{path}"


def _remove(filesystem: pyarrow.fs.FileSystem, path: str) -> None:
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        filesystem.delete_dir(path)


def _count(filesystem: pyarrow.fs.FileSystem, folder: str) -> int:
    return pads.dataset(folder, filesystem=filesystem, format="parquet").count_rows()


def _side_table(filesystem: pyarrow.fs.FileSystem, root: str, parts: list[str], folder: str) -> pd.DataFrame:
    paths = [f"{root}/{p}/{folder}" for p in parts]
    paths = [p for p in paths if filesystem.get_file_info(p).type == pyarrow.fs.FileType.Directory]
    if not paths:
        return pd.DataFrame()
    return pa.concat_tables(
        [pads.dataset(p, filesystem=filesystem, format="parquet").to_table() for p in paths], promote_options="default"
    ).to_pandas()


def _summary(plan: JobPlan, filesystem, root: str, parts: list[str], skipped: int, elapsed: float) -> dict:
    rows = sum(_count(filesystem, f"{root}/{p}") for p in parts)
    errors = _side_table(filesystem, root, parts, "_errors")
    actors = _side_table(filesystem, root, parts, "_actors")
    summary: dict[str, Any] = {
        "model": plan.model,
        "version": plan.version.version,
        "files": {"scored": len(plan.inputs) - skipped, "skipped_already_done": skipped},
        "rows": rows,
        "error_rows": len(errors),
        "seconds": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed, 1) if elapsed > 0 else None,
        "nodes": sorted(set(actors["node_id"])) if len(actors) else [],
        "devices": sorted(set(actors["device"])) if "device" in actors else [],
        "errors_by_reason": errors["error"].value_counts().head(10).to_dict() if len(errors) else {},
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
    parser.add_argument("--num-actors", type=int)
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
