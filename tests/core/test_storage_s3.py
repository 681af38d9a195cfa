"""Behaviour of the S3 backend against a real (moto) S3 server over HTTP."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from bot.config import S3Settings
from bot.core.storage.s3 import S3Storage
from bot.errors import NotFound, StorageError

KEY = "default/default-20261129-020000-a1b2.dump.zst"
MIB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_uploads_left(client: Any, bucket: str) -> bool:
    return not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_multipart_round_trip_returns_the_same_bytes(s3_bucket: S3Settings, s3_client: Any) -> None:
    # GIVEN 11 MiB of random data streamed in 1 MiB chunks with 5 MiB parts
    storage = S3Storage(dataclasses.replace(s3_bucket, prefix="team/prod"))
    data = os.urandom(11 * MIB)
    writer = storage.open_writer(KEY)
    for start in range(0, len(data), MIB):
        writer.write(data[start : start + MIB])
    # WHEN the copy is committed
    stored = writer.commit(expected_size=len(data), sha256=_sha(data))
    # THEN it went up as three parts under the prefix, and reads back identically
    full_key = f"team/prod/{KEY}"
    assert stored.size == len(data)
    assert stored.location == f"s3://{s3_bucket.bucket}/{full_key}"
    head = s3_client.head_object(Bucket=s3_bucket.bucket, Key=full_key)
    assert head["ETag"].strip('"').endswith("-3")
    assert storage.get_bytes(KEY) == data
    with storage.open_reader(KEY) as body:
        assert body.read(100) == data[:100]
    tags = s3_client.get_object_tagging(Bucket=s3_bucket.bucket, Key=full_key)["TagSet"]
    assert {"Key": "sha256", "Value": _sha(data)} in tags
    assert storage.list_keys() == [KEY]
    assert storage.describe() == f"s3://{s3_bucket.bucket}/team/prod"


def test_small_copy_is_stored_with_a_single_put(s3_bucket: S3Settings) -> None:
    # GIVEN less than one part of data
    storage = S3Storage(s3_bucket)
    writer = storage.open_writer(KEY)
    writer.write(b"small")
    # WHEN committing
    stored = writer.commit(expected_size=5, sha256=_sha(b"small"))
    # THEN the object exists with exactly that content
    assert stored.size == 5
    assert storage.get_bytes(KEY) == b"small"
    assert storage.stat(KEY) == stored


def test_abort_leaves_no_object_and_no_pending_upload(
    s3_bucket: S3Settings, s3_client: Any
) -> None:
    # GIVEN a write that has already uploaded one part
    storage = S3Storage(s3_bucket)
    writer = storage.open_writer(KEY)
    writer.write(os.urandom(6 * MIB))
    assert not _no_uploads_left(s3_client, s3_bucket.bucket)
    # WHEN it is aborted
    writer.abort()
    # THEN there is no object and no multipart upload left to pay for
    assert storage.stat(KEY) is None
    assert _no_uploads_left(s3_client, s3_bucket.bucket)


def test_commit_with_wrong_expected_size_raises_and_leaves_nothing(
    s3_bucket: S3Settings, s3_client: Any
) -> None:
    # GIVEN 6 MiB written (one part already uploaded)
    storage = S3Storage(s3_bucket)
    writer = storage.open_writer(KEY)
    writer.write(os.urandom(6 * MIB))
    # WHEN committing with a different expected size
    with pytest.raises(StorageError, match="size mismatch"):
        writer.commit(expected_size=6 * MIB + 1, sha256="0" * 64)
    # THEN nothing is visible and no upload is pending
    assert storage.stat(KEY) is None
    assert storage.list_keys() == []
    assert _no_uploads_left(s3_client, s3_bucket.bucket)


def test_missing_bucket_gives_error_naming_the_bucket(s3_server: str) -> None:
    # GIVEN settings for a bucket that does not exist
    storage = S3Storage(S3Settings(bucket="no-such-bucket-here", endpoint_url=s3_server))
    # WHEN checking it is writable
    with pytest.raises(StorageError) as caught:
        storage.check_writable()
    # THEN the message names the bucket and the endpoint
    assert caught.value.message == (
        f"S3 bucket 'no-such-bucket-here' does not exist (endpoint {s3_server})"
    )


def test_unreachable_endpoint_gives_one_line_error_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a recognisable secret and an endpoint where nothing listens
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-show-this-secret")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    storage = S3Storage(S3Settings(bucket="b", endpoint_url=dead))
    # WHEN checking the bucket
    with pytest.raises(StorageError) as caught:
        storage.check_writable()
    # THEN one line names the endpoint, and neither credential appears
    message = caught.value.message
    assert dead in message and "\n" not in message
    assert "do-not-show-this-secret" not in message and "testing" not in message


def test_existing_bucket_is_writable(s3_bucket: S3Settings) -> None:
    # GIVEN a bucket that exists / WHEN checking it / THEN no error is raised
    S3Storage(s3_bucket).check_writable()


def test_missing_credentials_give_a_hint_and_no_secrets(
    s3_bucket: S3Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # GIVEN no credentials anywhere in boto3's chain
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # WHEN checking the bucket
    with pytest.raises(StorageError) as caught:
        S3Storage(s3_bucket).check_writable()
    # THEN the message says how to provide them, on one line
    assert "AWS_ACCESS_KEY_ID" in caught.value.message
    assert "AWS_PROFILE" in caught.value.message
    assert "\n" not in caught.value.message


def test_missing_key_raises_not_found(s3_bucket: S3Settings) -> None:
    # GIVEN an empty bucket
    storage = S3Storage(s3_bucket)
    # WHEN / THEN reading a key that was never written
    with pytest.raises(NotFound, match=f"no stored copy at s3://{s3_bucket.bucket}/{KEY}"):
        storage.open_reader(KEY)
    with pytest.raises(NotFound):
        storage.get_bytes(KEY)
    assert storage.stat(KEY) is None


def test_sse_aes256_is_requested_for_streamed_and_small_copies(
    s3_bucket: S3Settings, s3_client: Any
) -> None:
    # GIVEN a storage configured for SSE-S3
    storage = S3Storage(dataclasses.replace(s3_bucket, sse="AES256"))
    # WHEN storing a small object and a multipart copy
    storage.put_bytes("catalog.json", b"{}")
    data = os.urandom(6 * MIB)
    writer = storage.open_writer(KEY)
    writer.write(data)
    writer.commit(expected_size=len(data), sha256=_sha(data))
    # THEN both are reported as encrypted by the server
    for key in ("catalog.json", KEY):
        head = s3_client.head_object(Bucket=s3_bucket.bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"


def test_list_used_bytes_and_delete(s3_bucket: S3Settings, s3_client: Any) -> None:
    # GIVEN copies under our prefix and an unrelated object outside it
    storage = S3Storage(dataclasses.replace(s3_bucket, prefix="bb"))
    storage.put_bytes("alpha/a1.dump", b"1" * 10)
    storage.put_bytes("alpha/a2.dump", b"2" * 20)
    storage.put_bytes("beta/b1.dump", b"3" * 40)
    s3_client.put_object(Bucket=s3_bucket.bucket, Key="other/x", Body=b"4" * 80)
    # THEN listings strip the prefix, honour sub-prefixes and ignore other objects
    assert storage.list_keys() == ["alpha/a1.dump", "alpha/a2.dump", "beta/b1.dump"]
    assert storage.list_keys("alpha/") == ["alpha/a1.dump", "alpha/a2.dump"]
    assert storage.used_bytes() == 70
    assert storage.used_bytes("beta/") == 40
    assert storage.free_bytes() is None
    # WHEN deleting one copy, and then deleting it again
    storage.delete("alpha/a1.dump")
    storage.delete("alpha/a1.dump")
    # THEN it is gone and the rest remains
    assert storage.list_keys() == ["alpha/a2.dump", "beta/b1.dump"]
    assert storage.used_bytes() == 60


def test_listing_paginates_past_one_page(s3_bucket: S3Settings) -> None:
    # GIVEN more objects than one list_objects_v2 page holds
    storage = S3Storage(s3_bucket)
    keys = [f"t/{i:04d}.dump" for i in range(1005)]
    for key in keys:
        storage.put_bytes(key, b"x")
    # WHEN / THEN every key is listed
    assert storage.list_keys("t/") == keys
    assert storage.used_bytes() == 1005
