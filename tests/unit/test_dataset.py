"""`serve-app dataset`: served rows joined with their feedback, from real Parquet logs, and the
errors that write nothing."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow.parquet as pq
import pytest

from serve_app.cli import main
from serve_app.dataset import DatasetError, build_dataset
from serve_app.errors import InvalidInput
from serve_app.predlog import FEEDBACK, PREDICTIONS, ParquetLog

NOW = datetime.datetime(2026, 12, 1, 12, tzinfo=datetime.timezone.utc)


def prediction(request_id: str, role: str, rows: int, when: datetime.datetime, status: str = "ok") -> dict:
    return {
        "request_id": request_id,
        "time": when,
        "model": "ranker",
        "version": 2 if role == "shadow" else 1,
        "role": role,
        "inputs": {
            "item_id": np.array([f"item-{i}".encode() for i in range(rows)], dtype=object),
            "item_price": np.arange(rows, dtype=np.float32),
            "embedding": np.ones((rows, 2), dtype=np.float32),
        },
        "outputs": {"score": np.linspace(0.9, 0.1, rows, dtype=np.float32)},
        "score": 0.9,
        "scores": np.linspace(0.9, 0.1, rows).tolist(),
        "latency_ms": 3.0,
        "status": status,
    }


@pytest.fixture
def storage(tmp_path) -> str:
    log = ParquetLog(str(tmp_path / "storage"), "test", max_logged_values=100)
    recent, old = NOW - datetime.timedelta(days=2), NOW - datetime.timedelta(days=120)
    log.record(PREDICTIONS, prediction("a", "champion", 3, recent))
    log.record(PREDICTIONS, prediction("a", "shadow", 3, recent))  # the same inputs again: not taken
    log.record(PREDICTIONS, prediction("b", "challenger", 2, recent))
    log.record(PREDICTIONS, prediction("c", "champion", 2, recent, status="error"))  # no answer: not taken
    log.record(PREDICTIONS, prediction("d", "champion", 40, recent))  # over max_logged_values: a digest
    log.record(PREDICTIONS, prediction("e", "champion", 1, old))  # outside 90 days
    for request_id, reward, label in (("a", None, "[0, 2]"), ("b", 1.0, None), ("zzz", None, "true")):
        log.record(
            FEEDBACK,
            {
                "request_id": request_id,
                "time": recent,
                "model": "ranker",
                "reward": reward,
                "label": label,
                "known": True,
            },
        )
    log.flush()
    return str(tmp_path / "storage")


def test_served_rows_are_joined_with_their_feedback_row_by_row(storage, tmp_path):
    out = tmp_path / "out" / "data.parquet"
    summary = build_dataset(storage, "ranker", "90d", str(out), now=NOW)
    assert (summary.requests, summary.rows, summary.labelled_requests, summary.skipped_digests) == (2, 5, 2, 1)
    frame = pq.read_table(out).to_pandas().sort_values(["request_id", "row"])
    assert list(frame["request_id"]) == ["a", "a", "a", "b", "b"]
    assert list(frame["row"]) == [0, 1, 2, 0, 1] and list(frame["role"]) == ["champion"] * 3 + ["challenger"] * 2
    assert list(frame["item_id"]) == ["item-0", "item-1", "item-2", "item-0", "item-1"]
    assert list(frame["item_price"]) == [0.0, 1.0, 2.0, 0.0, 1.0]
    assert [list(v) for v in frame["embedding"]] == [[1.0, 1.0]] * 5  # a wider input: a list per row
    assert list(frame["row_label"][:3]) == [True, False, True]  # the label named candidates 0 and 2
    assert frame["row_label"][3:].isna().all() and list(frame["reward"][3:]) == [1.0, 1.0]
    assert frame["score"].tolist()[:3] == pytest.approx([0.9, 0.5, 0.1])


def test_a_log_without_feedback_gives_empty_labels_and_says_so(storage, tmp_path, capsys):
    out = tmp_path / "data.parquet"
    assert main(["dataset", "--model", "ranker", "--storage", storage, "--since", "3d", "--out", str(out)]) == 0
    assert "5 rows of 2 requests" in capsys.readouterr().out
    ParquetLog(storage, "more").flush()
    empty = tmp_path / "storage-without-feedback"
    log = ParquetLog(str(empty), "test")
    log.record(PREDICTIONS, prediction("x", "direct", 2, datetime.datetime.now(datetime.timezone.utc)))
    log.flush()
    assert main(["dataset", "--model", "ranker", "--storage", str(empty), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no feedback for model 'ranker' in the window: the label columns are empty" in printed
    frame = pq.read_table(out).to_pandas()
    assert len(frame) == 2 and frame["label"].isna().all() and frame["row_label"].isna().all()


@pytest.mark.parametrize(
    ("model", "since", "storage_of", "message"),
    [
        ("fraud", "90d", None, "no predictions of model 'fraud' under"),
        ("ranker", "2026-11-30T23:00:00", None, "no served rows of model 'ranker' since 2026-11-30T23:00:00"),
        ("ranker", "90d", "s3://no-bucket/logs?endpoint_override=127.0.0.1:9&scheme=http", "cannot be read"),
    ],
)
def test_nothing_is_written_when_the_data_set_cannot_be_built(storage, tmp_path, model, since, storage_of, message):
    out = tmp_path / "data.parquet"
    with pytest.raises(DatasetError, match=message):
        build_dataset(storage_of or storage, model, since, str(out), now=NOW)
    assert not out.exists()


def test_a_window_it_cannot_read_is_refused(storage, tmp_path):
    with pytest.raises(InvalidInput, match="--since 'last week'"):
        build_dataset(storage, "ranker", "last week", str(tmp_path / "data.parquet"), now=NOW)
