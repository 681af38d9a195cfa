"""Copies in an S3 (or S3-compatible) bucket, streamed as a multipart upload in constant memory."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from bot.config import S3Settings
from bot.core.storage.base import StoredObject
from bot.errors import NotFound, StorageError

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024  # S3 rejects smaller parts, except the last one
_MISSING_KEY = ("404", "NoSuchKey", "NotFound")
_DENIED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
_NO_CREDENTIALS = (
    "no AWS credentials found for S3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(or AWS_PROFILE), or run where an instance/task role is available"
)


class S3Storage:
    """Backup copies under ``s3://bucket/prefix/``."""

    name = "s3"

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._client_obj: Any = None
        self._client_lock = threading.Lock()  # jobs and Slack handlers may race to build it

    @property
    def _client(self) -> Any:
        with self._client_lock:
            if self._client_obj is not None:
                return self._client_obj
            # Imported here so that a local-only install never pays for (or needs) boto3.
            import boto3
            from botocore.config import Config

            self._client_obj = boto3.session.Session().client(
                "s3",
                endpoint_url=self.settings.endpoint_url,
                region_name=self.settings.region or "us-east-1",
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        return self._client_obj

    def _full(self, key: str) -> str:
        return f"{self.settings.prefix}/{key}" if self.settings.prefix else key

    def location_of(self, key: str) -> str:
        return self._location(key)

    def _location(self, key: str) -> str:
        return f"s3://{self.settings.bucket}/{self._full(key)}"

    def describe(self) -> str:
        s = self.settings
        return f"s3://{s.bucket}/{s.prefix}" if s.prefix else f"s3://{s.bucket}"

    def _sse_args(self) -> dict[str, str]:
        s = self.settings
        args = {"ServerSideEncryption": s.sse} if s.sse else {}
        if s.sse and s.kms_key_id:
            args["SSEKMSKeyId"] = s.kms_key_id
        return args

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn every botocore failure into NotFound or one secret-free StorageError line."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        bucket = self.settings.bucket
        where = self._location(key) if key is not None else f"s3://{bucket}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            first = (str(error.get("Message", "")).splitlines() or [""])[0]
            detail = f"{code}: {first}" if first else code or "unknown error"
            # HEAD responses carry no body, so a missing bucket is a bare 404 from head_bucket.
            if code == "NoSuchBucket" or (action == "head_bucket" and code == "404"):
                endpoint = self.settings.endpoint_url or "AWS default"
                message = f"S3 bucket '{bucket}' does not exist (endpoint {endpoint})"
            elif code in _MISSING_KEY and key is not None:
                raise NotFound(f"no stored copy at {where}") from None
            elif code in _DENIED:
                message = (
                    f"access denied to {where} ({detail}): check that the credentials are valid "
                    "and allow s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject"
                )
            else:
                message = f"S3 {action} on {where} failed ({detail})"
            raise StorageError(message) from None
        except NoCredentialsError:
            raise StorageError(_NO_CREDENTIALS) from None
        except BotoCoreError as exc:
            # EndpointConnectionError and friends: their text names the URL, never credentials.
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise StorageError(f"S3 {action} on {where} failed: {first}") from None

    def _call(self, operation: str, key: str | None = None, **kwargs: Any) -> Any:
        if key is not None:
            kwargs["Key"] = self._full(key)
        with self._errors(operation, key):
            return getattr(self._client, operation)(Bucket=self.settings.bucket, **kwargs)

    def check_writable(self) -> None:
        self._call("head_bucket")

    def open_writer(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        body = self._call("get_object", key)["Body"]
        return cast(BinaryIO, _Body(self, key, body))

    def stat(self, key: str) -> StoredObject | None:
        try:
            head = self._call("head_object", key)
        except NotFound:
            return None
        return StoredObject(key=key, size=int(head["ContentLength"]), location=self._location(key))

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        self._call("put_object", key, Body=data, **self._sse_args())
        return StoredObject(key=key, size=len(data), location=self._location(key))

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as body:
            return body.read()

    def delete(self, key: str) -> None:
        # S3 answers 204 for a missing key too, which is exactly the contract we want.
        self._call("delete_object", key)

    def _objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        strip = len(self._full(""))
        with self._errors("list_objects_v2"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket, Prefix=self._full(prefix)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:], int(obj["Size"])

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(key for key, _size in self._objects(prefix))

    def used_bytes(self, prefix: str = "") -> int:
        return sum(size for _key, size in self._objects(prefix))

    def free_bytes(self) -> int | None:
        return None


class _Body(io.RawIOBase):
    """The S3 streaming body, with failures mid-stream turned into StorageError."""

    def __init__(self, storage: S3Storage, key: str, body: Any) -> None:
        super().__init__()
        self._storage, self._key, self._body = storage, key, body

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        with self._storage._errors("get_object", self._key):
            return cast(bytes, self._body.read(None if size is None or size < 0 else size))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Writer:
    """Buffers one part at a time and uploads it as it fills, so memory stays at about one part."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._s = storage
        self._key = key
        self._part_size = max(storage.settings.part_size, MIN_PART_SIZE)
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self._written = 0
        self._closed = False

    def _call(self, operation: str, **kwargs: Any) -> Any:
        return self._s._call(operation, self._key, **kwargs)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"writer for {self._s._location(self._key)} is already closed")

    def write(self, data: bytes) -> int:
        self._check_open()
        self._buffer += data
        self._written += len(data)
        try:
            while len(self._buffer) >= self._part_size:
                part = bytes(self._buffer[: self._part_size])
                del self._buffer[: self._part_size]
                self._upload_part(part)
        except StorageError:
            self.abort()
            raise
        return len(data)

    def _upload_part(self, part: bytes) -> None:
        if self._upload_id is None:
            created = self._call("create_multipart_upload", **self._s._sse_args())
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        resp = self._call("upload_part", UploadId=self._upload_id, PartNumber=number, Body=part)
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def commit(self, *, expected_size: int, sha256: str) -> StoredObject:
        self._check_open()
        location = self._s._location(self._key)
        if self._written != expected_size:
            # Caught before completing, so a short copy is never visible under the final key.
            self.abort()
            raise StorageError(
                f"size mismatch writing {location}: wrote {self._written} bytes, "
                f"expected {expected_size}"
            )
        try:
            if self._upload_id is None:
                self._call("put_object", Body=bytes(self._buffer), **self._s._sse_args())
            else:
                if self._buffer:
                    self._upload_part(bytes(self._buffer))
                parts, uid = {"Parts": self._parts}, self._upload_id
                self._call("complete_multipart_upload", UploadId=uid, MultipartUpload=parts)
        except StorageError:
            self.abort()
            raise
        self._buffer, self._upload_id, self._closed = bytearray(), None, True
        try:
            stored = int(self._call("head_object")["ContentLength"])
            if stored != expected_size:
                raise StorageError(
                    f"size mismatch after upload to {location}: stored {stored} bytes, "
                    f"expected {expected_size}"
                )
        except (StorageError, NotFound):
            # A copy we cannot vouch for must not look like a backup; the error below says why.
            with contextlib.suppress(StorageError):
                self._s.delete(self._key)
            raise
        self._tag(sha256)
        return StoredObject(key=self._key, size=stored, location=location)

    def _tag(self, sha256: str) -> None:
        # Metadata cannot be added once a multipart upload is complete; a tag can. The catalog
        # holds the authoritative checksum, so a store without tagging support is no failure.
        tags = {"TagSet": [{"Key": "sha256", "Value": sha256}]}
        try:
            self._call("put_object_tagging", Tagging=tags)
        except (StorageError, NotFound) as exc:
            log.debug("could not tag %s with its sha256: %s", self._key, exc.message)

    def abort(self) -> None:
        self._closed = True
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._call("abort_multipart_upload", UploadId=upload_id)
        except Exception as exc:  # abort must never raise; a bucket lifecycle rule cleans the rest
            log.warning("could not abort multipart upload for %s: %s", self._key, exc)
