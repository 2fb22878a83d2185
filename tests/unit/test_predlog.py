from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.fs
import pytest

from serve_app.predlog import FEEDBACK, PREDICTIONS, ParquetLog, read_table, tensors_as_json, utc_now
from serve_app.storage import read_json, write_json


def _row(i: int, model: str = "fraud") -> dict:
    return {
        "request_id": f"r{i}",
        "time": utc_now(),
        "model": model,
        "version": 1,
        "role": "champion",
        "inputs": tensors_as_json({"amount": np.array([1.5], np.float32), "country": np.array([b"US"], dtype=object)}),
        "outputs": tensors_as_json({"p": np.array([0.25], np.float32)}),
        "score": 0.25,
        "latency_ms": 3.0,
        "status": "ok",
    }


def test_rows_are_written_once_partitioned_by_model_and_date(tmp_path):
    log = ParquetLog(str(tmp_path), "router-a")
    for i in range(10):
        log.record(PREDICTIONS, _row(i, "fraud" if i < 7 else "dense"))
    assert log.flush() == 10 and log.flush() == 0
    table = read_table(str(tmp_path), PREDICTIONS, "fraud")
    assert sorted(table.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(7))
    assert read_table(str(tmp_path), PREDICTIONS).num_rows == 10
    folder = tmp_path / PREDICTIONS / "model=fraud" / f"date={utc_now().date().isoformat()}"
    assert [p.name for p in folder.iterdir()] == ["router-a-000000.parquet"]  # no hidden leftovers


def test_inputs_are_kept_as_sent():
    assert (
        tensors_as_json({"a": np.array([1, 2]), "b": np.array([b"\xff"], dtype=object)})
        == '{"a":[1,2],"b":["\\\\xff"]}'
    )


def test_a_large_request_is_logged_as_a_digest_a_small_one_whole(tmp_path):
    large = np.arange(5000, dtype=np.float32).reshape(5, 1000)
    log = ParquetLog(str(tmp_path), "w", max_logged_values=4096)
    for i, inputs in enumerate([{"x": large}, {"x": large[:4]}]):  # 5,000 values, then 4,000
        log.record(PREDICTIONS, {**_row(i), "inputs": inputs})
    assert log.flush() == 2
    logged = dict(zip(*read_table(str(tmp_path), PREDICTIONS).select(["request_id", "inputs"]).to_pydict().values()))
    digest = json.loads(logged["r0"])["x"]
    assert digest == {
        "shape": [5, 1000],
        "dtype": "float32",
        "head": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "sha256": hashlib.sha256(large.tobytes()).hexdigest(),
    }
    assert json.loads(logged["r1"])["x"] == large[:4].ravel().tolist()
    noise = np.random.default_rng(3).standard_normal(300).astype(np.float32)  # numpy's float32 text, read back equal
    noise[7] = np.nan
    np.testing.assert_array_equal(np.array(json.loads(tensors_as_json({"n": noise[8:]}))["n"], np.float32), noise[8:])
    assert json.loads(tensors_as_json({"n": noise}))["n"][7] is None
    strings = np.array([b"US", b"FR"] * 3, dtype=object)
    assert json.loads(tensors_as_json({"c": strings}, max_values=4))["c"]["head"] == ["US", "FR"] * 3


def test_unwritable_storage_keeps_rows_until_it_is_back(tmp_path):
    log = ParquetLog(str(tmp_path), "w")
    log.record(PREDICTIONS, _row(1))
    blocker = tmp_path / PREDICTIONS
    blocker.write_text("a file where the folder should be")
    assert log.flush() == 0
    assert log.stats()["failures"] == 1 and log.buffered == 1 and "Error" in log.stats()["last_error"]
    assert log.stats()["failing"]
    blocker.unlink()
    log.record(PREDICTIONS, _row(2))
    assert log.flush() == 2
    assert not log.stats()["failing"] and log.stats()["failures"] == 1
    assert sorted(read_table(str(tmp_path), PREDICTIONS).column("request_id").to_pylist()) == ["r1", "r2"]


def test_rows_being_written_still_count_as_buffered(tmp_path):
    # /health reads the counts while a flush runs: a failing write must never show an empty buffer.
    log = ParquetLog(str(tmp_path), "w")
    for i in range(3):
        log.record(PREDICTIONS, _row(i))
    seen_while_writing = []

    def failing_write(*_):
        seen_while_writing.append(log.buffered)
        raise OSError("storage away")

    log._write = failing_write
    assert log.flush() == 0
    assert seen_while_writing == [3] and log.buffered == 3 and log.stats()["failing"]


def test_buffer_is_bounded_and_drops_are_counted(tmp_path, reliability):
    row = reliability("Faults", "storage away while 250 rows arrive for a buffer of 100 (unit)")
    log = ParquetLog(str(tmp_path / "nowhere" / "x"), "w", max_buffered_rows=100)
    for i in range(250):
        log.record(
            FEEDBACK,
            {"request_id": f"r{i}", "time": utc_now(), "model": "m", "reward": 1.0, "label": None, "known": True},
        )
    row.measured["kept / dropped"] = f"{log.buffered} / {log.dropped}"
    assert log.buffered <= 100 and log.dropped >= 150 and log.buffered + log.dropped == 250


def test_json_state_round_trips_through_pyarrow_fs(tmp_path):
    assert read_json(str(tmp_path), "experiments/fraud.json") is None
    write_json(str(tmp_path), "experiments/fraud.json", {"champion": 2})
    write_json(f"file://{tmp_path}", "experiments/fraud.json", {"champion": 1})  # a URI works the same
    assert read_json(str(tmp_path), "experiments/fraud.json") == {"champion": 1}
    assert [p.name for p in (tmp_path / "experiments").iterdir()] == ["fraud.json"]


def test_unknown_storage_scheme_is_refused():
    with pytest.raises(pyarrow.ArrowInvalid):
        ParquetLog("nosuchscheme://bucket/x", "w")
