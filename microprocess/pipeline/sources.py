"""Item sources the splitter reads in pages, from a cursor.

A source reads segment `s` from cursor `c`; the cursor of a segment read to its end is
`CURSOR_DONE`. A table, an S3 object or a function may change between two reads of the
same cursor, so the splitter keeps each page it reads from them (see
`microprocess.pipeline.splitter`) and re-sends that, never a fresh read. Errors that no
retry will fix are told apart from transient ones by `is_permanent`.
"""

from __future__ import annotations

import base64
import csv
import importlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice, pairwise
from typing import Any, Protocol

from boto3.dynamodb.types import Binary, TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError

from microprocess.ledger import CURSOR_DONE, Ledger


class SourceError(ValueError):
    """A source that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str


class Source(Protocol):
    segments: int

    def read_page(self, segment: int, cursor: str, limit: int) -> Page: ...


_de = TypeDeserializer()


def _plain(value: Any) -> Any:
    """A DynamoDB value as JSON: numbers (Decimal) become JSON numbers, binary values
    (`B`, `BS`) become base64 text, sets become lists."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Binary):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(v) for v in value]
    return value


#: Pages a DynamoDB source reads per Scan call once it knows the table's key attributes.
#: A page is still `limit` items with its own cursor (the key of its last item, which is what
#: DynamoDB returns as LastEvaluatedKey), so pages and cursors are the same as one Scan per
#: page; the calls are a quarter (ministack's Scan costs O(table) per call: at 100,000 items
#: 170 ms a call, whatever its Limit). A Scan stops at 1 MB: its items may make fewer pages.
READ_AHEAD_PAGES = 4


class DynamoDBSource:
    """A table read with a parallel scan: one segment per `TotalSegments` slice.

    `read_ahead`: pages read per Scan call (after the first of a segment, whose cursor, or
    LastEvaluatedKey, names the key attributes); the pages read ahead are served from memory
    when the splitter asks for their cursor next.
    """

    def __init__(self, *, client: Any, table_name: str, segments: int, read_ahead: int = READ_AHEAD_PAGES) -> None:
        if not table_name:
            raise SourceError("the dynamodb source needs a table name (SOURCE_TABLES names none for its role)")
        if read_ahead < 1:
            raise ValueError(f"read_ahead must be >= 1 page, got {read_ahead}")
        self.client = client
        self.table_name = table_name
        self.segments = segments
        self.read_ahead = read_ahead
        self.scans = 0  # Scan calls made (the tests count them)
        self._ahead: dict[tuple[int, str], Page] = {}

    def read_page(self, segment: int, cursor: str, limit: int) -> Page:
        kept = self._ahead.pop((segment, cursor), None)
        if kept is not None:
            return kept
        self._ahead = {k: v for k, v in self._ahead.items() if k[0] != segment}  # another chain: drop
        start = json.loads(cursor) if cursor else None
        key_names = sorted(start) if start else None
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "Segment": segment,
            "TotalSegments": self.segments,
            "Limit": limit * (self.read_ahead if key_names else 1),
            "ConsistentRead": True,
        }
        if start:
            kwargs["ExclusiveStartKey"] = start
        resp = self.client.scan(**kwargs)
        self.scans += 1
        raw_items = resp.get("Items", [])
        last = resp.get("LastEvaluatedKey")
        end = json.dumps(last, sort_keys=True) if last else CURSOR_DONE
        if not key_names or len(raw_items) <= limit:
            return Page([_item(raw) for raw in raw_items], end)
        pages: list[Page] = []
        for at in range(0, len(raw_items), limit):
            chunk = raw_items[at : at + limit]
            more = at + limit < len(raw_items)
            next_cursor = json.dumps({k: chunk[-1][k] for k in key_names}, sort_keys=True) if more else end
            pages.append(Page([_item(raw) for raw in chunk], next_cursor))
        self._ahead.update({(segment, prev.next_cursor): page for prev, page in pairwise(pages)})
        return pages[0]


def _item(raw: dict[str, Any]) -> Any:
    return _plain({k: _de.deserialize(v) for k, v in raw.items()})


class InlineSource:
    """A list given in the start event; the cursor is the index of the next item."""

    segments = 1

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def read_page(self, segment: int, cursor: str, limit: int) -> Page:
        start = int(cursor or 0)
        page = self.items[start : start + limit]
        end = start + len(page)
        return Page(page, CURSOR_DONE if end >= len(self.items) else str(end))


class CallableSource:
    """A Python `module:function` returning an iterable of items; the cursor counts items read."""

    segments = 1

    def __init__(self, function: str) -> None:
        module_name, _, attr = function.partition(":")
        try:
            self.function = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SourceError(f"source function '{function}' cannot be imported: {exc}") from None

    def read_page(self, segment: int, cursor: str, limit: int) -> Page:
        start = int(cursor or 0)
        items: Iterable[Any] = self.function()
        page = list(islice(items, start, start + limit + 1))
        more = len(page) > limit
        page = page[:limit]
        return Page(page, str(start + len(page)) if more else CURSOR_DONE)


class S3ManifestSource:
    """A JSONL or CSV object in S3; the cursor is the byte offset of the next line."""

    segments = 1

    def __init__(self, *, client: Any, uri: str, fmt: str) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise SourceError(f"manifest URI '{uri}' must be s3://bucket/key")
        if fmt not in ("jsonl", "csv"):
            raise SourceError(f"manifest format '{fmt}' must be 'jsonl' or 'csv'")
        self.client, self.bucket, self.key, self.fmt = client, bucket, key, fmt
        self._header: list[str] | None = None

    def _read(self, start: int, length: int) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{start + length - 1}")
        except self.client.exceptions.NoSuchKey:
            raise SourceError(f"manifest s3://{self.bucket}/{self.key} does not exist") from None
        except Exception as exc:
            if "InvalidRange" in str(exc):
                return b""
            raise
        return resp["Body"].read()

    def _csv_header(self) -> tuple[list[str], int]:
        chunk = self._read(0, 65536)
        line, sep, _ = chunk.partition(b"\n")
        if not sep and len(chunk) == 65536:
            raise SourceError("manifest CSV header line is longer than 64 KiB")
        return next(csv.reader([line.decode().rstrip("\r")])), len(line) + len(sep)

    def read_page(self, segment: int, cursor: str, limit: int) -> Page:
        offset = int(cursor or 0)
        header: list[str] = []
        if self.fmt == "csv":
            header, header_len = self._csv_header()
            offset = max(offset, header_len)
        items: list[Any] = []
        pos, buf, eof = offset, b"", False
        chunk = 1 << 20
        while len(items) < limit:
            nl = buf.find(b"\n")
            if nl < 0:
                if eof:  # a last line without a newline
                    if buf.strip():
                        items.append(self._parse(buf.decode().rstrip("\r"), header, pos))
                    pos, buf = pos + len(buf), b""
                    break
                data = self._read(pos + len(buf), chunk)
                eof = len(data) < chunk
                buf += data
                continue
            line, buf = buf[:nl], buf[nl + 1 :]
            if line.strip():
                items.append(self._parse(line.decode().rstrip("\r"), header, pos))
            pos += nl + 1
        done = eof and not buf.strip()
        return Page(items, CURSOR_DONE if done else str(pos))

    def _parse(self, text: str, header: list[str], pos: int) -> Any:
        if self.fmt == "jsonl":
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise SourceError(f"manifest line at byte {pos} is not JSON: {exc.msg}") from None
        row = next(csv.reader(io.StringIO(text)))
        if len(row) != len(header):
            raise SourceError(f"manifest CSV row at byte {pos} has {len(row)} fields, header has {len(header)}")
        return dict(zip(header, row, strict=True))


class FailedTasksSource:
    """The failed tasks of an earlier run (for `retry-failed`). Reads only the failures
    (`Ledger.failed_page`), a page at a time from a cursor, never every record of the run."""

    segments = 1

    def __init__(self, *, ledger: Ledger, run_id: str) -> None:
        self.ledger, self.run_id = ledger, run_id

    def read_page(self, segment: int, cursor: str, limit: int) -> Page:
        failed, next_cursor = self.ledger.failed_page(self.run_id, cursor, limit)
        items = [t.item if t.item is not None else {"__item_ref": t.item_ref} for t in failed]
        return Page(items, next_cursor)


#: Error codes of AWS calls that no retry will fix: the run fails with the reason.
PERMANENT_CODES = frozenset(
    {
        "NoSuchBucket",
        "NoSuchKey",
        "AccessDenied",
        "AccessDeniedException",
        "ResourceNotFoundException",
        "ValidationException",
        "InvalidObjectState",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "AllAccessDisabled",
        "403",
        "404",
    }
)


def is_permanent(exc: BaseException) -> bool:
    """Whether a source error is for good (a missing bucket, object or table, access denied,
    a bad row) rather than transient (throttling, a 5xx, a timeout)."""
    if isinstance(exc, SourceError):
        return True
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) in PERMANENT_CODES
    return not isinstance(exc, BotoCoreError | OSError | TimeoutError)
