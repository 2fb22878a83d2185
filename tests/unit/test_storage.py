"""Storage URIs: where a plain path and a URI point, and which stores have buckets."""

from __future__ import annotations

import pyarrow.fs

from serve_app.storage import absolute_uri, bucket_of, open_storage, without_secrets


def test_a_plain_path_is_made_absolute_and_a_uri_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("scored/day=1") == str(tmp_path / "scored" / "day=1")
    assert absolute_uri("s3://bucket/scored?endpoint_override=127.0.0.1:9000") == (
        "s3://bucket/scored?endpoint_override=127.0.0.1:9000"
    )
    filesystem, root = open_storage("scored")
    assert filesystem.type_name == "local" and root == str(tmp_path / "scored")


def test_only_object_stores_have_a_bucket(tmp_path):
    s3 = pyarrow.fs.S3FileSystem(anonymous=True, region="us-east-1", endpoint_override="127.0.0.1:9")
    assert bucket_of(s3, "scores/day=1/part-0.parquet") == "scores"
    assert bucket_of(pyarrow.fs.GcsFileSystem(anonymous=True), "scores/day=1") == "scores"
    assert bucket_of(pyarrow.fs.LocalFileSystem(), str(tmp_path / "scores")) is None
    # A local path given as a file:// URI is still a local folder, with no bucket to look for.
    filesystem, root = open_storage(f"file://{tmp_path}/scores")
    assert bucket_of(filesystem, root) is None


def test_credentials_in_a_uri_are_dropped_and_the_rest_kept():
    uri = "s3://scores/day=1?access_key=AKIA1&secret_key=s3cr3t&session_token=t0k&endpoint_override=127.0.0.1:9000"
    recorded = without_secrets(uri)
    assert not any(secret in recorded for secret in ("AKIA1", "s3cr3t", "t0k"))
    assert recorded == "s3://scores/day=1?endpoint_override=127.0.0.1:9000"
    assert without_secrets("s3://scores/day=1?secret_key=s3cr3t") == "s3://scores/day=1"
    assert without_secrets("/data/day=1") == "/data/day=1"
