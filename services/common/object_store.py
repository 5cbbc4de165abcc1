"""The one code path to the object store: any S3 endpoint, through the `minio` client.

Every object written here carries its sha256 in the user metadata `x-amz-meta-sha256`, so
readers can verify what they fetch and models can be content-addressed without re-hashing.
S3 sends user metadata before the body, so a stream whose hash is not known yet is spooled
(to memory while small, then to a temporary file) while it is hashed, and uploaded from there.

Errors are the domain errors of `services.common.errors`: a missing object is `NotFound`, a
store that cannot be reached or refuses our credentials is `Unavailable`, a bad key is
`InvalidArgument` (raised before any network call). A write the store does not answer is
sent again after short pauses (`WRITE_RETRY_DELAYS_S`, about 2 s in all), so a restart of
the store costs a caller nothing; a store that stays down fails the write cleanly.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NoReturn

import grpc
import urllib3
from minio import Minio
from minio import time as minio_time
from minio.datatypes import Object
from minio.error import MinioException, S3Error
from minio.helpers import ObjectWriteResult
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util import Retry, Timeout

from services.common.errors import (
    ConfigError,
    InvalidArgument,
    NotFound,
    SdstackError,
    Unavailable,
)

log = logging.getLogger(__name__)

MODELS_BUCKET = "models"
LORAS_BUCKET = "loras"
DATASETS_BUCKET = "datasets"
OUTPUTS_BUCKET = "outputs"
ALL_BUCKETS: tuple[str, ...] = (MODELS_BUCKET, LORAS_BUCKET, DATASETS_BUCKET, OUTPUTS_BUCKET)

SHA256_META = "sha256"
PART_SIZE = 10 * 1024 * 1024
CHUNK_SIZE = 1024 * 1024
MAX_KEY_BYTES = 1024
# Streams of unknown hash stay in memory up to this size, then spill to a temporary file.
SPOOL_IN_MEMORY = 16 * 1024 * 1024
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 120.0
# Pauses between the attempts of a write the store did not answer: rides over a restart
# of the store (about a second for the bundled one) and fails cleanly within ~2 s of
# pauses when it stays down. Bodies are seekable (bytes, spool or file), so a retry
# sends the same bytes again.
WRITE_RETRY_DELAYS_S: tuple[float, ...] = (0.25, 0.5, 1.0)

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"})
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AuthorizationHeaderMalformed",
    }
)
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_META_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_META_VALUE = re.compile(r"^[\x20-\x7e]{0,2048}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ChecksumMismatch(SdstackError):
    """Bytes read from the store do not hash to the sha256 recorded when they were written."""

    status = grpc.StatusCode.DATA_LOSS
    reason = "DATA_LOSS"


class StoreUnreachable(Unavailable):
    """The store did not answer (down, restarting, or a 5xx): worth retrying, unlike a
    refusal of our credentials."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object. `sha256` is "" when it was not recorded
    (objects written by other tools) or not returned (listings)."""

    bucket: str
    key: str
    size: int
    sha256: str
    content_type: str
    etag: str
    last_modified: datetime | None
    metadata: dict[str, str] = field(default_factory=dict)


def check_key(key: str) -> str:
    """`key` if it is a safe object key, else InvalidArgument naming the broken rule.

    Keys may end up as local paths (caches, exports), so traversal-shaped keys are refused
    even though S3 itself would accept them.
    """
    if not key:
        _bad_key("must not be empty")
    if _CONTROL.search(key):
        _bad_key("must not contain NUL or control characters")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        _bad_key("must be valid UTF-8")
    if size > MAX_KEY_BYTES:
        _bad_key(f"must be at most {MAX_KEY_BYTES} bytes in UTF-8")
    if key.startswith("/"):
        _bad_key("must not start with '/'")
    if key.endswith("/"):
        _bad_key("must not end with '/'")
    if "\\" in key:
        _bad_key("must not contain '\\'")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            _bad_key("must not contain empty, '.' or '..' path segments")
    return key


def _bad_key(rule: str) -> NoReturn:
    raise InvalidArgument("key", rule)


def check_bucket(bucket: str) -> str:
    """`bucket` if it is a valid S3 bucket name (3–63 of a-z, 0-9, '.', '-')."""
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise InvalidArgument("bucket", "must be 3-63 characters of a-z, 0-9, '.' and '-'")
    return bucket


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not _META_NAME.match(name) or name.lower() == SHA256_META:
            raise InvalidArgument(
                f"metadata.{name}", "names are letters, digits, '-' or '_'; 'sha256' is reserved"
            )
        if not isinstance(value, str) or not _META_VALUE.match(value):
            raise InvalidArgument(f"metadata.{name}", "values are printable ASCII, ≤ 2048 chars")
        checked[name.lower()] = value
    return checked


def parse_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """`host:port` and whether to use TLS, from `host:port` or an `http(s)://host:port` URL."""
    value = endpoint.strip().rstrip("/")
    lowered = value.lower()
    if lowered.startswith("https://"):
        value, secure = value[len("https://") :], True
    elif lowered.startswith("http://"):
        value, secure = value[len("http://") :], False
    if not value or "/" in value or "@" in value:
        raise ConfigError(
            "S3 endpoint", f"must be host:port or http(s)://host:port, got {endpoint!r}"
        )
    return value, secure


def _http_client() -> urllib3.PoolManager:
    """Short connect timeout and few retries: an unreachable store fails in seconds."""
    return urllib3.PoolManager(
        timeout=Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=10,
        retries=Retry(
            total=3,
            connect=1,
            read=1,
            backoff_factor=0.2,
            status_forcelist=(500, 502, 503, 504),
        ),
    )


class _HashingReader(io.RawIOBase):
    """Wraps a binary stream, hashing and counting every byte read through it."""

    def __init__(self, source: BinaryIO) -> None:
        super().__init__()
        self._source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data


class ObjectStore:
    """Buckets and objects on one S3 endpoint (MinIO in Kubernetes, SeaweedFS locally)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str | None = None,
    ) -> None:
        self.endpoint, self.secure = parse_endpoint(endpoint, secure)
        self._client = Minio(
            self.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=self.secure,
            region=region,
            http_client=_http_client(),
        )

    def close(self) -> None:
        """Drops pooled connections."""
        self._client._http.clear()

    # -- buckets and health -------------------------------------------------------------

    def ping(self, bucket: str | None = None) -> None:
        """Unavailable unless the store answers an authenticated call.

        Without `bucket` it lists buckets; credentials limited to some buckets can name one
        (it need not exist).
        """
        with self._errors():
            if bucket is None:
                self._client.list_buckets()
            else:
                self._client.bucket_exists(check_bucket(bucket))

    def ensure_buckets(self, names: Iterable[str]) -> None:
        """Creates the buckets that do not exist yet; safe to call concurrently."""
        for name in names:
            check_bucket(name)
            with self._errors():
                if self._client.bucket_exists(name):
                    continue
                try:
                    self._client.make_bucket(name)
                    log.info("created bucket %s on %s", name, self.endpoint)
                except S3Error as error:
                    if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    # -- writing ------------------------------------------------------------------------

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes | BinaryIO,
        *,
        length: int = -1,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Writes an object with its sha256 recorded; returns what was stored.

        `data` is bytes, or a binary stream read to its end (or `length` bytes when given).
        """
        check_bucket(bucket)
        check_key(key)
        meta = _check_metadata(metadata)
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            sha = hashlib.sha256(body).hexdigest()
            return self._upload(bucket, key, io.BytesIO(body), len(body), sha, content_type, meta)
        if not callable(getattr(data, "read", None)):
            raise InvalidArgument("data", "must be bytes or a readable binary stream")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            size, sha = _spool(data, spool, length)
            spool.seek(0)
            return self._upload(bucket, key, spool, size, sha, content_type, meta)  # type: ignore[arg-type]

    def put_file(
        self,
        bucket: str,
        key: str,
        path: Path | str,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Writes a local file: hashed in one pass, uploaded in a second, never copied."""
        check_bucket(bucket)
        check_key(key)
        meta = _check_metadata(metadata)
        with open(path, "rb") as file:
            sha = _file_sha256(file)
            size = file.seek(0, os.SEEK_END)
            file.seek(0)
            return self._upload(bucket, key, file, size, sha, content_type, meta)

    def _upload(
        self,
        bucket: str,
        key: str,
        body: BinaryIO,
        size: int,
        sha256: str,
        content_type: str,
        metadata: dict[str, str],
    ) -> ObjectInfo:
        metadata = {**metadata, SHA256_META: sha256}
        result = self._put_retrying(bucket, key, body, size, content_type, metadata)
        log.debug("put %s/%s (%d bytes, sha256 %s)", bucket, key, size, sha256)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=size,
            sha256=sha256,
            content_type=content_type,
            etag=(result.etag or "").strip('"'),
            last_modified=result.last_modified,
            metadata=metadata,
        )

    def _put_retrying(
        self,
        bucket: str,
        key: str,
        body: BinaryIO,
        size: int,
        content_type: str,
        metadata: dict[str, str],
    ) -> ObjectWriteResult:
        """`put_object`, sent again after each pause of WRITE_RETRY_DELAYS_S while the
        store does not answer (a refusal of our credentials is not retried)."""
        start = body.tell()
        for delay in (*WRITE_RETRY_DELAYS_S, None):
            try:
                with self._errors(bucket, key):
                    return self._client.put_object(
                        bucket,
                        key,
                        body,
                        size,
                        content_type=content_type,
                        metadata=metadata,  # type: ignore[arg-type]
                        part_size=PART_SIZE,
                    )
            except StoreUnreachable as error:
                if delay is None:
                    raise
                log.warning("put %s/%s: %s; retrying in %.2g s", bucket, key, error, delay)
                time.sleep(delay)
                body.seek(start)
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- reading ------------------------------------------------------------------------

    def get(self, bucket: str, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks. NotFound is raised here, not on the first chunk;
        the connection goes back to the pool at the end or when the iterator is closed."""
        response = self._open(bucket, key)
        return self._chunks(response, bucket, key)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return b"".join(self.get(bucket, key))

    def get_range(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer past the object's end); no checksum applies."""
        check_bucket(bucket)
        check_key(key)
        if offset < 0 or length < 1:
            raise InvalidArgument("length", "must read at least one byte from offset ≥ 0")
        with self._errors(bucket, key):
            response = self._client.get_object(bucket, key, offset=offset, length=length)
        return b"".join(self._chunks(response, bucket, key))

    def download(self, bucket: str, key: str, dest: Path | str) -> ObjectInfo:
        """Writes the object to `dest` atomically (temporary file, fsync, rename).

        When a sha256 was recorded, the bytes must match it: on a mismatch the temporary file
        is removed, `dest` is left as it was, and ChecksumMismatch is raised.
        """
        dest = Path(dest)
        response = self._open(bucket, key)
        info = _info_from_response(bucket, key, response.headers)
        with closing(self._chunks(response, bucket, key)) as chunks:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as out:
                    digest, size = _write_hashed(chunks, out)
                    out.flush()
                    os.fsync(out.fileno())
                _verify(info, digest, size)
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return info

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        check_bucket(bucket)
        check_key(key)
        with self._errors(bucket, key):
            found = self._client.stat_object(bucket, key)
        return _info_from_stat(bucket, key, found)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.stat(bucket, key)
        except NotFound:
            return False
        return True

    def list(self, bucket: str, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects under `prefix`, from the listing alone (no stat per object, so `sha256`
        and `content_type` are usually ""). Without `recursive`, each common prefix is
        yielded once as a size-0 entry whose key ends with '/'."""
        check_bucket(bucket)
        found = self._client.list_objects(bucket, prefix=prefix, recursive=recursive)
        return self._listing(bucket, prefix, found)

    def _listing(self, bucket: str, prefix: str, found: Iterator[Object]) -> Iterator[ObjectInfo]:
        with self._errors(bucket, prefix):
            for entry in found:
                yield _info_from_listing(bucket, entry)

    # -- removing and sharing -----------------------------------------------------------

    def delete(self, bucket: str, key: str) -> None:
        """Removes the object; removing one that is not there (or whose bucket is not) is fine."""
        check_bucket(bucket)
        check_key(key)
        try:
            with self._errors(bucket, key):
                self._client.remove_object(bucket, key)
        except NotFound:
            return

    def presigned_get_url(
        self, bucket: str, key: str, expires: timedelta = timedelta(hours=1)
    ) -> str:
        """A URL anyone can GET the object with until `expires` from now (max 7 days)."""
        check_bucket(bucket)
        check_key(key)
        if not timedelta(seconds=1) <= expires <= timedelta(days=7):
            raise InvalidArgument("expires", "must be between 1 second and 7 days")
        with self._errors(bucket, key):
            return self._client.presigned_get_object(bucket, key, expires=expires)

    # -- helpers --------------------------------------------------------------------------

    def _open(self, bucket: str, key: str) -> urllib3.BaseHTTPResponse:
        check_bucket(bucket)
        check_key(key)
        with self._errors(bucket, key):
            return self._client.get_object(bucket, key)

    def _chunks(self, response: urllib3.BaseHTTPResponse, bucket: str, key: str) -> Iterator[bytes]:
        try:
            with self._errors(bucket, key):
                yield from response.stream(CHUNK_SIZE)
        finally:
            response.close()
            response.release_conn()

    def _errors(self, bucket: str = "", key: str = "") -> _ErrorTranslation:
        return _ErrorTranslation(self.endpoint, bucket, key)


class _ErrorTranslation:
    """Context manager turning minio/urllib3 errors into the domain errors."""

    def __init__(self, endpoint: str, bucket: str, key: str) -> None:
        self.endpoint, self.bucket, self.key = endpoint, bucket, key

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        _kind: type[BaseException] | None,
        error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> bool:
        if error is None or isinstance(error, SdstackError):
            return False
        if isinstance(error, S3Error):
            raise self._from_s3(error) from error
        if isinstance(error, MinioException):  # 5xx, unparsable responses
            raise self._unavailable(str(error)) from error
        if isinstance(error, Urllib3Error | OSError):
            raise self._unavailable(_reason(error)) from error
        if isinstance(error, ValueError):  # minio's own argument checks
            raise InvalidArgument("request", str(error)) from error
        return False

    def _from_s3(self, error: S3Error) -> SdstackError:
        if error.code in _NOT_FOUND_CODES:
            if error.code == "NoSuchBucket":
                return NotFound("bucket", self.bucket)
            return NotFound("object", f"{self.bucket}/{self.key}")
        if error.code in _AUTH_CODES:
            return Unavailable(
                f"object store at {self.endpoint} refused our credentials: "
                f"{error.code} ({error.message})"
            )
        return SdstackError(f"object store error on {self.bucket}/{self.key}: {error.code}")

    def _unavailable(self, reason: str) -> Unavailable:
        return StoreUnreachable(f"object store at {self.endpoint} is unreachable: {reason}")


def _reason(error: BaseException) -> str:
    """The innermost useful message of a urllib3 error (MaxRetryError wraps the real one)."""
    inner = getattr(error, "reason", None)
    return str(inner or error)


def _spool(source: BinaryIO, spool: BinaryIO, length: int) -> tuple[int, str]:
    """Copies `source` (all of it, or exactly `length` bytes) into `spool`, hashing it."""
    reader = _HashingReader(source)
    if length < 0:
        shutil.copyfileobj(reader, spool, CHUNK_SIZE)
        return reader.size, reader.sha256.hexdigest()
    remaining = length
    while remaining > 0:
        chunk = reader.read(min(CHUNK_SIZE, remaining))
        if not chunk:
            raise InvalidArgument("data", f"stream ended after {reader.size} of {length} bytes")
        spool.write(chunk)
        remaining -= len(chunk)
    return reader.size, reader.sha256.hexdigest()


def _file_sha256(file: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(CHUNK_SIZE):
        digest.update(chunk)
    return digest.hexdigest()


def _write_hashed(chunks: Iterator[bytes], out: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _verify(info: ObjectInfo, sha256: str, size: int) -> None:
    if size != info.size:
        raise ChecksumMismatch(
            f"{info.bucket}/{info.key}: read {size} bytes, the store announced {info.size}"
        )
    if info.sha256 and sha256 != info.sha256.lower():
        raise ChecksumMismatch(
            f"{info.bucket}/{info.key}: sha256 {sha256} does not match recorded {info.sha256}"
        )


def _user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    prefix = "x-amz-meta-"
    return {
        name.lower()[len(prefix) :]: value
        for name, value in headers.items()
        if name.lower().startswith(prefix)
    }


def _info_from_stat(bucket: str, key: str, found: Object) -> ObjectInfo:
    meta = _user_metadata(found.metadata or {})
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=found.size or 0,
        sha256=meta.get(SHA256_META, ""),
        content_type=found.content_type or "",
        etag=(found.etag or "").strip('"'),
        last_modified=found.last_modified,
        metadata=meta,
    )


def _info_from_response(bucket: str, key: str, headers: Mapping[str, str]) -> ObjectInfo:
    """ObjectInfo from a GET response's headers, so a download checks the very version it read."""
    meta = _user_metadata(headers)
    modified = headers.get("last-modified")
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=int(headers.get("content-length") or 0),
        sha256=meta.get(SHA256_META, ""),
        content_type=headers.get("content-type") or "",
        etag=(headers.get("etag") or "").strip('"'),
        last_modified=minio_time.from_http_header(modified) if modified else None,
        metadata=meta,
    )


def _info_from_listing(bucket: str, found: Object) -> ObjectInfo:
    meta = _user_metadata(found.metadata or {})
    return ObjectInfo(
        bucket=bucket,
        key=found.object_name or "",
        size=0 if found.is_dir else found.size or 0,
        sha256=meta.get(SHA256_META, ""),
        content_type=found.content_type or "",
        etag=(found.etag or "").strip('"'),
        last_modified=found.last_modified,
        metadata=meta,
    )
