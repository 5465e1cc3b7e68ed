"""The two-level reduce of a run (ARCHITECTURE §5), as the queue service does it.

* `reduce_part` streams one ledger shard (`Ledger.iter_results`, page by page) into a
  part CSV, a part failures CSV and the part's statistics, in the reports bucket.
* `finalize` joins the part CSVs into report.csv with one multipart upload (never the
  whole report in memory), writes summary.json, report.html and failures.csv, and
  sends the report email once per run (`Ledger.claim_email`). A stopped run's finalize builds
  its parts again (batches in flight at the stop may have recorded tasks since) and lists the
  tasks that one reading did not find in not_attempted.csv.

Layout under `s3://<bucket>/reports/<job>/<run_id>/`:
`parts/part-<kkk>.csv`, `parts/part-<kkk>.json`, `parts/failures-<kkk>.csv`,
`report.csv`, `failures.csv`, `summary.json`, `report.html` (and `not_attempted.csv`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import Field

from microprocess.control.lookup import TaskPositions
from microprocess.declarations import JobDeclaration
from microprocess.ledger import (
    Ledger,
    LedgerError,
    RunNotFound,
    RunRecord,
    RunStatus,
    TaskState,
    ended_status,
    failed_percentage,
    utc_now_iso,
)
from microprocess.reduce.rows import report_row
from microprocess.service.report import (
    EMAIL_LEASE_S,
    PART_TAG_KEY,
    PART_TAG_VALUE,
    PART_TAGGING,
    CsvEncoder,
    NoticesInFlight,
    ReportLayout,
    S3StreamWriter,
    cell,
    is_missing,
    notify_once,
    presign,
    send_email,
    write_not_attempted,
)
from microprocess.service.tasks import TaskRequest
from microservice.errors import ServiceError
from microservice.report_page import render_report_page
from microservice.report_stats import FAILURE_COLUMNS, REPORT_COLUMNS, ReportRow, ReportStats

__all__ = [
    "EMAIL_LEASE_S",
    "PART_TAG_KEY",
    "PART_TAG_VALUE",
    "ReduceRequest",
    "ReportLayout",
    "build_summary",
    "email_text",
    "finalize",
    "reduce_part",
]

log = logging.getLogger(__name__)

#: Bytes read per S3 GET chunk when joining parts.
_READ_CHUNK_BYTES = 1024 * 1024
#: A run may be reduced only in these states (a finished run may be re-reduced: same files).
_REDUCIBLE = (RunStatus.REDUCING, RunStatus.SUCCEEDED, RunStatus.FAILED)


class ReduceRequest(TaskRequest[None]):
    """Body of the reduce-part and finalize pushes (kind `reduce-part` / `finalize`; no item)."""

    job: str = Field(min_length=1, max_length=64)
    item: None = None


class CsvStream:
    """Rows written to an `S3StreamWriter` as the platform's reduce writes them: each value a
    `cell` (CSV formula neutralisation), RFC 4180 line ends (`CsvEncoder`)."""

    def __init__(self, writer: S3StreamWriter, header: Sequence[str]) -> None:
        self._writer = writer
        self._encoder = CsvEncoder()
        self.writerow(header)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.write(self._encoder.encode(cell(v) for v in row))


# ------------------------------------------------------------------ checks


def _require_reducible_run(ledger: Ledger, job: JobDeclaration, req: ReduceRequest) -> RunRecord:
    if req.job != job.name:
        raise ServiceError(400, "wrong_job", f"this endpoint reduces job '{job.name}', the body names '{req.job}'")
    try:
        run = ledger.require_run(req.run_id)
    except RunNotFound as exc:
        raise ServiceError(404, "run_not_found", str(exc)) from None
    if run.job != job.name:
        raise ServiceError(400, "wrong_job", f"run {run.run_id} belongs to job '{run.job}', not '{job.name}'")
    if run.status not in _REDUCIBLE:
        raise ServiceError(
            409,
            "run_not_reducing",
            f"run {run.run_id} is {run.status}; a reduce runs only once every task is terminal (REDUCING)",
        )
    return run


# ------------------------------------------------------------- reduce part


def reduce_part(
    ledger: Ledger,
    s3: Any,
    bucket: str,
    job: JobDeclaration,
    req: ReduceRequest,
    *,
    part_bytes: int,
) -> dict[str, Any]:
    """Reduce shard `req.shard` of the run into its part files; return the part's statistics.

    Deterministic keys, so a repeated push rewrites the same files.
    """
    run = _require_reducible_run(ledger, job, req)
    if req.shard >= run.shard_count:
        raise ServiceError(
            400, "no_such_shard", f"run {run.run_id} has shards 0..{run.shard_count - 1}; got shard {req.shard}"
        )
    return _build_part(ledger, s3, job, ReportLayout(bucket, job.name, run.run_id), req.shard, part_bytes=part_bytes)


def _build_part(
    ledger: Ledger,
    s3: Any,
    job: JobDeclaration,
    layout: ReportLayout,
    shard: int,
    *,
    part_bytes: int,
    seen: TaskPositions | None = None,
) -> dict[str, Any]:
    """Stream ledger shard `shard` into its part files; `seen` collects the task ids written.

    A row's cells are the platform's report row (`microprocess.reduce.rows.report_row`) in this
    service's columns; the statistics are this service's own (scores and bands)."""
    stats = ReportStats()

    def part_file(key: str) -> S3StreamWriter:
        return S3StreamWriter(
            s3, layout.bucket, key, part_bytes=part_bytes, content_type="text/csv", tagging=PART_TAGGING
        )

    rows_out, fails_out = part_file(layout.part_csv(shard)), part_file(layout.part_failures(shard))
    with rows_out, fails_out:
        rows_csv = CsvStream(rows_out, REPORT_COLUMNS)
        fails_csv = CsvStream(fails_out, FAILURE_COLUMNS)
        for task in ledger.iter_results(layout.run_id, shard):
            if seen is not None:
                seen.add(task.task_id)
            stats.add(ReportRow.of(task))
            row = report_row(task, job)
            rows_csv.writerow(row.get(c) for c in REPORT_COLUMNS)
            if task.state is not TaskState.SUCCEEDED:
                fails_csv.writerow(row.get(c) for c in FAILURE_COLUMNS)
    result = {
        "run_id": layout.run_id,
        "job": layout.job,
        "shard": shard,
        "csv": f"s3://{layout.bucket}/{layout.part_csv(shard)}",
        "csv_bytes": rows_out.bytes_written,
        "reduced_at": utc_now_iso(),
        **stats.to_dict(),
    }
    s3.put_object(
        Bucket=layout.bucket,
        Key=layout.part_stats(shard),
        Body=json.dumps(result, indent=1).encode(),
        ContentType="application/json",
        Tagging=PART_TAGGING,
    )
    log.info("reduced run %s shard %d: %d rows", layout.run_id, shard, stats.rows)
    return result


# ---------------------------------------------------------------- finalize


def _part_stats(
    ledger: Ledger, s3: Any, job: JobDeclaration, layout: ReportLayout, shard: int, *, part_bytes: int
) -> ReportStats:
    """A part's statistics; a part that is missing (its reduce was lost) is built now."""
    try:
        body = s3.get_object(Bucket=layout.bucket, Key=layout.part_stats(shard))["Body"].read()
        return ReportStats.from_dict(json.loads(body))
    except ClientError as exc:
        if not is_missing(exc):
            raise
    log.warning("run %s: part %d is missing; building it during finalize", layout.run_id, shard)
    return ReportStats.from_dict(_build_part(ledger, s3, job, layout, shard, part_bytes=part_bytes))


def _append_without_header(s3: Any, bucket: str, key: str, out: S3StreamWriter) -> None:
    """Stream the object at `key` into `out`, dropping its first line (the CSV header)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    header_done = False
    for chunk in body.iter_chunks(_READ_CHUNK_BYTES):
        if not header_done:
            newline = chunk.find(b"\n")
            if newline < 0:
                continue  # still inside the header line (never longer than a chunk in practice)
            chunk = chunk[newline + 1 :]
            header_done = True
        if chunk:
            out.write(chunk)


def _join(
    s3: Any, layout: ReportLayout, keys: Sequence[str], target: str, header: Sequence[str], part_bytes: int
) -> S3StreamWriter:
    out = S3StreamWriter(s3, layout.bucket, target, part_bytes=part_bytes, content_type="text/csv")
    with out:
        CsvStream(out, header)
        for key in keys:
            _append_without_header(s3, layout.bucket, key, out)
    return out


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def build_summary(
    run: RunRecord,
    expected: int,
    counted_succeeded: int,
    counted_failed: int,
    totals: ReportStats,
    job: JobDeclaration,
    layout: ReportLayout,
    finished_at: str,
) -> dict[str, Any]:
    """The run's summary (summary.json, the email, the finalize answer).

    `status` is the status the run ends with: FAILED when the failed share of the
    expected tasks is above the job's tolerance, or when the run was stopped, the same rule
    as `Ledger.finish_run` (`ended_status`).
    """
    # The ledger's one rule decides (exact arithmetic); the percentage is only shown.
    status = ended_status(run, counted_failed, expected, job.tolerated_failure_pct)
    failed_pct = round(failed_percentage(counted_failed, expected), 3)
    duration = (_parse_time(finished_at) - _parse_time(run.created_at)).total_seconds()
    return {
        "job": job.name,
        "run_id": run.run_id,
        "status": str(status),
        "expected": expected,
        "tasks": totals.rows,
        "succeeded": totals.succeeded,
        "failed": totals.failed,
        "counted_succeeded": counted_succeeded,
        "counted_failed": counted_failed,
        "complete": totals.rows == expected and totals.failed == counted_failed,
        "failed_pct": failed_pct,
        "tolerated_failure_pct": job.tolerated_failure_pct,
        "started_at": run.created_at,
        "finished_at": finished_at,
        "duration_s": round(max(duration, 0.0), 3),
        "score": {"count": totals.scored, "mean": totals.score_mean, "min": totals.score_min, "max": totals.score_max},
        "bands": dict(totals.bands),
        "score_histogram": totals.histogram(),
        "failure_count": totals.failure_count,
        "failures": list(totals.failures),
        "report_uri": layout.uri,
        "files": {
            name: f"s3://{layout.bucket}/{key}"
            for name, key in (
                ("report_csv", layout.report_csv),
                ("failures_csv", layout.failures_csv),
                ("summary_json", layout.summary_json),
                ("report_html", layout.report_html),
            )
        },
    }


def email_text(summary: dict[str, Any], report_url: str, link_expiry_s: int) -> tuple[str, str]:
    """Subject and plain-text body of the report email."""
    subject = f"[microprocess] {summary['job']} run {summary['run_id']}: {summary['status']}"
    lines = [
        f"Job: {summary['job']}",
        f"Run: {summary['run_id']}",
        f"Status: {summary['status']}",
        f"Tasks: {summary['expected']} expected, {summary['succeeded']} succeeded, "
        f"{summary['failed']} failed ({summary['failed_pct']}%, tolerated {summary['tolerated_failure_pct']}%)",
        f"Started: {summary['started_at']}  Finished: {summary['finished_at']}  Duration: {summary['duration_s']} s",
        f"Scores: mean {summary['score']['mean']}, min {summary['score']['min']}, max {summary['score']['max']}",
        "Bands: " + ", ".join(f"{band} {n}" for band, n in summary["bands"].items()),
    ]
    if summary["failures"]:
        lines.append("")
        lines.append(f"Failures ({summary['failure_count']}, first {len(summary['failures'])} shown):")
        lines.extend(f"  {f['task_id']} {f['company_id']}: {f['error'][:200]}" for f in summary["failures"][:20])
    lines += [
        "",
        f"Report (link valid {link_expiry_s // 3600} h): {report_url}",
        f"Files: {summary['report_uri']}",
        f"Later: microprocess report {summary['run_id']} --target aws",
    ]
    return subject, "\n".join(lines) + "\n"


def finalize(
    ledger: Ledger,
    s3: Any,
    ses: Any,
    bucket: str,
    job: JobDeclaration,
    req: ReduceRequest,
    *,
    sender: str,
    part_bytes: int,
    link_expiry_s: int,
) -> dict[str, Any]:
    """Join the parts into the report, write the summary, page and failures, mail the report once.

    Returns `{"report_uri", "summary", "email"}`; `email` is `sent`, `already sent` or
    `skipped: <why>`. A failed send gives the email claim back and raises a 502 so the
    forwarder retries the finalize.
    """
    run = _require_reducible_run(ledger, job, req)
    layout = ReportLayout(bucket, job.name, run.run_id)
    try:
        progress = ledger.progress(run.run_id)
    except LedgerError as exc:
        raise ServiceError(503, "ledger_unavailable", str(exc)) from None
    shards = range(run.shard_count)
    totals = ReportStats()
    reported: TaskPositions | None = None
    if run.stopped_early_at:
        # A stopped run's batches in flight at the stop may have recorded tasks after their shard's
        # part was built: build every part again now, and list as not attempted the tasks this
        # one reading did not find, so that rows + not-attempted rows = expected exactly.
        reported = TaskPositions(run)
        for shard in shards:
            part = _build_part(ledger, s3, job, layout, shard, part_bytes=part_bytes, seen=reported)
            totals.merge(ReportStats.from_dict(part))
    else:
        for shard in shards:
            totals.merge(_part_stats(ledger, s3, job, layout, shard, part_bytes=part_bytes))
    report = _join(s3, layout, [layout.part_csv(k) for k in shards], layout.report_csv, REPORT_COLUMNS, part_bytes)
    _join(s3, layout, [layout.part_failures(k) for k in shards], layout.failures_csv, FAILURE_COLUMNS, part_bytes)

    summary = build_summary(
        run, progress.expected, progress.succeeded, progress.failed, totals, job, layout, utc_now_iso()
    )
    summary["report_csv_bytes"] = report.bytes_written
    summary["report_csv_parts"] = report.part_count
    if reported is not None:
        summary["not_attempted"] = write_not_attempted(
            s3, layout, job, ledger, reported.missing(), part_bytes=part_bytes
        )
    s3.put_object(
        Bucket=bucket,
        Key=layout.summary_json,
        Body=json.dumps(summary, indent=1).encode(),
        ContentType="application/json",
    )
    links = {
        label: presign(s3, bucket, key, link_expiry_s)
        for label, key in (
            ("report.csv", layout.report_csv),
            ("failures.csv", layout.failures_csv),
            ("summary.json", layout.summary_json),
        )
    }
    page = render_report_page(summary, links)
    s3.put_object(Bucket=bucket, Key=layout.report_html, Body=page.encode(), ContentType="text/html; charset=utf-8")

    email = _send_report_email_once(
        ledger, ses, summary, presign(s3, bucket, layout.report_html, link_expiry_s), job, sender, link_expiry_s
    )
    log.info("finalized run %s: %s, email %s", run.run_id, summary["status"], email)
    return {"report_uri": layout.uri, "summary": summary, "email": email}


def _send_report_email_once(
    ledger: Ledger,
    ses: Any,
    summary: dict[str, Any],
    report_url: str,
    job: JobDeclaration,
    sender: str,
    link_expiry_s: int,
) -> str:
    if not job.recipients:
        return f"skipped: job '{job.name}' declares no recipients"
    if not sender:
        return "skipped: SES_SENDER is not set"
    subject, body = email_text(summary, report_url, link_expiry_s)

    def send() -> None:  # a failure gives the claim back (notify_once) and the finalize is retried
        try:
            send_email(ses, sender=sender, recipients=job.recipients, subject=subject, body=body)
        except Exception as exc:
            raise ServiceError(
                502, "email_failed", f"the report is written but the email failed ({exc}); the finalize will be retried"
            ) from exc

    try:
        sent = notify_once(ledger, summary["run_id"], send)
    except NoticesInFlight:
        # another finalize is sending it: retried until it records it (or its lease runs out)
        raise ServiceError(503, "email_in_flight", "another finalize is sending the email; retry later") from None
    return "sent" if sent else "already sent"
