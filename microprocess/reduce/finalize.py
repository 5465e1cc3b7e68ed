"""Finalize: join the parts into the report, then publish it.

`join_report` streams every part's JSONL rows, in shard order, into `report.jsonl`,
`report.csv` and `failures.csv` (three multipart uploads, one part buffer each) and fills
the histogram as the rows go by. `publish` writes `summary.json` and `report.html` for an
ended run from the summary stored on it, with the status the ledger decided.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger, RunRecord, TaskState
from microprocess.reduce.layout import ReportLayout
from microprocess.reduce.page import render_report_page
from microprocess.reduce.parts import build_part
from microprocess.reduce.rows import CsvEncoder, cell, column_for, task_columns
from microprocess.reduce.s3stream import S3StreamWriter
from microprocess.reduce.summary import Histogram, PartStats, publishable_summary

log = logging.getLogger(__name__)

#: Bytes read per S3 GET chunk when streaming the parts.
READ_CHUNK_BYTES = 1024 * 1024


def failure_columns(job: JobDeclaration) -> tuple[str, ...]:
    """The columns of failures.csv."""
    return ("task_id", job.item_id_field, "attempts", "error")


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def merged_stats(
    ledger: Ledger, s3: Any, layout: ReportLayout, job: JobDeclaration, shard_count: int, *, part_bytes: int
) -> PartStats:
    """The statistics of every part, merged in shard order; a missing part is built now."""
    total = PartStats()
    for shard in range(shard_count):
        try:
            body = s3.get_object(Bucket=layout.bucket, Key=layout.part_stats(shard))["Body"].read()
            part = PartStats.from_dict(json.loads(body))
        except ClientError as exc:
            if not _is_missing(exc):
                raise
            log.warning("run %s: part %d is missing; building it during finalize", layout.run_id, shard)
            part = build_part(ledger, s3, layout, job, shard, part_bytes=part_bytes)
        total.merge(part)
    return total


@dataclass(frozen=True)
class JoinedReport:
    histogram: Histogram | None
    csv_bytes: int
    jsonl_bytes: int
    csv_parts: int


def join_report(
    s3: Any, layout: ReportLayout, job: JobDeclaration, shard_count: int, stats: PartStats, *, part_bytes: int
) -> JoinedReport:
    """Stream the parts into report.jsonl, report.csv and failures.csv (one row per task)."""
    columns = [*task_columns(job), *stats.columns]
    failures = failure_columns(job)
    histogram = Histogram(stats.histogram) if job.histogram_field else None
    histogram_column = column_for(job.histogram_field, job) if job.histogram_field else ""
    encoder = CsvEncoder()

    def writer(key: str, content_type: str) -> S3StreamWriter:
        return S3StreamWriter(s3, layout.bucket, key, part_bytes=part_bytes, content_type=content_type)

    jsonl = writer(layout.report_jsonl, "application/x-ndjson")
    report = writer(layout.report_csv, "text/csv")
    failed = writer(layout.failures_csv, "text/csv")
    with jsonl, report, failed:
        report.write(encoder.encode(columns))
        failed.write(encoder.encode(failures))
        for shard in range(shard_count):
            body = s3.get_object(Bucket=layout.bucket, Key=layout.part_rows(shard))["Body"]
            for line in body.iter_lines(chunk_size=READ_CHUNK_BYTES):
                if not line:
                    continue
                jsonl.write(line + b"\n")
                row = json.loads(line)
                report.write(encoder.encode(cell(row.get(c)) for c in columns))
                if row["state"] != TaskState.SUCCEEDED:
                    failed.write(encoder.encode(cell(row.get(c)) for c in failures))
                if histogram is not None:
                    histogram.add(row.get(histogram_column))
    return JoinedReport(histogram, report.bytes_written, jsonl.bytes_written, report.part_count)


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
