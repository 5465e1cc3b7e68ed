"""Write one S3 object from a stream of bytes without holding it in memory.

Bytes are buffered up to `part_bytes`; each full buffer becomes one part of a multipart
upload, so memory stays at one part whatever the object's size. An object smaller than
one part is written with one PutObject. On an error the multipart upload is aborted, so
no orphan parts are billed.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

#: S3's smallest multipart part (all parts but the last), bytes.
S3_MIN_PART_BYTES = 5 * 1024 * 1024


class S3StreamWriter:
    """A write-only, streaming S3 object; a context manager (completed on a clean exit,
    aborted on an error).

    Args:
        client: a boto3 S3 client.
        bucket, key: where the object goes.
        part_bytes: bytes per multipart part (S3 needs >= 5 MiB for every part but the last).
        content_type: the object's Content-Type.
        tagging: S3 object tags as a URL query string (`key=value&...`), or None.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        part_bytes: int = S3_MIN_PART_BYTES,
        content_type: str = "application/octet-stream",
        tagging: str | None = None,
    ) -> None:
        if part_bytes < 1:
            raise ValueError(f"part_bytes must be positive, got {part_bytes}")
        self.client, self.bucket, self.key, self.part_bytes = client, bucket, key, part_bytes
        self._extra: dict[str, str] = {"ContentType": content_type, **({"Tagging": tagging} if tagging else {})}
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.bytes_written = 0
        self.closed = False

    @property
    def part_count(self) -> int:
        """Parts uploaded so far (0 for an object written with one PutObject)."""
        return len(self._parts)

    def write(self, data: bytes) -> int:
        if self.closed:
            raise ValueError(f"s3://{self.bucket}/{self.key} is already closed")
        self._buffer += data
        self.bytes_written += len(data)
        while len(self._buffer) >= self.part_bytes:
            chunk = bytes(self._buffer[: self.part_bytes])
            del self._buffer[: self.part_bytes]
            self._upload_part(chunk)
        return len(data)

    def _upload_part(self, chunk: bytes) -> None:
        if self._upload_id is None:
            resp = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key, **self._extra)
            self._upload_id = resp["UploadId"]
        number = len(self._parts) + 1
        resp = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=chunk
        )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def close(self) -> None:
        """Complete the object: the last (possibly short) part, or one PutObject if it is small."""
        if self.closed:
            return
        if self._upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer), **self._extra)
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
        self._buffer = bytearray()
        self.closed = True

    def abort(self) -> None:
        """Drop what was written; nothing appears at the key."""
        if self._upload_id is not None and not self.closed:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
        self._buffer = bytearray()
        self.closed = True

    def __enter__(self) -> S3StreamWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
