"""The report email: the summary as text and a presigned link to the report page, sent
with SES through an injected client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger

#: Failures quoted in the email body (the page and failures.csv list more).
FAILURES_IN_EMAIL = 10

#: A claim on a run's notices (email, completion callback) older than this, never recorded as
#: sent, is taken over by the next finalize: its sender died between the claim and the record.
EMAIL_LEASE_S = 300.0


class NoticesInFlight(RuntimeError):
    """Another finalize holds the claim on the run's notices and has not recorded them yet."""


def notify_once(ledger: Ledger, run_id: str, send: Callable[[], None]) -> bool:
    """Run `send` (the run's email, its completion callback) once per run, never zero times:
    under the ledger's notices claim, a lease of `EMAIL_LEASE_S`. False when they were already
    recorded as sent. Raises `NoticesInFlight` while another finalize holds the claim (retry
    later). A `send` that raises gives the claim back and raises, so the finalize is retried; a
    finalize that dies between the send and the record sends them again after the lease."""
    if ledger.email_sent(run_id):
        return False
    if not ledger.claim_email(run_id, lease_s=EMAIL_LEASE_S):
        raise NoticesInFlight(f"run {run_id}: another finalize is sending the notices; retry later")
    try:
        send()
    except Exception:
        ledger.release_email(run_id)
        raise
    ledger.record_email_sent(run_id)
    return True


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
    send_email(ses, sender=sender, recipients=job.recipients, subject=subject, body=body)


def send_email(ses: Any, *, sender: str, recipients: tuple[str, ...] | list[str], subject: str, body: str) -> None:
    """One plain-text email through SES (raises what SES raises)."""
    ses.send_email(
        Source=sender,
        Destination={"ToAddresses": list(recipients)},
        Message={
            "Subject": {"Data": subject, "Charset": "UTF-8"},
            "Body": {"Text": {"Data": body, "Charset": "UTF-8"}},
        },
    )
