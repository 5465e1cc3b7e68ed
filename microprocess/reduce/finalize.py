"""Finalize: join the parts into the report, then publish it.

`join_report` appends every part, in shard order, to `report.jsonl`, `report.csv` and
`failures.csv` (three multipart uploads, one part buffer each), joining bytes: rows are
parsed again only for a shard whose CSV columns differ from the run's (see `parts`).
The histogram's bins are chosen from the parts' merged range, then filled from their
value files. `publish` writes `summary.json` and `report.html` for an ended run from the
summary stored on it, with the status the ledger decided.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger, RunRecord
from microprocess.reduce.layout import ReportLayout
from microprocess.reduce.page import render_report_page
from microprocess.reduce.parts import build_part, failure_columns
from microprocess.reduce.rows import CsvEncoder, cell, task_columns
from microprocess.reduce.s3stream import S3StreamWriter
from microprocess.reduce.summary import Histogram, PartStats, publishable_summary

log = logging.getLogger(__name__)

#: Bytes read per S3 GET chunk when streaming the parts.
READ_CHUNK_BYTES = 1024 * 1024


def is_missing(exc: ClientError) -> bool:
    """Whether an S3 error says the object is not there."""
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def part_stats(
    ledger: Ledger,
    s3: Any,
    layout: ReportLayout,
    job: JobDeclaration,
    shard_count: int,
    *,
    part_bytes: int,
    keep_ids: bool = False,
) -> list[PartStats]:
    """The statistics of every part, in shard order; a missing part is built now."""
    parts = []
    for shard in range(shard_count):
        try:
            body = s3.get_object(Bucket=layout.bucket, Key=layout.part_stats(shard))["Body"].read()
            parts.append(PartStats.from_dict(json.loads(body)))
        except ClientError as exc:
            if not is_missing(exc):
                raise
            log.warning("run %s: part %d is missing; building it during finalize", layout.run_id, shard)
            parts.append(build_part(ledger, s3, layout, job, shard, part_bytes=part_bytes, keep_ids=keep_ids))
    return parts


def merged(parts: list[PartStats]) -> PartStats:
    total = PartStats()
    for part in parts:
        total.merge(part)
    return total


@dataclass(frozen=True)
class JoinedReport:
    histogram: Histogram | None
    csv_bytes: int
    jsonl_bytes: int
    csv_parts: int
    rebuilt_shards: int


def read_lines(s3: Any, bucket: str, key: str) -> Iterator[str]:
    """The non-empty lines of an S3 object, streamed."""
    for line in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_lines(chunk_size=READ_CHUNK_BYTES):
        if line:
            yield line.decode()


def _append(s3: Any, bucket: str, key: str, out: S3StreamWriter) -> None:
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(READ_CHUNK_BYTES):
        out.write(chunk)


def _rebuild_csv(s3: Any, bucket: str, key: str, columns: list[str], out: S3StreamWriter) -> None:
    """Encode a part's JSONL rows as CSV rows with the run's columns."""
    encoder = CsvEncoder()
    for line in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_lines(chunk_size=READ_CHUNK_BYTES):
        if line:
            row = json.loads(line)
            out.write(encoder.encode(cell(row.get(c)) for c in columns))


def _fill(histogram: Histogram, s3: Any, bucket: str, key: str) -> None:
    as_int = histogram.stats.all_int
    for line in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_lines(chunk_size=READ_CHUNK_BYTES):
        if line:
            histogram.add(int(line) if as_int else float(line))


def join_report(
    s3: Any, layout: ReportLayout, job: JobDeclaration, parts: list[PartStats], *, part_bytes: int
) -> JoinedReport:
    """Join the parts into report.jsonl, report.csv and failures.csv (one row per task)."""
    total = merged(parts)
    columns = [*task_columns(job), *total.columns]
    histogram = Histogram(total.histogram) if job.histogram_field else None
    encoder = CsvEncoder()
    rebuilt = 0

    def writer(key: str, content_type: str) -> S3StreamWriter:
        return S3StreamWriter(s3, layout.bucket, key, part_bytes=part_bytes, content_type=content_type)

    with ExitStack() as files:
        jsonl = files.enter_context(writer(layout.report_jsonl, "application/x-ndjson"))
        report = files.enter_context(writer(layout.report_csv, "text/csv"))
        failed = files.enter_context(writer(layout.failures_csv, "text/csv"))
        report.write(encoder.encode(cell(c) for c in columns))
        failed.write(encoder.encode(cell(c) for c in failure_columns(job)))
        for shard, part in enumerate(parts):
            _append(s3, layout.bucket, layout.part_rows(shard), jsonl)
            if part.csv_columns == columns:
                _append(s3, layout.bucket, layout.part_csv(shard), report)
            else:
                rebuilt += 1
                _rebuild_csv(s3, layout.bucket, layout.part_rows(shard), columns, report)
            _append(s3, layout.bucket, layout.part_failures(shard), failed)
            if histogram is not None and part.histogram.count:
                _fill(histogram, s3, layout.bucket, layout.part_values(shard))
    if rebuilt:
        log.info("run %s: %d of %d part CSVs rebuilt for the run's columns", layout.run_id, rebuilt, len(parts))
    return JoinedReport(histogram, report.bytes_written, jsonl.bytes_written, report.part_count, rebuilt)


def presign(s3: Any, bucket: str, key: str, expiry_s: int) -> str:
    return str(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expiry_s))


def publish(s3: Any, layout: ReportLayout, run: RunRecord, *, link_expiry_s: int) -> dict[str, Any]:
    """Write summary.json and report.html of an ended run; return the published summary."""
    summary = publishable_summary(run)
    s3.put_object(
        Bucket=layout.bucket,
        Key=layout.summary_json,
        Body=json.dumps(summary, indent=1, default=str).encode(),
        ContentType="application/json",
    )
    links = {
        name: presign(s3, layout.bucket, key, link_expiry_s)
        for name, key in (
            ("report.csv", layout.report_csv),
            ("report.jsonl", layout.report_jsonl),
            ("failures.csv", layout.failures_csv),
            ("summary.json", layout.summary_json),
        )
    }
    page = render_report_page(summary, links)
    s3.put_object(
        Bucket=layout.bucket, Key=layout.report_html, Body=page.encode(), ContentType="text/html; charset=utf-8"
    )
    return summary
