"""The report email: the summary as text and a presigned link to the report page, sent
with SES through an injected client."""

from __future__ import annotations

from typing import Any

from microprocess.declarations import JobDeclaration

#: Failures quoted in the email body (the page and failures.csv list more).
FAILURES_IN_EMAIL = 10


def email_text(summary: dict[str, Any], report_url: str, link_expiry_s: int) -> tuple[str, str]:
    """Subject and plain-text body of the report email for a published summary."""
    subject = f"[microprocess] {summary['job']} run {summary['run_id']}: {summary['status']}"
    durations = summary["durations"]
    lines = [
        f"Job: {summary['job']}",
        f"Run: {summary['run_id']}",
        f"Status: {summary['status']}",
        f"Tasks: {summary['expected']} expected, {summary['succeeded']} succeeded, {summary['failed']} failed "
        f"({summary['failed_pct']}%, tolerated {summary['tolerated_failure_pct']}%)",
        f"Started: {durations['started_at']}  Finished: {summary.get('finished_at')}  "
        f"Duration: {durations['total_s']} s  Throughput: {summary['throughput']['tasks_per_s']} tasks/s",
    ]
    if summary.get("error"):
        lines.append(f"Error: {summary['error']}")
    histogram = summary.get("histogram")
    if histogram and histogram["bins"]:
        lines += ["", f"{histogram['field']}: mean {histogram['mean']}, min {histogram['min']}, max {histogram['max']}"]
        top = max(b["count"] for b in histogram["bins"]) or 1
        lines += [
            f"  {b['from']:>10} .. {b['to']:<10} {'#' * round(30 * b['count'] / top)} {b['count']}"
            for b in histogram["bins"]
        ]
    failures = summary["failures"][:FAILURES_IN_EMAIL]
    if failures:
        lines += ["", f"Failures ({summary['failure_count']}, first {len(failures)} shown):"]
        lines += [f"  {f['task_id']} {f.get('item_id') or ''}: {f['error'][:200]}" for f in failures]
    lines += [
        "",
        f"Report (link valid {max(link_expiry_s // 3600, 1)} h): {report_url}",
        f"Files: {summary['report_uri']}",
    ]
    return subject, "\n".join(lines) + "\n"


def send_report_email(
    ses: Any, *, sender: str, job: JobDeclaration, summary: dict[str, Any], report_url: str, link_expiry_s: int
) -> None:
    """Send the report email to the job's recipients (raises what SES raises)."""
    subject, body = email_text(summary, report_url, link_expiry_s)
    ses.send_email(
        Source=sender,
        Destination={"ToAddresses": list(job.recipients)},
        Message={
            "Subject": {"Data": subject, "Charset": "UTF-8"},
            "Body": {"Text": {"Data": body, "Charset": "UTF-8"}},
        },
    )
