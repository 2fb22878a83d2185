"""A training set from what was served: the prediction log's raw inputs joined with the feedback
received, one row per row of each request (`serve-app dataset`).

Only the answers clients got are taken (champion, challenger or a direct version, status ok); a
shadow's answers repeat the same inputs. Each row carries its request's `request_id`, `time`,
`version` and `role`, its index `row` within the request, the request's inputs (a per-row scalar
as a column, a wider input as a list), its `score`, and the feedback: the request's `reward` and
`label` as given, and `row_label`, the label of this row: for a ranker's label naming the relevant
candidates (an index or a list of them), whether this row is one; for true/false, that value.

The prediction log streams, one file at a time, so the memory it takes is one log file and the
feedback of the window (one small row per labelled request). The output is written to a local
temporary file and copied to the destination only when complete: a failure leaves nothing.
"""

from __future__ import annotations

import datetime
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq

from serve_app.errors import InvalidInput, ServeAppError
from serve_app.predlog import FEEDBACK, PREDICTIONS, read_table
from serve_app.shadow.report import PRODUCTION_ROLES, relevant_items
from serve_app.storage import open_storage

COLUMN_TYPES = {
    "request_id": pa.string(),
    "time": pa.timestamp("us", tz="UTC"),
    "version": pa.int64(),
    "role": pa.string(),
    "row": pa.int64(),
    "score": pa.float64(),
    "reward": pa.float64(),
    "label": pa.string(),
    "row_label": pa.bool_(),
}
"""The columns every data set has; the inputs' types follow the logged values."""
WINDOW = re.compile(r"^(\d+)([dhm])$")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class DatasetError(ServeAppError):
    """The data set cannot be built as asked (the message names the model, window or storage)."""


@dataclass
class DatasetSummary:
    model: str
    since: str
    requests: int = 0
    rows: int = 0
    labelled_requests: int = 0
    skipped_digests: int = 0
    """Requests logged as digests (more values than log_max_values): their inputs are not in the log."""
    columns: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__ | {"feedback": self.labelled_requests > 0}


def window_start(since: str, now: datetime.datetime) -> datetime.datetime:
    """`90d`, `12h`, `30m`, or an ISO date or time (UTC unless it says otherwise)."""
    match = WINDOW.match(since)
    if match:
        return now - datetime.timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    try:
        start = datetime.datetime.fromisoformat(since)
    except ValueError:
        raise InvalidInput(f"--since '{since}': give a window such as 90d, 12h or 30m, or an ISO date") from None
    return start if start.tzinfo else start.replace(tzinfo=datetime.timezone.utc)


def log_files(storage_uri: str, model: str, start: datetime.datetime) -> list[str]:
    """The model's prediction log files of the days from `start` on (partitions date=YYYY-MM-DD)."""
    try:
        filesystem, root = open_storage(storage_uri)
        folder = f"{root}/{PREDICTIONS}/model={model}"
        found = filesystem.get_file_info(folder).type
    except (OSError, ValueError) as error:
        raise DatasetError(f"storage '{storage_uri}' cannot be read: {error}") from None
    if found == pyarrow.fs.FileType.NotFound:
        raise DatasetError(f"no predictions of model '{model}' under {storage_uri}: is the model served and logged?")
    first_day = start.date().isoformat()
    files = filesystem.get_file_info(pyarrow.fs.FileSelector(folder, recursive=True))
    return sorted(
        f.path
        for f in files
        if f.type == pyarrow.fs.FileType.File
        and f.base_name.endswith(".parquet")
        and not f.base_name.startswith((".", "_"))
        and f.path.rsplit("/date=", 1)[-1][:10] >= first_day
    )


def feedback_of(storage_uri: str, model: str) -> dict[str, tuple[float | None, str | None]]:
    """The last feedback given for each request id: (reward, label)."""
    feedback = read_table(storage_uri, FEEDBACK, model).to_pandas()
    last = feedback.drop_duplicates("request_id", keep="last")
    rewards = last["reward"].astype(object).where(last["reward"].notna(), None)
    return dict(zip(last["request_id"], zip(rewards, last["label"])))


def row_label(label: str | None, row: int) -> bool | None:
    if label is None:
        return None
    if label.lower() in ("true", "false"):
        return label.lower() == "true"
    relevant = relevant_items(label)
    return None if relevant is None else row in relevant


def request_rows(logged: dict, feedback: dict, summary: DatasetSummary) -> dict[str, list] | None:
    """One logged request as columns of its rows, or None when its inputs were logged as digests."""
    inputs = json.loads(logged["inputs"])
    if any(isinstance(values, dict) for values in inputs.values()):
        summary.skipped_digests += 1
        return None
    scores = logged.get("scores") or [logged["score"]]  # logs written before scores per row: one
    rows = len(scores)
    reward, label = feedback.get(logged["request_id"], (None, None))
    columns: dict[str, list] = {
        "request_id": [logged["request_id"]] * rows,
        "time": [logged["time"]] * rows,
        "version": [logged["version"]] * rows,
        "role": [logged["role"]] * rows,
        "row": list(range(rows)),
    }
    for name, values in inputs.items():
        width = len(values) // rows if rows else 0
        columns[name] = values if width == 1 else [values[i * width : (i + 1) * width] for i in range(rows)]
    columns |= {
        "score": list(scores),
        "reward": [reward] * rows,
        "label": [label] * rows,
        "row_label": [row_label(label, i) for i in range(rows)],
    }
    if label is not None or reward is not None:
        summary.labelled_requests += 1
    return columns


def served_rows(table: pa.Table, start: datetime.datetime, feedback: dict, summary: DatasetSummary) -> pa.Table | None:
    """One log file's answers to clients since `start`, row by row with their feedback."""
    answered = pc.and_(pc.is_in(table["role"], pa.array(PRODUCTION_ROLES)), pc.equal(table["status"], "ok"))
    logged = table.filter(pc.and_(answered, pc.greater_equal(table["time"], start))).to_pylist()
    parts = [part for part in (request_rows(row, feedback, summary) for row in logged) if part is not None]
    if not parts:
        return None
    summary.requests += len(parts)
    arrays = {}
    for name in parts[0]:
        values = [v for part in parts for v in part.get(name, [None] * len(part["row"]))]
        arrays[name] = pa.array(values, type=COLUMN_TYPES.get(name))
    return pa.table(arrays)


def build_dataset(
    storage_uri: str, model: str, since: str, out_uri: str, now: datetime.datetime | None = None
) -> DatasetSummary:
    """Write the model's served rows since `since`, joined with their feedback, to `out_uri` (one
    Parquet file, any pyarrow.fs URI)."""
    start = window_start(since, now or datetime.datetime.now(datetime.timezone.utc))
    summary = DatasetSummary(model, start.isoformat())
    files = log_files(storage_uri, model, start)
    feedback = feedback_of(storage_uri, model)
    filesystem, _ = open_storage(storage_uri)
    try:
        out_filesystem, out_path = open_storage(out_uri)
    except (OSError, ValueError) as error:
        raise DatasetError(f"output '{out_uri}' cannot be written: {error}") from None
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "dataset.parquet"
        writer: pq.ParquetWriter | None = None
        for path in files:
            with filesystem.open_input_file(path) as logged:
                batch = served_rows(pq.ParquetFile(logged).read(), start, feedback, summary)
            if batch is None:
                continue
            batch = batch if writer is None else batch.cast(writer.schema)
            if writer is None:
                writer = pq.ParquetWriter(local, batch.schema)
            writer.write_table(batch)
            summary.rows += batch.num_rows
        if writer is None:
            raise DatasetError(f"no served rows of model '{model}' since {start.isoformat()} under {storage_uri}")
        writer.close()
        summary.columns = writer.schema.names
        try:
            parent = out_path.rpartition("/")[0]
            if parent:
                out_filesystem.create_dir(parent, recursive=True)
            pyarrow.fs.copy_files(str(local), out_path, pyarrow.fs.LocalFileSystem(), out_filesystem)
        except OSError as error:
            raise DatasetError(f"output '{out_uri}' cannot be written: {error}") from None
    return summary
