"""The batch job over real Parquet with Ray Data, against the online app's answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import yaml

from batch.job import _check_room, load_settings, plan_job, run_job
from serve_app.demo import LABEL, request_columns, synthetic_transactions
from serve_app.errors import InvalidInput
from serve_app.protocol.rest import request_body
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
    return plan_job(load_settings(str(serve_config), {"num_actors": 1, **flags}), str(input_path), str(output))


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
    with pytest.raises(InvalidInput, match=r"reserves 8 CPUs .* of the cluster's 8; reading and writing need"):
        _check_room(load_settings(str(serve_config), {"num_actors": 8, "num_cpus_per_actor": 1}), 8.0)
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
    actors = pd.read_parquet(next((tmp_path / "out").glob("part-*/_actors")))
    assert actors["gpu_ids"].tolist() == ["0"] and summary["rows"] == 50
    assert actors["placed_on"].tolist() == ["cuda"]  # the runner was told of the GPU it was given
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
