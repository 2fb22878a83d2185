"""The batch job over real Parquet with Ray Data, against the online app's answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs
import pyarrow.parquet as pq
import pytest
import yaml

from batch import job
from batch.job import POOL_START_S, _pool_size, choose_placement, load_settings, plan_fragments, plan_job, run_job
from serve_app.config import free_port
from serve_app.demo import LABEL, request_columns, synthetic_transactions
from serve_app.errors import InvalidInput
from serve_app.protocol.rest import request_body
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.runtime.devices import cuda_device_count

ROOT = Path(__file__).parents[2]
BATCH_CONFIGS = sorted((ROOT / "configs" / "batch").glob("*.yaml"))


@pytest.fixture(scope="module")
def serve_config(demo_repository, tmp_path_factory) -> Path:
    """configs/local.yaml pointed at the test's demo repository."""
    document = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    args = document["applications"][0]["args"]
    args["repository"] = str(demo_repository)
    # The job scores the fraud model; local.yaml also serves the ranker (a model of its own inputs).
    args["models"] = [m for m in args["models"] if m != "ranker"]
    for section in (
        "experiments",
        "drift",
    ):
        args[section] = {m: s for m, s in args[section].items() if m != "ranker"}
    path = tmp_path_factory.mktemp("config") / "serve.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def transactions(rows: int, seed: int, first_id: int = 0) -> pd.DataFrame:
    frame = synthetic_transactions(rows, seed)
    frame["transaction_id"] = [f"tx-{first_id + i:07d}" for i in range(rows)]  # unique across files
    return frame


def write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def scored(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output).sort_values("transaction_id").reset_index(drop=True)


def plan(serve_config: Path, input_path: Path, output: Path, **flags):
    settings = load_settings(str(serve_config), {"num_actors": 1, "num_cpus_per_actor": 0.5, **flags})
    return plan_job(settings, str(input_path), str(output))


# -- bad input: refused before any work, naming the file and the column -------------------------


def test_bad_inputs_are_refused_before_any_work(serve_config, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match="no such file or folder"):
        plan(serve_config, tmp_path / "missing", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="no files to score"):
        plan(serve_config, tmp_path / "empty", out)
    (tmp_path / "notes" / "a.parquet").parent.mkdir()
    (tmp_path / "notes" / "a.parquet").write_text("not parquet")
    with pytest.raises(InvalidInput, match=r"a\.parquet is not a readable Parquet file"):
        plan(serve_config, tmp_path / "notes", out)
    lacking = write(transactions(10, 1).drop(columns=["amount", "country"]), tmp_path / "lacking" / "part.parquet")
    with pytest.raises(InvalidInput, match=r"part\.parquet lacks the column\(s\) \['amount', 'country'\]"):
        plan(serve_config, lacking, out)
    good = write(transactions(10, 1), tmp_path / "good.parquet")
    with pytest.raises(InvalidInput, match="model 'nope' is not served"):
        plan(serve_config, good, out, model="nope")
    with pytest.raises(InvalidInput, match="field 'batch_size'"):
        plan(serve_config, good, out, batch_size=0)
    with pytest.raises(InvalidInput, match=r"needs 9 actors of 1 CPU\(s\); the cluster has 8 CPUs and 0 GPUs"):
        _pool_size(load_settings(str(serve_config), {"num_actors": 9, "num_cpus_per_actor": 1}), 8.0, 0.0)
    assert not out.exists()


def test_the_plan_follows_the_online_app(serve_config, tmp_path):
    good = write(transactions(10, 1), tmp_path / "in" / "day=1" / "a.parquet")
    write(transactions(10, 2), tmp_path / "in" / "day=2" / "b.parquet")
    (tmp_path / "in" / "_SUCCESS").write_text("")
    job = plan(serve_config, tmp_path / "in", tmp_path / "out", compare=True)
    assert (job.model, [v.version for v in job.versions]) == ("fraud", [1, 2])  # champion, challenger
    assert [Path(f).name for f in job.inputs] == ["a.parquet", "b.parquet"]
    assert job.pass_through == ["transaction_id", LABEL]
    globbed = plan(serve_config, Path(f"{tmp_path}/in/day=*/a.parquet"), tmp_path / "out", version=2)
    assert globbed.inputs == [str(good)] and globbed.version.version == 2


def test_the_pool_and_the_fragments_follow_the_cluster_and_the_data(serve_config):
    settings = load_settings(str(serve_config), {})
    assert _pool_size(settings, 8.0, 0.0) == 8  # one actor per CPU: each reads, scores and writes
    assert _pool_size(load_settings(str(serve_config), {"num_gpus_per_actor": 0.5}), 8.0, 1.0) == 2
    # Row groups are never split; a file's groups are gathered up to the fragment's size.
    files = {"a": [100, 100, 100, 100, 50], "b": [1000], "c": []}
    assert plan_fragments(files, 200) == [
        ("a", [0, 1], 200),
        ("a", [2, 3], 200),
        ("a", [4], 50),
        ("b", [0], 1000),
        ("c", [], 0),
    ]


def test_the_driver_scores_a_job_it_would_finish_before_a_pool_could_start():
    rate = 1_000_000.0  # the driver's rows/s on the fragment it scored first
    small = choose_placement(1_000_000, rate, actors=2)  # 1 s in the driver, 2.5 + 0.5 s with two actors
    assert (small.where, small.actors) == ("driver", 0)
    assert small.estimate_s == {"driver": 1.0, "actor_pool": POOL_START_S + 0.5}
    large = choose_placement(10_000_000, rate, actors=2)  # 10 s against 2.5 + 5 s
    assert (large.where, large.actors) == ("actor_pool", 2)
    wide = choose_placement(4_000_000, rate, actors=16)  # 4 s against 2.5 + 0.25 s
    assert wide.where == "actor_pool"
    assert choose_placement(10_000_000, rate, actors=1).where == "driver"  # one actor is never faster
    assert choose_placement(0, None, actors=8).where == "driver"  # no rows: nothing to start a pool for


@pytest.mark.parametrize("path", BATCH_CONFIGS, ids=lambda p: p.name)
def test_batch_configs_point_at_a_real_application(path):
    settings = load_settings(str(path), {})
    assert Path(settings.serve_config).is_file()
    assert (
        settings.model in yaml.safe_load(Path(settings.serve_config).read_text())["applications"][0]["args"]["models"]
    )


# -- running on the session's Ray cluster --------------------------------------------------------


def test_batch_predictions_equal_the_online_answers(serve_config, served, tmp_path):
    frame = transactions(250, seed=11)  # one request: the model takes up to 256 rows
    job = plan(serve_config, write(frame, tmp_path / "in.parquet"), tmp_path / "out", version=1)
    summary = run_job(job)
    offline = scored(tmp_path / "out")
    assert summary["rows"] == 250 and summary["error_rows"] == 0
    assert list(offline.columns[:3]) == ["transaction_id", LABEL, "source_file"]
    assert set(offline["model"]) == {"fraud"} and set(offline["model_version"]) == {1}
    with httpx.Client(base_url=served, timeout=30) as http:
        response = http.post("/v2/models/fraud/versions/1/infer", json=request_body(request_columns(frame)))
    assert response.status_code == 200, response.text
    online = np.array(next(o for o in response.json()["outputs"] if o["name"] == "fraud_probability")["data"])
    np.testing.assert_allclose(offline["fraud_probability"].to_numpy(), online, rtol=0, atol=1e-6)


def test_a_small_job_scored_in_the_driver_equals_the_pool_s(serve_config, ray_cluster, tmp_path):
    """num_actors unset: the job measures the driver and chooses it for a small input (no pool to
    start); the output, row by row, and the manifest are those a pool of actors writes."""
    inputs = tmp_path / "in"
    for n in range(2):
        write(transactions(300, seed=15 + n, first_id=300 * n), inputs / f"part-{n}.parquet")
    in_driver = run_job(plan(serve_config, inputs, tmp_path / "driver", num_actors=None))
    by_pool = run_job(plan(serve_config, inputs, tmp_path / "pool"))
    # Each file is one fragment: after the driver's first, one is left, and a pool of one actor is never
    # faster than the driver, whatever the rate it measured.
    assert (in_driver["placement"]["where"], in_driver["placement"]["actors"]) == ("driver", 0)
    assert [a["pid"] for a in in_driver["actors"]] == [os.getpid()]  # this process scored it
    assert by_pool["placement"] == {"where": "actor_pool", "actors": 1, "driver_rows_per_s": None, "estimate_s": None}
    assert by_pool["actors"][0]["pid"] != os.getpid()
    assert in_driver["rows"] == by_pool["rows"] == 600
    pd.testing.assert_frame_equal(scored(tmp_path / "driver"), scored(tmp_path / "pool"))
    manifests = [json.loads((tmp_path / out / job.MANIFEST).read_text()) for out in ("driver", "pool")]
    assert sorted(manifests[0]["done"]) == sorted(manifests[1]["done"]) == sorted(str(p) for p in inputs.iterdir())


def test_bad_rows_go_to_errors_with_the_reason_and_the_job_goes_on(serve_config, ray_cluster, tmp_path):
    # An export that wrote amounts as text: numbers in text are scored, text that is no number is not.
    frame = transactions(200, seed=12).astype({"amount": str, "merchant_category": object})
    frame.loc[3, "amount"] = None
    frame.loc[7, "amount"] = "a lot"
    frame.loc[9, "merchant_category"] = None
    summary = run_job(plan(serve_config, write(frame, tmp_path / "in.parquet"), tmp_path / "out"))
    assert (summary["rows"], summary["error_rows"]) == (197, 3)
    errors = pd.read_parquet(next((tmp_path / "out").glob("part-*/_errors"))).sort_values("transaction_id")
    assert errors["transaction_id"].tolist() == ["tx-0000003", "tx-0000007", "tx-0000009"]
    assert errors["error"].tolist() == [
        "'amount' is missing or not a finite number",
        "'amount' is missing or not a finite number",
        "'merchant_category' is missing or not a string",
    ]
    assert len(scored(tmp_path / "out")) == 197  # readers of the output never see the side folders


def test_an_actor_runs_where_ray_placed_it(serve_config, ray_cluster, tmp_path):
    """num_gpus_per_actor reserves the session's logical GPU (tests/conftest.py): the actor is given
    it and, with no usable device behind it here, says so and scores on the CPU."""
    frame = transactions(50, seed=13)
    summary = run_job(
        plan(serve_config, write(frame, tmp_path / "in.parquet"), tmp_path / "out", num_gpus_per_actor=0.5)
    )
    [actor] = summary["actors"]
    assert actor["gpu_ids"] == "0" and summary["rows"] == 50
    assert actor["placed_on"] == "cuda"  # the runner was told of the GPU it was given
    if cuda_device_count() == 0:
        assert summary["devices"] == ["cpu"]
    else:
        assert summary["devices"] == ["cuda:0"]


def test_a_rerun_skips_files_already_done(serve_config, ray_cluster, tmp_path):
    inputs = tmp_path / "in"
    for n in range(3):
        write(transactions(100, seed=20 + n, first_id=100 * n), inputs / f"part-{n}.parquet")
    first = run_job(plan(serve_config, inputs, tmp_path / "out", files_per_round=2))
    assert first["files"] == {"scored": 3, "skipped_already_done": 0} and first["rows"] == 300
    write(transactions(100, seed=30, first_id=300), inputs / "part-3.parquet")
    again = run_job(plan(serve_config, inputs, tmp_path / "out", files_per_round=2))
    assert again["files"] == {"scored": 1, "skipped_already_done": 3} and again["rows"] == 100
    ids = scored(tmp_path / "out")["transaction_id"]
    assert len(ids) == 400 and ids.is_unique
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert len(manifest["done"]) == 4 and not (tmp_path / "out" / "_staging").exists()


class Crash(Exception):
    """The job stops here, as if killed: nothing after this point runs."""


COMMIT_STEPS = ["staged", "half_published", "published", "manifest_written"]


def crash_in_round(monkeypatch, step: str, number: int) -> None:
    """The job dies at `step` of the commit of its round `number`; the rounds before it committed."""
    rounds = {"published": 0, "placed": 0}
    publish, place, write_json = job._publish, job._place, job.write_json

    def crashing() -> bool:
        return rounds["published"] == number

    def crashing_publish(filesystem, staging, final):
        rounds["published"] += 1
        if crashing() and step == "staged":
            raise Crash(step)
        publish(filesystem, staging, final)
        if crashing() and step == "published":
            raise Crash(step)

    def crashing_place(filesystem, source, target):
        if crashing() and step == "half_published" and rounds["placed"] == 1:
            raise Crash(step)  # the round's first file is in its place, the others are not
        rounds["placed"] += crashing()
        place(filesystem, source, target)

    def crashing_write_json(uri, path, document):
        if crashing() and step == "manifest_written" and path == job.MANIFEST:
            raise Crash(step)  # the new manifest never replaced the old one
        write_json(uri, path, document)

    monkeypatch.setattr(job, "_publish", crashing_publish)
    monkeypatch.setattr(job, "_place", crashing_place)
    monkeypatch.setattr(job, "write_json", crashing_write_json)


def crash_then_rerun(monkeypatch, step: str, make_plan, number: int = 2) -> dict:
    crash_in_round(monkeypatch, step, number)
    with pytest.raises(Crash):
        run_job(make_plan())
    monkeypatch.undo()
    return run_job(make_plan())


def test_a_crash_mid_commit_then_a_rerun_gives_every_row_exactly_once(serve_config, ray_cluster, tmp_path, monkeypatch):
    """Every step is crashed in turn on the object store below; here the half-published round."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    for n in range(2):
        write(transactions(50, seed=40 + n, first_id=50 * n), inputs / f"part-{n}.parquet")
    # One round, crashed: the object-store tests below crash a later round, at every step.
    again = crash_then_rerun(monkeypatch, "half_published", lambda: plan(serve_config, inputs, output), number=1)
    assert again["files"] == {"scored": 2, "skipped_already_done": 0}, again
    ids = scored(output)["transaction_id"]
    assert len(ids) == 100 and ids.is_unique
    manifest = json.loads((output / job.MANIFEST).read_text())
    assert sorted(manifest["done"]) == sorted(str(p) for p in inputs.iterdir())
    assert sorted(p.name for p in output.glob("part-*")) == sorted(set(manifest["done"].values()))


def test_an_output_of_another_job_is_refused_before_any_work(serve_config, ray_cluster, tmp_path):
    inputs, output = tmp_path / "in", tmp_path / "out"
    write(transactions(50, seed=50), inputs / "part-0.parquet")
    other = {"model": "fraud", "versions": [1], "input": str(tmp_path / "other")}
    output.mkdir()
    (output / job.MANIFEST).write_text(json.dumps({"job": other, "done": {}}))
    with pytest.raises(InvalidInput, match="holds the output of another job"):
        run_job(plan(serve_config, inputs, output))
    assert [p.name for p in output.iterdir()] == [job.MANIFEST]


# -- on an object store: an S3-compatible server on the loopback interface, through pyarrow's S3 --------

BUCKET = "batch-tests"


@pytest.fixture(scope="module")
def bucket(object_store) -> pyarrow.fs.S3FileSystem:
    s3 = pyarrow.fs.S3FileSystem(
        endpoint_override=object_store.removeprefix("http://"), scheme="http", allow_bucket_creation=True
    )
    s3.create_dir(BUCKET)
    return s3


@pytest.mark.object_store
@pytest.mark.parametrize("step", COMMIT_STEPS)
def test_on_an_object_store_a_crash_at_each_commit_step_then_a_rerun_gives_every_row_once(
    serve_config, demo_repository, bucket, monkeypatch, step
):
    frames = [transactions(40, seed=60 + n, first_id=40 * n) for n in range(2)]
    frames[1].loc[5, "amount"] = np.nan  # one row the model cannot take: it goes to _errors
    for n, frame in enumerate(frames):
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, f"{BUCKET}/{step}/in/{n}.parquet", filesystem=bucket)
    source, output = f"s3://{BUCKET}/{step}/in/", f"s3://{BUCKET}/{step}/out"
    again = crash_then_rerun(monkeypatch, step, lambda: plan(serve_config, source, output, files_per_round=1))
    assert again["files"] == {"scored": 1, "skipped_already_done": 1}, again
    root = f"{BUCKET}/{step}/out"
    out = pads.dataset(root, filesystem=bucket, format="parquet").to_table().to_pandas()
    out = out.sort_values("transaction_id").reset_index(drop=True)
    expected = pd.concat(frames)[lambda f: f["amount"].notna()].sort_values("transaction_id").reset_index(drop=True)
    assert out["transaction_id"].tolist() == expected["transaction_id"].tolist()  # each good row once
    version = ModelRepository(demo_repository).version("fraud", again["version"])
    runner = load_runner(version.config, version.model_file, version.precision)
    wanted = runner.predict(version.frame_tensors(expected))["fraud_probability"]
    np.testing.assert_allclose(out["fraud_probability"].to_numpy(), wanted, rtol=0, atol=1e-6)
    errors = pads.dataset(
        [f.path for f in bucket.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)) if "/_errors/" in f.path],
        filesystem=bucket,
        format="parquet",
    ).to_table()
    assert errors.column("transaction_id").to_pylist() == ["tx-0000045"]
    with bucket.open_input_stream(f"{root}/{job.MANIFEST}") as stream:
        manifest = json.loads(stream.read())
    assert sorted(manifest["done"]) == [f"{BUCKET}/{step}/in/{n}.parquet" for n in range(2)]
    parts = {
        f.base_name for f in bucket.get_file_info(pyarrow.fs.FileSelector(root)) if f.base_name.startswith("part-")
    }
    assert parts == set(manifest["done"].values())  # the crashed round's files are gone, its rows scored once
    assert bucket.get_file_info(f"{root}/{job.STAGING}").type == pyarrow.fs.FileType.NotFound


def test_an_object_store_that_cannot_take_the_output_is_refused_before_any_work(serve_config, bucket, tmp_path):
    source = write(transactions(20, seed=70), tmp_path / "in.parquet")
    with pytest.raises(InvalidInput, match="the bucket 'no-such-bucket' does not exist"):
        plan(serve_config, source, "s3://no-such-bucket/out")
    unreachable = "s3://batch-tests/out?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1&connect_timeout=1"
    with pytest.raises(InvalidInput, match=r"output 's3://batch-tests/out\?.*': the store cannot be used"):
        plan(serve_config, source, unreachable)
    with pytest.raises(InvalidInput, match="input 's3://no-such-bucket/in/': no such file or folder"):
        plan(serve_config, "s3://no-such-bucket/in/", f"s3://{BUCKET}/refused")
    assert not [f for f in bucket.get_file_info(pyarrow.fs.FileSelector(BUCKET)) if f.base_name == "refused"]


@pytest.fixture
def guarded_store() -> str:
    """An S3-compatible server of its own that checks credentials (moto with IAM on): the session's
    server takes any key. Its address, as a URI's query."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):  # its start: until it answers
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        # The region given: without one pyarrow would ask the public S3 endpoint for the bucket's.
        yield f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.terminate()
        server.wait()


def test_a_store_that_refuses_the_credentials_is_named_before_any_work(
    serve_config, guarded_store, tmp_path, monkeypatch
):
    source = write(transactions(20, seed=71), tmp_path / "in.parquet")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")  # a key the store does not know
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    refused = r"the store cannot be used: .*ACCESS_DENIED"
    with pytest.raises(InvalidInput, match=rf"input 's3://data/in/\?.*': {refused}"):
        plan(serve_config, f"s3://data/in/?{guarded_store}", tmp_path / "out")
    with pytest.raises(InvalidInput, match=rf"output 's3://data/out\?.*': {refused}"):
        plan(serve_config, source, f"s3://data/out?{guarded_store}")
    assert not (tmp_path / "out").exists()


def test_champion_and_challenger_side_by_side_with_a_drift_report(serve_config, ray_cluster, tmp_path):
    frame = transactions(2000, seed=13)
    frame["amount"] = frame["amount"] * 1.6  # the batch's amounts drift from the reference
    summary = run_job(
        plan(
            serve_config,
            write(frame, tmp_path / "in.parquet"),
            tmp_path / "out",
            compare=True,
            drift=True,
            batch_size=1000,
        )
    )
    out = scored(tmp_path / "out")
    assert set(out["model_version"]) == {1} and set(out["challenger_model_version"]) == {2}
    comparison = summary["comparison"]
    agreement = np.mean((out["fraud_probability"] >= 0.5) == (out["challenger_fraud_probability"] >= 0.5))
    assert comparison["agreement"] == pytest.approx(agreement) and comparison["rows"] == 2000
    assert comparison["decision_threshold"] == 0.5  # the demo's config leaves the default
    assert 0 < comparison["correlation"] < 1
    drift = summary["drift"]
    assert drift["batches_checked"] == 2 and drift["batches_drifting"] == 2
    assert drift["features"]["amount"]["batches_drifting"] == 2
    assert drift["features"]["hour"]["batches_drifting"] == 0


def test_the_command_line_runs_the_job(serve_config, tmp_path):
    source = write(transactions(50, seed=14), tmp_path / "in.parquet")
    command = [
        sys.executable,
        "-m",
        "batch",
        "--config",
        str(serve_config),
        "--input",
        str(source),
        "--output",
        str(tmp_path / "out"),
        "--num-actors",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"rows": 50' in done.stdout and len(scored(tmp_path / "out")) == 50
    assert '"cluster_start_s": ' in done.stdout  # apart from the job's own seconds
    refused = subprocess.run(
        [*command[:6], str(tmp_path / "nothing"), *command[7:]], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert refused.returncode == 1 and "no such file or folder" in refused.stderr


def test_the_job_spreads_over_a_two_node_cluster(serve_config, tmp_path):
    inputs = tmp_path / "in"
    for n in range(4):
        write(transactions(500, seed=40 + n, first_id=500 * n), inputs / f"part-{n}.parquet")
    script = Path(__file__).parent / "two_node_job.py"
    command = [sys.executable, str(script), str(serve_config), str(inputs), str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 2000 and len(summary["nodes"]) == 2
    assert len(pads.dataset(tmp_path / "out", format="parquet").to_table()) == 2000
