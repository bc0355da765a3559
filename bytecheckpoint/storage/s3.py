"""S3 (and S3-compatible servers) through s3fs's aiobotocore client.

- Data files are uploaded as multipart uploads: ``part_size`` bytes a part, up to ``concurrency``
  parts in flight (memory: about ``part_size * concurrency`` per open writer). A file smaller
  than one part is one PUT. AWS needs parts of at least 5 MiB (except the last); test servers
  may allow less. Reads are ranged GETs of up to ``read_part_size`` bytes (default 64 MiB),
  ``concurrency`` at a time.
- Every request is retried on transient errors (connection refused/reset, timeouts, HTTP 5xx,
  throttling) with exponential backoff: ``attempts`` tries, waits of ``backoff_s * 2**i`` capped
  at ``max_backoff_s``, with jitter. After the last try a StorageError names the object, the
  operation and the number of tries. Other errors (access denied, no such bucket) fail at once.
- Commit is one PUT of the metadata object, issued after every data upload completed; S3
  makes a PUT visible whole or not at all. Exclusive create uses ``If-None-Match: *``.
- Endpoint and credentials come from the usual places (``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, instance
  roles); ``endpoint_url`` and ``storage_options`` (passed to ``s3fs.S3FileSystem``) override them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import s3fs
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from fsspec.asyn import sync

from ..errors import ObjectNotFoundError, StorageError
from .base import DataWriter, Storage, join_name

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PART_SIZE = 16 << 20
DEFAULT_READ_PART_SIZE = 64 << 20  # fewer, larger ranged GETs: each request has a fixed cost
DEFAULT_CONCURRENCY = 8
_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "BadDigest", "OperationAborted",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _TRANSIENT_CODES or int(status) >= 500
    # connection refused/reset/closed, read/connect timeouts (botocore and aiohttp), broken streams
    return isinstance(exc, (HTTPClientError, BotoConnectionError, OSError, asyncio.TimeoutError)) or type(exc).__module__.startswith("aiohttp")


def _error_code(exc: BaseException) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


class S3Storage(Storage):
    """A checkpoint under ``s3://bucket/prefix``."""

    exclusive_create = True

    def __init__(
        self,
        url: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        read_part_size: int | None = None,
        attempts: int = 6,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        endpoint_url: str | None = None,
        fs: s3fs.S3FileSystem | None = None,
        **storage_options: Any,
    ) -> None:
        if not url.startswith("s3://"):
            raise ValueError(f"{url}: an S3 URL must look like s3://bucket/prefix")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if len(bucket) < 3:
            raise ValueError(f"{url}: S3 bucket names have at least 3 characters, got {bucket!r}")
        if part_size < 1 or concurrency < 1 or attempts < 1:
            raise ValueError(f"part_size, concurrency and attempts must be >= 1, got {part_size}, {concurrency}, {attempts}")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.part_size, self.concurrency = part_size, concurrency
        self.read_part_size = read_part_size or DEFAULT_READ_PART_SIZE
        self.attempts, self.backoff_s, self.max_backoff_s = attempts, backoff_s, max_backoff_s
        self._settings = {"part_size": part_size, "concurrency": concurrency, "read_part_size": self.read_part_size,
                          "attempts": attempts, "backoff_s": backoff_s, "max_backoff_s": max_backoff_s}
        if fs is None:
            endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            config = {
                "retries": {"max_attempts": 1, "mode": "standard"},  # our own retry loop governs
                "connect_timeout": connect_timeout_s,
                "read_timeout": read_timeout_s,
                "max_pool_connections": max(10, 2 * concurrency),
            }
            config.update(storage_options.pop("config_kwargs", {}))
            fs = s3fs.S3FileSystem(endpoint_url=endpoint, config_kwargs=config,
                                   skip_instance_cache=True, **storage_options)
        self.fs = fs

    # -- plumbing -------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return join_name(self.prefix, name)

    def child(self, name: str) -> S3Storage:
        return S3Storage(f"s3://{self.bucket}/{self._key(name)}", fs=self.fs, **self._settings)

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    async def _client(self) -> Any:
        await self.fs.set_session()
        return self.fs.s3

    async def _retry(self, op: str, key: str, attempt_fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``attempt_fn(client)`` with the retry policy; errors name the operation and object."""
        where = f"s3://{self.bucket}/{key}"
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return await attempt_fn(await self._client())
            except Exception as exc:
                if _error_code(exc) in _NOT_FOUND_CODES:
                    raise ObjectNotFoundError(f"{where}: no such object ({op})") from exc
                if not _is_transient(exc):
                    raise StorageError(f"S3 {op} of {where} failed: {type(exc).__name__}: {exc}") from exc
                if attempt == self.attempts:
                    raise StorageError(
                        f"S3 {op} of {where} failed after {attempt} attempt(s) (transient errors; last: "
                        f"{type(exc).__name__}: {exc})"
                    ) from exc
                wait = min(delay, self.max_backoff_s) * random.uniform(0.5, 1.0)
                log.warning("S3 %s of %s: %s: %s; retry %d/%d in %.2fs", op, where, type(exc).__name__, exc,
                            attempt, self.attempts - 1, wait)
                await asyncio.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")

    def _sync(self, coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return sync(self.fs.loop, coro_fn, *args)

    def _submit(self, coro: Awaitable[T]) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.fs.loop)  # type: ignore[arg-type]

    # -- requests -------------------------------------------------------------------------------

    async def _put(self, key: str, body: bytes, **extra: Any) -> Any:
        return await self._retry("PUT", key, lambda c: c.put_object(Bucket=self.bucket, Key=key, Body=body, **extra))

    async def _get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of ``key``; fewer at the end of the object, b"" past it."""

        async def attempt(client: Any) -> bytes:
            try:
                resp = await client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            except ClientError as exc:
                if _error_code(exc) == "InvalidRange":  # start at or past the end of the object
                    return b""
                raise
            async with resp["Body"] as body:
                return await body.read()

        return await self._retry("GET", key, attempt)

    async def _read_into(self, key: str, offset: int, buffer: memoryview) -> int:
        step = self.read_part_size
        spans = [(a, min(a + step, len(buffer))) for a in range(0, len(buffer), step)]
        sem = asyncio.Semaphore(self.concurrency)

        async def one(a: int, b: int) -> int:
            async with sem:
                data = await self._get_range(key, offset + a, offset + b)
            buffer[a : a + len(data)] = data
            return len(data)

        got = await asyncio.gather(*(one(a, b) for a, b in spans))
        total = 0
        for (a, b), n in zip(spans, got):
            total += n
            if n < b - a:
                break
        return total

    async def _head(self, key: str) -> dict:
        return await self._retry("HEAD", key, lambda c: c.head_object(Bucket=self.bucket, Key=key))

    async def _list(self, prefix: str, delimiter: str | None) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        dirs: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._retry("LIST", prefix, lambda c, kw=kwargs: c.list_objects_v2(**kw))
            keys += [o["Key"] for o in page.get("Contents", [])]
            dirs += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return keys, dirs
            token = page["NextContinuationToken"]

    # -- Storage --------------------------------------------------------------------------------

    def open_writer(self, name: str) -> DataWriter:
        return _MultipartWriter(self, self._key(name))

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        if not len(buffer):
            return 0
        buffer = memoryview(buffer).cast("B")
        key = self._key(name)

        async def run() -> int:
            return await self._read_into(key, offset, buffer)

        n = self._sync(run)
        if n == 0 and not self.exists(name):
            raise ObjectNotFoundError(f"{self.describe(name)}: no such object (GET)")
        return n

    def read(self, name: str) -> bytes:
        key = self._key(name)

        async def attempt(client: Any) -> bytes:
            resp = await client.get_object(Bucket=self.bucket, Key=key)
            async with resp["Body"] as body:
                return await body.read()

        return self._sync(self._retry, "GET", key, attempt)

    def size(self, name: str) -> int:
        return int(self._sync(self._head, self._key(name))["ContentLength"])

    def exists(self, name: str) -> bool:
        try:
            self._sync(self._head, self._key(name))
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        base = self._key(prefix)
        search = base + "/" if base else ""
        keys, _ = self._sync(self._list, search, None)
        if base and not keys and self.exists(prefix):  # the prefix names one object
            keys.append(base)
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[cut:] for k in keys)

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._key(prefix)
        search = base + "/" if base else ""
        _, dirs = self._sync(self._list, search, "/")
        return sorted(d[len(search):].rstrip("/") for d in dirs)

    def delete(self, name: str) -> None:
        key = self._key(name)
        self._sync(self._retry, "DELETE", key, lambda c: c.delete_object(Bucket=self.bucket, Key=key))

    def delete_prefix(self, prefix: str) -> int:
        base = self._key(prefix)
        keys, _ = self._sync(self._list, base + "/" if base else "", None)

        async def run() -> None:
            for i in range(0, len(keys), 1000):
                batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
                out = await self._retry("DELETE", base + "/", lambda c, b=batch: c.delete_objects(Bucket=self.bucket, Delete=b))
                if out.get("Errors"):
                    first = out["Errors"][0]
                    raise StorageError(f"S3 DELETE of s3://{self.bucket}/{first.get('Key')} failed: {first.get('Message')}")

        self._sync(run)
        return len(keys)

    def commit(self, name: str, data: bytes) -> None:
        self._sync(self._put, self._key(name), bytes(data))

    def create_exclusive(self, name: str, data: bytes) -> bool:
        key = self._key(name)
        try:
            self._sync(self._retry, "PUT (if absent)", key,
                       lambda c: c.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), IfNoneMatch="*"))
        except StorageError as exc:
            code = _error_code(exc.__cause__) if exc.__cause__ is not None else ""
            if code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            # a retried PUT whose first try did succeed (the reply was lost) also lands here:
            # the object is ours if it holds our bytes (callers put a unique token in ``data``)
            try:
                return self.read(name) == bytes(data)
            except FileNotFoundError:
                return False
        return True


class _MultipartWriter:
    """Buffers ``part_size`` bytes, uploads parts concurrently, completes on close."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage, self.key = storage, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.pending: list[tuple[int, Future]] = []
        self.parts: list[dict] = []
        self.next_part = 1
        self.written = 0

    def write(self, data: memoryview) -> None:
        view = memoryview(data).cast("B")
        self.written += len(view)
        size = self.storage.part_size
        while len(view):
            take = min(len(view), size - len(self.buffer))
            self.buffer += view[:take]
            view = view[take:]
            if len(self.buffer) >= size:
                self._upload_part()

    def _upload_part(self) -> None:
        st = self.storage
        try:
            if self.upload_id is None:
                out = st._sync(st._retry, "CreateMultipartUpload", self.key,
                               lambda c: c.create_multipart_upload(Bucket=st.bucket, Key=self.key))
                self.upload_id = out["UploadId"]
            body, number = self.buffer, self.next_part  # handed over whole: no copy
            self.buffer = bytearray()
            self.next_part += 1
            upload_id = self.upload_id
            future = st._submit(st._retry(
                f"UploadPart {number}", self.key,
                lambda c: c.upload_part(Bucket=st.bucket, Key=self.key, UploadId=upload_id, PartNumber=number, Body=body),
            ))
            self.pending.append((number, future))
            while len(self.pending) >= st.concurrency:
                self._collect_oldest()
        except BaseException:
            self.abort()
            raise

    def _collect_oldest(self) -> None:
        number, future = self.pending.pop(0)
        self.parts.append({"PartNumber": number, "ETag": future.result()["ETag"]})

    def close(self) -> None:
        st = self.storage
        try:
            if self.upload_id is None:
                st._sync(st._put, self.key, self.buffer)
                self.buffer = bytearray()
                return
            if self.buffer or self.next_part == 1:
                self._upload_part()
            while self.pending:
                self._collect_oldest()
            parts = {"Parts": sorted(self.parts, key=lambda p: p["PartNumber"])}
            upload_id = self.upload_id
            try:
                st._sync(st._retry, "CompleteMultipartUpload", self.key,
                         lambda c: c.complete_multipart_upload(Bucket=st.bucket, Key=self.key, UploadId=upload_id,
                                                               MultipartUpload=parts))
            except StorageError as exc:
                # a retry after a completion whose reply was lost finds the upload gone: fine if
                # the object now has exactly our parts
                if not (_error_code(exc.__cause__) == "NoSuchUpload" and self._completed(len(parts["Parts"]))):
                    raise
            self.upload_id = None
        except BaseException:
            self.abort()
            raise

    def _completed(self, nparts: int) -> bool:
        st = self.storage
        try:
            head = st._sync(st._head, self.key)
        except StorageError:
            return False
        return int(head["ContentLength"]) == self.written and str(head.get("ETag", "")).strip('"').endswith(f"-{nparts}")

    def abort(self) -> None:
        st = self.storage
        for _, future in self.pending:
            future.cancel()
        self.pending = []
        self.buffer = bytearray()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                st._sync(st._retry, "AbortMultipartUpload", self.key,
                         lambda c: c.abort_multipart_upload(Bucket=st.bucket, Key=self.key, UploadId=upload_id))
            except Exception as exc:  # noqa: BLE001 - the upload already failed; report, don't mask
                log.warning("could not abort the multipart upload of s3://%s/%s: %s", st.bucket, self.key, exc)
