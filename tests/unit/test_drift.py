"""Drift detection with real alibi-detect detectors on the demo model, without Ray."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from serve_app import cli
from serve_app.config import AlertSettings, DriftSettings
from serve_app.demo import LABEL, synthetic_transactions
from serve_app.drift import (
    BUNDLE_FOLDER,
    Detectors,
    DriftFeed,
    DriftMonitor,
    deliver_alert,
    detectors_for,
    drift_history,
)
from serve_app.drift.detectors import feature_flags
from serve_app.drift.schema import reference_scores
from serve_app.errors import RepositoryError
from serve_app.messages import DriftBatch
from serve_app.ranking import world
from serve_app.repository import ModelRepository

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "drift_analysis.ipynb"
WINDOW = 500


@pytest.fixture(scope="module")
def fraud_v1(demo_repository):
    return ModelRepository(demo_repository).version("fraud", 1)


def traffic(rows: int, seed: int, shift: bool = False) -> pd.DataFrame:
    """Live requests: the reference distribution, or one with larger amounts and more electronics."""
    frame = synthetic_transactions(rows, seed).drop(columns=[LABEL])
    if shift:
        frame["amount"] = frame["amount"] * 1.6
        rng = np.random.default_rng(seed)
        moved = rng.random(rows) < 0.15
        frame.loc[moved, "merchant_category"] = "electronics"
    return frame


def batch(version, frame: pd.DataFrame, scores: np.ndarray | None = None) -> DriftBatch:
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    if scores is None:
        scores = reference_scores(version, frame)
    return DriftBatch("fraud", version.version, "champion", columns, scores)


def monitor_for(version, storage: Path | None = None, **settings) -> DriftMonitor:
    monitor = DriftMonitor(
        {"fraud": DriftSettings(**{"window_size": WINDOW, **settings})}, [version], str(storage) if storage else None
    )
    monitor.load_detectors()
    assert monitor.states[("fraud", version.version)].status == "ready"
    return monitor


def test_no_drift_false_alarms_stay_within_p_val(fraud_v1):
    windows = 100
    monitor = monitor_for(fraud_v1, history_size=windows)
    stream = traffic(windows * WINDOW, seed=1000)
    scores = reference_scores(fraud_v1, stream)
    for start in range(0, len(stream), 10 * WINDOW):
        part = slice(start, start + 10 * WINDOW)
        monitor.observe([batch(fraud_v1, stream.iloc[part], scores[part])])
        monitor.check()
    history = monitor.report("fraud")["versions"]["1"]["history"]
    state = monitor.states[("fraud", 1)]
    assert state.windows_checked == windows
    data_alarms = np.mean([w["data_drift"] for w in state.history])
    prediction_alarms = np.mean([w["prediction_drift"] for w in state.history])
    # p_val 0.05 per test; the binomial spread over 100 windows is about 0.022.
    assert data_alarms <= 0.05 + 0.05, history
    assert prediction_alarms <= 0.05 + 0.05, history


def test_shifted_feature_and_category_are_named_within_two_windows(fraud_v1):
    monitor = monitor_for(fraud_v1)
    monitor.observe([batch(fraud_v1, traffic(2 * WINDOW, seed=2000, shift=True))])
    monitor.check()
    history = monitor.states[("fraud", 1)].history
    assert len(history) == 2
    detected = [w for w in history if w["data_drift"]]
    assert detected, list(history)
    # The two shifted features are named; others only by the chance a sample deviates (country
    # does in this sample of 1,000 rows, p 0.002-0.006 against the reference).
    assert {"amount", "merchant_category"} <= set(detected[0]["drifting_features"])
    assert not {"hour", "tx_count_24h", "card_present"} & set(detected[0]["drifting_features"])
    last = monitor.states[("fraud", 1)].last["data"]["features"]
    assert last["merchant_category"]["test"] == "chi2" and last["amount"]["test"] == "ks"
    assert last["hour"]["p_value"] > last["amount"]["p_value"]


def test_a_shift_in_the_scores_alone_is_prediction_drift(fraud_v1):
    monitor = monitor_for(fraud_v1)
    frame = traffic(2 * WINDOW, seed=3000)
    scores = np.clip(reference_scores(fraud_v1, frame) * 2.0 + 0.05, 0, 1)  # the model's behaviour moved
    monitor.observe([batch(fraud_v1, frame, scores)])
    monitor.check()
    history = list(monitor.states[("fraud", 1)].history)
    assert all(w["prediction_drift"] for w in history), history
    assert not any(w["data_drift"] for w in history), history


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", _Receiver.received
    server.shutdown()


def test_an_alert_fires_once_per_episode_to_the_webhook_and_the_command(fraud_v1, webhook, tmp_path):
    url, received = webhook
    runs = tmp_path / "retrain-runs.jsonl"
    command = [sys.executable, "-c", f"import sys; open({str(runs)!r}, 'a').write(sys.stdin.read() + '\\n')"]
    monitor = monitor_for(fraud_v1, alert_after_windows=2, alert=AlertSettings(webhook_url=url, command=command))
    events = []
    # Episode one: 3 drifting windows, then 2 clean ones; episode two: 3 drifting windows.
    for seed, shift in [(1, True), (2, True), (3, True), (4, False), (5, False), (6, True), (7, True), (8, True)]:
        monitor.observe([batch(fraud_v1, traffic(WINDOW, seed=4000 + seed, shift=shift))])
        events += monitor.check()
    alerts = [e for e in events if e["event"] == "drift"]
    assert [e["event"] for e in events] == ["drift", "cleared", "drift"]
    assert events[1]["reason"] == "v1's window 4 is clean" and monitor.report("fraud")["cleared"] == [events[1]]
    for alert in alerts:
        outcome = asyncio.run(deliver_alert(alert, monitor.settings["fraud"].alert))
        assert outcome == {"webhook": "HTTP 204", "command": "exit 0"}
    assert len(received) == 2
    assert received[0]["model"] == "fraud" and received[0]["version"] == 1
    assert "amount" in received[0]["evidence"][-1]["drifting_features"]
    assert len(received[0]["evidence"]) == 2
    ran = [json.loads(line) for line in runs.read_text().splitlines()]
    assert [r["event"] for r in ran] == ["drift", "drift"]


def test_a_failing_webhook_and_command_are_reported_not_raised():
    settings = AlertSettings(
        webhook_url="http://127.0.0.1:9/nothing", command=[sys.executable, "-c", "exit(3)"], timeout_s=2
    )
    outcome = asyncio.run(deliver_alert({"model": "fraud"}, settings))
    assert outcome["webhook"].startswith("failed: ")
    assert outcome["command"] == "exit 3"


def test_state_history_and_episode_survive_a_restart(fraud_v1, tmp_path):
    monitor = monitor_for(fraud_v1, tmp_path, alert_after_windows=1)
    monitor.observe([batch(fraud_v1, traffic(2 * WINDOW, seed=5000, shift=True))])
    assert [e["event"] for e in monitor.check()] == ["drift"]
    restarted = monitor_for(fraud_v1, tmp_path, alert_after_windows=1)
    report = restarted.report("fraud")
    assert report["versions"]["1"]["windows_checked"] == 2
    assert len(report["versions"]["1"]["history"]) == 2
    assert report["episode"]["versions"] == [1]  # the open episode is not alerted again
    restarted.observe([batch(fraud_v1, traffic(WINDOW, seed=5001, shift=True))])
    assert restarted.check() == []
    table = drift_history(str(tmp_path), "fraud")
    assert sorted(set(table["window"])) == [1, 2, 3]
    assert set(table["name"]) == {*restarted.states[("fraud", 1)].detectors.schema.names, "score"}


def test_an_episode_ends_when_its_drifting_version_is_no_longer_served(fraud_v1, demo_repository, tmp_path):
    monitor = monitor_for(fraud_v1, tmp_path, alert_after_windows=1)
    monitor.observe([batch(fraud_v1, traffic(WINDOW, seed=5100, shift=True))])
    assert [e["event"] for e in monitor.check()] == ["drift"]
    monitor.save()
    # v1 replaced and unloaded: the application's new graph watches v2 only.
    replaced = monitor_for(ModelRepository(demo_repository).version("fraud", 2), tmp_path, alert_after_windows=1)
    report = replaced.report("fraud")
    assert report["episode"] is None and len(report["alerts"]) == 1
    assert [(c["event"], c["reason"]) for c in report["cleared"]] == [("cleared", "v1 no longer served")]


def test_bundles_round_trip_through_alibi_detect_saving(fraud_v1, tmp_path):
    built = detectors_for(fraud_v1, DriftSettings())
    built.save(tmp_path / "bundle")
    loaded = Detectors.load(tmp_path / "bundle")
    frame = traffic(WINDOW, seed=6000, shift=True)
    scores = reference_scores(fraud_v1, frame)
    assert loaded.check(loaded.schema.encode(frame), scores) == built.check(built.schema.encode(frame), scores)
    # A bundle dropped in beside a version is used instead of one built from the reference.
    copy = tmp_path / "repository"
    shutil.copytree(fraud_v1.path.parent, copy / "fraud")
    version = ModelRepository(copy).version("fraud", 1)
    built.save(version.path / BUNDLE_FOLDER)
    assert detectors_for(version, DriftSettings()).source == str(version.path / BUNDLE_FOLDER)


def test_drift_fit_writes_a_bundle_the_monitor_then_uses(demo_repository, tmp_path, capsys):
    shutil.copytree(demo_repository / "fraud", tmp_path / "fraud")
    config = Path(__file__).parents[2] / "configs" / "local.yaml"
    fit = ["drift", "fit", "--repository", str(tmp_path), "--model", "fraud", "--config", str(config)]
    assert cli.main([*fit, "--version", "1"]) == 0
    assert "fraud v1: window detectors over ['amount'," in capsys.readouterr().out
    version = ModelRepository(tmp_path).version("fraud", 1)
    assert detectors_for(version, DriftSettings()).source == str(version.path / BUNDLE_FOLDER)
    assert not [p for p in version.path.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert cli.main([*fit, "--set", "mode=sometimes"]) == 1
    assert "drift settings of 'fraud': field 'mode'" in capsys.readouterr().err


def test_bundles_with_pickled_objects_are_refused(fraud_v1, tmp_path):
    detectors_for(fraud_v1, DriftSettings()).save(tmp_path)
    (tmp_path / "data" / "preprocess_fn.dill").write_bytes(b"not to be unpickled")
    with pytest.raises(RepositoryError, match="refusing pickled objects"):
        Detectors.load(tmp_path)
    (tmp_path / "data" / "preprocess_fn.dill").unlink()
    config = tmp_path / "data" / "config.toml"
    original = config.read_text()
    config.write_text(original.replace('name = "TabularDrift"', 'name = "ClassifierDrift"'))
    with pytest.raises(RepositoryError, match="not 'ClassifierDrift'"):
        Detectors.load(tmp_path)
    config.write_text(original)
    (tmp_path / "prediction" / "config.toml").unlink()
    with pytest.raises(RepositoryError, match=r"no config\.toml"):
        Detectors.load(tmp_path)


@pytest.mark.parametrize("x_ref", ["../outside.npy", "/etc/passwd.npy", "x_ref.dill", "sub/../../x_ref.npy"])
def test_a_bundle_naming_a_file_outside_it_or_not_an_array_is_refused(fraud_v1, tmp_path, x_ref, reliability):
    row = reliability("Security", f"a drift bundle whose config.toml names x_ref = {x_ref} (unit)")
    bundle = tmp_path / "bundle"
    detectors_for(fraud_v1, DriftSettings(backend="alibi")).save(bundle)
    (tmp_path / "outside.npy").write_bytes((bundle / "data" / "x_ref.npy").read_bytes())
    config = bundle / "data" / "config.toml"
    config.write_text(config.read_text().replace('x_ref = "x_ref.npy"', f'x_ref = "{x_ref}"'))
    with pytest.raises(RepositoryError, match=r"names '.*', not a \.npy array inside the bundle") as refused:
        Detectors.load(bundle)
    row.measured["refused"] = str(refused.value).split(": ", 1)[1]


def test_online_mode_detects_a_shift_and_stays_quiet_on_reference_traffic(fraud_v1):
    # Few simulations keep this test quick; an expected run time of 1,500 rows makes a false alarm
    # in the 200 quiet rows unlikely (about one in eight); the stream and the thresholds are seeded.
    settings = {"mode": "online", "ert": 1500, "online_window_size": 30, "n_bootstraps": 1600, "window_size": 200}
    with pytest.raises(RepositoryError, match=r"n_bootstraps 1600 is too few for ert 1500\.0 over 5"):
        detectors_for(fraud_v1, DriftSettings(**settings))
    np.random.seed(0)  # alibi-detect simulates the thresholds with numpy's global generator
    monitor = monitor_for(fraud_v1, **{**settings, "features": ["amount", "merchant_category"]})
    detectors = monitor.states[("fraud", 1)].detectors
    assert {type(d).__name__ for d in detectors.detectors.values()} == {"CVMDriftOnline", "TabularDrift"}
    monitor.observe([batch(fraud_v1, traffic(200, seed=7000))])
    monitor.check()
    quiet = monitor.states[("fraud", 1)].last
    assert not quiet["data"]["features"]["amount"]["is_drift"], quiet
    monitor.observe([batch(fraud_v1, traffic(200, seed=7001, shift=True))])
    monitor.check()
    shifted = monitor.states[("fraud", 1)].last
    assert shifted["data"]["is_drift"], shifted
    assert shifted["data"]["features"]["amount"]["test"] == "cvm"
    assert shifted["data"]["features"]["amount"]["statistic"] > shifted["data"]["features"]["amount"]["threshold"]


def test_settings_that_could_never_check_a_window_are_refused():
    with pytest.raises(ValueError, match="window_size 5000 exceeds max_buffered_rows 1000"):
        DriftSettings(window_size=5000, max_buffered_rows=1000)
    with pytest.raises(ValueError, match="min_window_size 300 exceeds window_size 200"):
        DriftSettings(window_size=200, min_window_size=300)


def test_feature_flags_apply_the_correction():
    p = np.array([0.001, 0.02, 0.03, 0.5])
    assert feature_flags(p, 0.05, "bonferroni").tolist() == [True, False, False, False]
    assert feature_flags(p, 0.05, "fdr").tolist() == [True, True, True, False]


def test_the_feed_is_bounded_samples_and_reports_what_it_dropped():
    settings = {"fraud": DriftSettings(max_buffered_rows=100, window_size=100, min_window_size=50)}
    feed = DriftFeed(settings, {"fraud": ["amount", "merchant_category"]}, seed=0)
    inputs = {"amount": np.ones(60, dtype=np.float32), "merchant_category": np.array([b"fuel"] * 60, dtype=object)}
    outputs = {"fraud_probability": np.full(60, 0.1, dtype=np.float32)}
    feed.add("fraud", 1, "champion", inputs, outputs)
    feed.add("fraud", 1, "champion", inputs, outputs)  # over the bound: dropped, counted
    feed.add("other", 1, "champion", inputs, outputs)  # not watched: ignored
    (taken,) = feed.take()
    assert taken.rows == 60 and taken.dropped == 60 and taken.columns["amount"].shape == (60,)
    feed.lost([taken])
    (report,) = feed.take()
    assert report.rows == 0 and report.dropped == 120
    sampled = DriftFeed({"fraud": DriftSettings(sample_rate=0.25)}, {"fraud": ["amount", "merchant_category"]}, seed=1)
    one = {k: v[:1] for k, v in inputs.items()}
    for _ in range(2000):
        sampled.add("fraud", 1, "champion", one, {"fraud_probability": outputs["fraud_probability"][:1]})
    assert 400 < sampled.take()[0].rows < 600


def test_unwatchable_versions_fail_clearly(demo_repository, tmp_path):
    version = ModelRepository(demo_repository).version("fraud", 1)
    with pytest.raises(RepositoryError, match=r"features \['nope'\] are not columns"):
        detectors_for(version, DriftSettings(features=["nope"]))
    with pytest.raises(RepositoryError, match="cannot read the reference"):
        (tmp_path / "bad.parquet").write_text("not parquet")
        detectors_for(version, DriftSettings(reference=str(tmp_path / "bad.parquet")))
    dense = ModelRepository(demo_repository).version("dense", 1)
    with pytest.raises(RepositoryError, match="no reference sample"):
        detectors_for(dense, DriftSettings())


def test_the_drift_notebook_runs_on_the_history(fraud_v1, tmp_path, monkeypatch):
    monitor = monitor_for(fraud_v1, tmp_path)
    for seed, shift in [(1, False), (2, False), (3, True), (4, True)]:
        monitor.observe([batch(fraud_v1, traffic(WINDOW, seed=8000 + seed, shift=shift))])
        monitor.check()
    monkeypatch.setenv("DRIFT_STORAGE_URI", str(tmp_path))
    monkeypatch.setenv("DRIFT_MODEL", "fraud")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources=resources).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "amount" in text and "windows checked: 4" in text


class _Slow(BaseHTTPRequestHandler):
    """Sends its status line a byte at a time, each within the socket's timeout, for longer than the deadline."""

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.1)

    def log_message(self, *args):
        pass


class _Redirect(BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(307)
        self.send_header("location", type(self).target)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(handler) -> HTTPServer:
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_webhook_follows_no_redirect_and_keeps_one_deadline(webhook, reliability):
    row = reliability("Security", "a drift alert's webhook answering 307, and one trickling its answer past 1 s (unit)")
    url, received = webhook
    _Redirect.target = url
    redirecting, slow = _serve(_Redirect), _serve(_Slow)
    try:
        redirected = asyncio.run(
            deliver_alert({"model": "fraud"}, AlertSettings(webhook_url=f"http://127.0.0.1:{redirecting.server_port}/"))
        )
        assert redirected["webhook"].startswith("failed: HTTPError") and "307" in redirected["webhook"]
        assert received == []  # the redirect's target never got the alert
        late = AlertSettings(webhook_url=f"http://127.0.0.1:{slow.server_port}/", timeout_s=1.0)
        trickled = asyncio.run(deliver_alert({"model": "fraud"}, late))["webhook"]
        row.measured["outcomes"] = f"{redirected['webhook']} / {trickled}"
        assert trickled == "failed: no answer within 1.0 s"
    finally:
        redirecting.shutdown()
        slow.shutdown()


def test_the_alert_command_gets_the_alert_on_stdin_and_no_secret(tmp_path, monkeypatch, reliability):
    row = reliability("Security", "a drift alert's command, with the admin token in the monitor's environment (unit)")
    monkeypatch.setenv("SERVE_APP_ADMIN_TOKEN", "secret-token")
    monkeypatch.setenv("RETRAIN_QUEUE", "nightly")
    seen = tmp_path / "seen.json"
    dump = "{'stdin': sys.stdin.read(), 'env': dict(os.environ)}"
    script = f"import json, os, sys; json.dump({dump}, open({str(seen)!r}, 'w'))"
    settings = AlertSettings(command=[sys.executable, "-c", script], pass_env=["RETRAIN_QUEUE"])
    alert = {"model": "fraud", "evidence": ["x" * 200_000]}
    assert asyncio.run(deliver_alert(alert, settings)) == {"command": "exit 0"}
    got = json.loads(seen.read_text())
    assert json.loads(got["stdin"])["evidence"] == ["x" * 200_000]  # large alerts whole, on stdin
    assert got["env"]["RETRAIN_QUEUE"] == "nightly" and "PATH" in got["env"]
    row.measured["its environment"] = ", ".join(sorted(got["env"]))
    assert "SERVE_APP_ADMIN_TOKEN" not in got["env"] and "SERVE_APP_DRIFT_ALERT" not in got["env"]


def test_the_history_is_written_while_the_state_cannot_be(fraud_v1, tmp_path, monkeypatch, reliability):
    row = reliability("Faults", "the drift monitor's state file unwritable during a check (unit)")
    monitor = monitor_for(fraud_v1, storage=tmp_path)

    def full_disk(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr("serve_app.drift.monitor.write_json", full_disk)
    monitor.observe([batch(fraud_v1, traffic(WINDOW, seed=9100))])
    monitor.check()  # a window is checked (drifting or not): its rows must reach the history
    monitor.save()
    history = drift_history(str(tmp_path), "fraud")
    row.measured["history rows written"] = str(len(history))
    assert len(history) > 0 and set(history["kind"]) == {"feature", "prediction"}


def test_a_rankers_ordinary_requests_stay_within_p_val_and_the_new_platform_drifts(demo_repository):
    """A ranked request's candidates share its user, so its rows are not independent draws: the feed
    keeps one candidate of each request. Fed every row instead, ordinary traffic drifts in most windows."""
    ranker = ModelRepository(demo_repository).version(world.MODEL_NAME, 1)
    columns = [*world.USER_COLUMNS, *world.ITEM_COLUMNS]
    catalogue = world.Catalogue.of(world.CATALOGUE_SEED)
    windows, window = 60, 200

    def alarms(one_row_per_request: bool, seed: int, shifted: bool = False) -> tuple[float, float]:
        settings = DriftSettings(window_size=window, history_size=windows)
        monitor = DriftMonitor({world.MODEL_NAME: settings}, [ranker], None)
        monitor.load_detectors()
        rankers = {world.MODEL_NAME} if one_row_per_request else set()
        feed = DriftFeed({world.MODEL_NAME: settings}, {world.MODEL_NAME: columns}, seed, rankers)
        requests = windows * window if one_row_per_request else windows * window // world.CANDIDATES
        frame = world.requests(requests, catalogue, seed, shifted)
        scores = reference_scores(ranker, frame)
        for number, rows in enumerate(frame.groupby("request").indices.values(), start=1):
            inputs = {column: frame[column].to_numpy()[rows] for column in columns}
            feed.add(world.MODEL_NAME, 1, "champion", inputs, {"score": scores[rows]})
            if number % (10 * window) == 0 or number == requests:
                monitor.observe(feed.take())
                monitor.check()
        state = monitor.states[(world.MODEL_NAME, 1)]
        assert state.windows_checked == windows
        return tuple(np.mean([w[kind] for w in state.history]) for kind in ("data_drift", "prediction_drift"))

    data, prediction = alarms(one_row_per_request=True, seed=11)
    # p_val 0.05 per test; the binomial spread over 60 windows is about 0.03.
    assert data <= 0.05 + 0.06 and prediction <= 0.05 + 0.06, (data, prediction)
    assert alarms(one_row_per_request=False, seed=12)[0] > 0.5  # every candidate: the user counted 20 times
    assert alarms(one_row_per_request=True, seed=13, shifted=True)[0] == 1.0
