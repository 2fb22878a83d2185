"""The storage URI: a local folder by default, any pyarrow.fs URI (s3://, gs://, ...) otherwise.

State that must survive a restart (experiment state, logs) goes here, never to a replica's disk.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs

OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})
"""pyarrow filesystems whose first path component is a bucket (or container), which no write creates."""


def absolute_uri(uri: str) -> str:
    """A URI as it is, a plain path made absolute: the same store and place whatever the working directory."""
    return uri if "://" in uri else str(Path(uri).resolve())


SECRET_QUERY_KEYS = frozenset({"access_key", "secret_key", "session_token", "access_token"})
"""Credentials a pyarrow URI may carry in its query: never written anywhere."""


def without_secrets(uri: str) -> str:
    """The URI with any credentials dropped from its query, the rest as written: the store and the
    place, safe to record."""
    path, mark, query = uri.partition("?")
    if not mark:
        return uri
    kept = [item for item in query.split("&") if item.partition("=")[0] not in SECRET_QUERY_KEYS]
    return f"{path}?{'&'.join(kept)}" if kept else path


def open_storage(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem and root path for a storage URI; a plain path is a local folder."""
    return pyarrow.fs.FileSystem.from_uri(absolute_uri(uri))


def bucket_of(filesystem: pyarrow.fs.FileSystem, path: str) -> str | None:
    """The bucket a path lies in, on an object store; None elsewhere."""
    return path.split("/", 1)[0] if filesystem.type_name in OBJECT_STORES else None


def write_json(uri: str, relative_path: str, document: Any) -> None:
    """Replace a JSON document atomically: written under a hidden name, then moved into place."""
    filesystem, root = open_storage(uri)
    path = f"{root}/{relative_path}"
    folder, _, name = path.rpartition("/")
    filesystem.create_dir(folder, recursive=True)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(json.dumps(document, indent=1).encode())
    filesystem.move(temporary, path)


def read_json(uri: str, relative_path: str) -> Any | None:
    """The JSON document at that path, or None when there is none yet."""
    filesystem, root = open_storage(uri)
    path = f"{root}/{relative_path}"
    if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read())
