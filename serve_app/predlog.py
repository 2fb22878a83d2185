"""Buffered Parquet logs of predictions, feedback and drift checks, written through pyarrow.fs.

Rows are appended in memory on the request path (a list append) and written in batches by
`flush()`, which a deployment calls from a background task and once more at shutdown. Each
flush writes one file per partition, <root>/<table>/model=<m>/date=<YYYY-MM-DD>/<writer>-<n>.parquet,
under a hidden name first and renamed when complete, so readers never see half a file. When
storage fails, rows stay buffered (bounded) and are written once it is back; what the bound
forces out is counted.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import logging
import math
import threading
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

from serve_app.storage import open_storage

logger = logging.getLogger("serve_app.predlog")

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
EXPERIMENT_HISTORY = "experiment_history"
DRIFT = "drift"

PREDICTION_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("version", pa.int64()),
        ("role", pa.string()),
        ("inputs", pa.string()),
        ("outputs", pa.string()),
        ("score", pa.float64()),  # the request's (its first row's), what feedback is joined with
        ("scores", pa.list_(pa.float64())),  # one per row; null in logs written before it
        ("latency_ms", pa.float64()),
        ("status", pa.string()),
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("reward", pa.float64()),
        ("label", pa.string()),
        ("known", pa.bool_()),
    ]
)
DRIFT_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("version", pa.int64()),
        ("arm", pa.string()),
        ("window", pa.int64()),
        ("rows", pa.int64()),
        ("kind", pa.string()),  # feature or prediction
        ("name", pa.string()),  # the feature, or "score"
        ("test", pa.string()),
        ("statistic", pa.float64()),
        ("p_value", pa.float64()),
        ("threshold", pa.float64()),
        ("is_drift", pa.bool_()),
        ("window_drift", pa.bool_()),
    ]
)
"""One row per feature and one for the scores, for every window checked."""
EXPERIMENT_HISTORY_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("experiment_started_at", pa.float64()),  # which experiment (a new pair or a restart of it starts one)
        ("action", pa.string()),  # start, recommend, promote, stop, rollback, ...
        ("who", pa.string()),
        ("reason", pa.string()),
        ("entry", pa.string()),  # the whole entry as JSON: the statistics at the decision
    ]
)
"""Append-only: every experiment's decisions, kept when a new experiment replaces the state file."""
SCHEMAS = {
    PREDICTIONS: PREDICTION_SCHEMA,
    FEEDBACK: FEEDBACK_SCHEMA,
    DRIFT: DRIFT_SCHEMA,
    EXPERIMENT_HISTORY: EXPERIMENT_HISTORY_SCHEMA,
}


DIGEST_HEAD_VALUES = 8
"""Values a digest keeps from the start of each tensor."""


def tensors_as_json(tensors: dict[str, np.ndarray], max_values: int | None = None) -> str:
    """Raw tensors as JSON text: the log keeps what the client sent, whatever the model. Tensors of
    more than `max_values` values in all are logged as a digest each instead (`_digest`): writing a
    large request's every value as JSON text costs the router more than answering it."""
    if max_values is not None and sum(array.size for array in tensors.values()) > max_values:
        return json.dumps({name: _digest(array) for name, array in tensors.items()}, separators=(",", ":"))
    large = {name for name, array in tensors.items() if _as_numpy_text(array)}
    text = json.dumps({n: _jsonable(a) for n, a in tensors.items() if n not in large}, separators=(",", ":"))
    if not large:
        return text
    floats = [f"{json.dumps(n)}:[{','.join(tensors[n].ravel().astype(str).tolist())}]" for n in large]
    return text[:-1] + ("," if len(text) > 2 else "") + ",".join(floats) + "}"


def _as_numpy_text(array: np.ndarray) -> bool:
    """Whether numpy writes this tensor's values: finite floats, in the shortest text at their own
    precision (a float32 as `0.12573022`, not its float64 repr), half the time and text of
    json.dumps, once there are enough of them to pay for numpy's set-up."""
    return array.size >= 64 and array.dtype.kind == "f" and bool(np.isfinite(array).all())


def _digest(array: np.ndarray) -> dict:
    """What identifies a tensor without its values: shape, dtype, the SHA-256 of its bytes (of its
    values' JSON text for BYTES) and its first values."""
    if array.dtype.kind == "O":
        payload = json.dumps(_jsonable(array), separators=(",", ":")).encode()
    else:
        payload = np.ascontiguousarray(array).tobytes()
    return {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "head": _jsonable(array.ravel()[:DIGEST_HEAD_VALUES]),
    }


def _jsonable(array: np.ndarray) -> list:
    if array.dtype.kind == "O":
        return [v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v for v in array.ravel().tolist()]
    values = array.ravel().tolist()
    if array.dtype.kind == "f" and not all(map(math.isfinite, values)):  # JSON has no NaN or infinity: null
        return [v if math.isfinite(v) else None for v in values]
    return values


class ParquetLog:
    def __init__(
        self, storage_uri: str, writer_id: str, max_buffered_rows: int = 200_000, max_logged_values: int | None = None
    ):
        self.filesystem, self.root = open_storage(storage_uri)
        self.writer_id = writer_id
        self.max_buffered_rows = max_buffered_rows
        self.max_logged_values = max_logged_values
        """Tensors of a row with more values than this are logged as digests (None: always whole)."""
        self._rows: dict[str, list[dict]] = defaultdict(list)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._sequence = itertools.count()
        self._in_flight = 0
        """Rows taken out of the buffer by a flush and not yet written: still buffered to the outside."""
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.failing = False
        """Whether the latest write failed: rows are piling up in memory until storage returns."""
        self.last_error: str | None = None

    def record(self, table: str, row: dict[str, Any]) -> None:
        with self._lock:
            buffered = self._rows[table]
            if len(buffered) >= self.max_buffered_rows:
                # Storage has been away too long: drop the oldest tenth at once (amortised O(1)).
                excess = max(1, self.max_buffered_rows // 10)
                del buffered[:excess]
                self.dropped += excess
            buffered.append(row)

    @property
    def buffered(self) -> int:
        with self._lock:
            return self._buffered()

    def _buffered(self) -> int:
        return self._in_flight + sum(len(rows) for rows in self._rows.values())

    def flush(self) -> int:
        """Write everything buffered; returns rows written. Safe to call from any thread."""
        with self._flush_lock:
            with self._lock:
                pending, self._rows = self._rows, defaultdict(list)
                self._in_flight = sum(len(rows) for rows in pending.values())
            written = 0
            for table, rows in pending.items():
                for partition, part in _partitions(rows).items():
                    try:
                        self._write(table, partition, part)
                    except Exception as error:  # storage of any kind can fail in many ways
                        with self._lock:  # with the rows back, so that failing always shows them buffered
                            self._rows[table][:0] = part
                            self._in_flight -= len(part)
                            self.failing = True
                        self.failures += 1
                        self.last_error = f"{type(error).__name__}: {error}"
                        logger.warning("prediction log: writing %d rows failed, kept for retry: %s", len(part), error)
                        continue
                    with self._lock:
                        self._in_flight -= len(part)
                        self.failing = False
                    written += len(part)
            self.written += written
            return written

    def _write(self, table: str, partition: tuple[str, str], rows: list[dict]) -> None:
        model, date = partition
        folder = f"{self.root}/{table}/model={model}/date={date}"
        self.filesystem.create_dir(folder, recursive=True)
        name = f"{self.writer_id}-{next(self._sequence):06d}.parquet"
        encoded = [_encoded(row, self.max_logged_values) for row in rows]
        arrow_table = pa.Table.from_pylist(encoded, schema=SCHEMAS[table])
        pq.write_table(arrow_table, f"{folder}/.{name}", filesystem=self.filesystem)
        self.filesystem.move(f"{folder}/.{name}", f"{folder}/{name}")

    def stats(self) -> dict:
        with self._lock:  # one consistent picture: failing never shows with an empty buffer
            return {
                "written": self.written,
                "buffered": self._buffered(),
                "dropped": self.dropped,
                "failures": self.failures,
                "failing": self.failing,
                "last_error": self.last_error,
            }


def _encoded(row: dict[str, Any], max_values: int | None) -> dict[str, Any]:
    """Tensors kept as numpy on the request path become JSON text (and arrays lists) here, in the
    writing thread."""
    return {key: _encoded_value(value, max_values) for key, value in row.items()}


def _encoded_value(value: Any, max_values: int | None) -> Any:
    if isinstance(value, dict):
        return tensors_as_json(value, max_values)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _partitions(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    parts: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        parts[(row["model"], row["time"].date().isoformat())].append(row)
    return parts


def read_table(storage_uri: str, table: str, model: str | None = None) -> pa.Table:
    """Everything logged in a table (optionally for one model), for reports and tests."""
    filesystem, root = open_storage(storage_uri)
    folder = f"{root}/{table}"
    if model is not None:
        folder += f"/model={model}"
    if filesystem.get_file_info(folder).type == pyarrow.fs.FileType.NotFound:
        return SCHEMAS[table].empty_table()
    dataset = pq.ParquetDataset(folder, filesystem=filesystem, schema=SCHEMAS[table])
    return dataset.read()


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
