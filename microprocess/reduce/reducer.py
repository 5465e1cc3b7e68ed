"""The platform's built-in reduce, run in the reducer function (`reduce = "platform"`).

For a platform-reduce job the forwarder consuming the reduce queue hands reduce-part and
finalize messages to `PlatformReducer.handle` instead of pushing them to the service; the
exactly-once claims stay the forwarder's and the ledger's (`record_reduce_part`,
`claim_finalize`, `finish_run`, and the notices at least once: `email_sent`, `claim_email` with a
lease, `record_email_sent`):

* reduce part k: stream ledger shard k into its part files (`parts.build_part`).
* finalize, run still REDUCING: join the parts into the report (`finalize.join_report`),
  then end the run with `Ledger.finish_run`, which decides SUCCEEDED or FAILED against the
  job's tolerated failure percentage and stores the summary and report URI.
* finalize, run ended with a report (also a finalize delivered again after a crash):
  publish summary.json and report.html from the stored summary, then the run's notices
  once: the completion callback (if the job declares `completion_path`) is enqueued and
  the email (if it has `recipients`) is sent, under the run's one email claim.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from microprocess.control.lookup import TaskPositions
from microprocess.control.lookup import not_attempted as not_attempted_ids
from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger, RunRecord, RunStatus, TaskRecord, utc_now_iso
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind
from microprocess.pipeline.fanin import enqueue_completion
from microprocess.pipeline.queue import QueueSender
from microprocess.reduce.finalize import join_report, merged, part_stats, presign, publish, read_lines
from microprocess.reduce.layout import ReportLayout
from microprocess.reduce.mail import NoticesInFlight, notify_once, send_report_email
from microprocess.reduce.not_attempted import write_not_attempted
from microprocess.reduce.parts import build_part
from microprocess.reduce.s3stream import S3_MIN_PART_BYTES
from microprocess.reduce.summary import PartStats, build_summary

log = logging.getLogger(__name__)

#: Validity of the presigned links in the page and the email, seconds (SigV4 allows at most
#: 7 days; a link signed with a role's temporary credentials ends with them).
DEFAULT_LINK_EXPIRY_S = 7 * 24 * 3600
_ENDED = (RunStatus.SUCCEEDED, RunStatus.FAILED)
#: Reads a stopped run's shards in parallel (its late completions).
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reduce-late")


class ReduceRefused(ValueError):
    """A reduce message that cannot be reduced (wrong kind, job or shard); the message says why."""


def completion_body(run: RunRecord) -> dict[str, Any]:
    """What the service's `completion_path` receives."""
    summary = run.summary
    return {
        "run_id": run.run_id,
        "job": run.job,
        "status": str(run.status),
        "expected": summary.get("expected", run.expected),
        "succeeded": summary.get("succeeded"),
        "failed": summary.get("failed"),
        "report_uri": run.report_uri,
    }


class PlatformReducer:
    """Builds, publishes and mails a run's report in-process.

    Args:
        ledger: the run ledger.
        s3: a boto3 S3 client; `bucket` the reports bucket.
        ses: a boto3 SES client (the email).
        completion_sender: where completion callbacks are enqueued (the reduce queue).
        email_sender: the `Source` address of the report email (`SES_SENDER`); empty: no email.
        part_bytes: multipart part size of the report files, bytes (S3: >= 5 MiB).
        link_expiry_s: validity of the presigned links, seconds.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        s3: Any,
        ses: Any,
        bucket: str,
        completion_sender: QueueSender,
        email_sender: str = "",
        part_bytes: int = S3_MIN_PART_BYTES,
        link_expiry_s: int = DEFAULT_LINK_EXPIRY_S,
    ) -> None:
        if not bucket:
            raise ValueError("the platform reduce needs the reports bucket: set REPORTS_BUCKET")
        if not 1 <= link_expiry_s <= 7 * 24 * 3600:
            raise ValueError(f"link_expiry_s must be 1..604800 s (SigV4's limit), got {link_expiry_s}")
        self.ledger, self.s3, self.ses, self.bucket = ledger, s3, ses, bucket
        self.completion_sender = completion_sender
        self.email_sender = email_sender
        self.part_bytes = part_bytes
        self.link_expiry_s = link_expiry_s

    def handle(self, env: TaskEnvelope, job: JobDeclaration) -> dict[str, Any]:
        """Reduce one reduce-part or finalize message; the answer is what a service would return."""
        if env.job != job.name:
            raise ReduceRefused(f"message of job '{env.job}' given with job '{job.name}'")
        if env.kind is TaskKind.REDUCE_PART:
            return self.reduce_part(job, env.run_id, env.shard)
        if env.kind is TaskKind.FINALIZE:
            return self.finalize(job, env.run_id)
        raise ReduceRefused(f"the platform reduce takes reduce-part and finalize messages, not {env.kind}")

    def reduce_part(self, job: JobDeclaration, run_id: str, shard: int) -> dict[str, Any]:
        run = self.ledger.require_run(run_id)
        if not 0 <= shard < run.shard_count:
            raise ReduceRefused(f"run {run_id} has shards 0..{run.shard_count - 1}; got shard {shard}")
        layout = ReportLayout(self.bucket, job.name, run_id)
        keep_ids = bool(run.stopped_early_at)  # its finalize lists the tasks no part holds
        stats = build_part(self.ledger, self.s3, layout, job, shard, part_bytes=self.part_bytes, keep_ids=keep_ids)
        return {"run_id": run_id, "shard": shard, "rows": stats.rows, "part": layout.s3_uri(layout.part_rows(shard))}

    def finalize(self, job: JobDeclaration, run_id: str) -> dict[str, Any]:
        """Join, end the run, publish, notify once. `ended` is the status if this call ended the run."""
        run = self.ledger.require_run(run_id)
        layout = ReportLayout(self.bucket, job.name, run_id)
        ended: RunStatus | None = None
        if run.status is RunStatus.REDUCING:
            ended = self._build(job, run, layout)
            run = self.ledger.require_run(run_id)
        if run.status not in _ENDED or not run.report_uri:
            log.warning("run %s is %s without a report: nothing to publish", run_id, run.status)
            return {"report_uri": None, "status": str(run.status), "ended": None, "notices": "skipped: no report"}
        summary = publish(self.s3, layout, run, link_expiry_s=self.link_expiry_s)
        try:
            notices = self._notify_once(job, run, summary, layout)
        except NoticesInFlight:
            if ended is None:
                raise  # retried until the claimant records the notices (or its lease runs out)
            # This call ended the run (its outcome must be reported); the finalize that holds the
            # claim sends the notices, and its own message is redelivered if it dies before that.
            notices = "being sent by another finalize"
        log.info("run %s report published (%s); notices: %s", run_id, run.status, notices)
        return {
            "report_uri": run.report_uri,
            "status": str(run.status),
            "ended": str(ended) if ended else None,
            "notices": notices,
        }

    def _build(self, job: JobDeclaration, run: RunRecord, layout: ReportLayout) -> RunStatus | None:
        stopped = bool(run.stopped_early_at)
        parts = part_stats(
            self.ledger, self.s3, layout, job, run.shard_count, part_bytes=self.part_bytes, keep_ids=stopped
        )
        reported: TaskPositions | None = None
        if stopped:
            reported = self._reported(run, layout)
            parts.append(self._late_part(job, run, layout, reported))
        joined = join_report(self.s3, layout, job, parts, part_bytes=self.part_bytes)
        stats = merged(parts)
        progress = self.ledger.progress(run.run_id)
        if reported is not None:
            missing: Iterable[str] | None = reported.missing()
        elif progress.pending:  # counters behind their records (the sweeper repairs them)
            missing = not_attempted_ids(self.ledger, run.run_id)
        else:
            missing = None
        not_attempted = 0
        if missing is not None:
            not_attempted = write_not_attempted(self.s3, layout, job, self.ledger, missing, part_bytes=self.part_bytes)
        files = {
            name: layout.s3_uri(key)
            for name, key in (
                ("report_csv", layout.report_csv),
                ("report_jsonl", layout.report_jsonl),
                ("failures_csv", layout.failures_csv),
                ("summary_json", layout.summary_json),
                ("report_html", layout.report_html),
                *((("not_attempted_csv", layout.not_attempted_csv),) if not_attempted else ()),
            )
        }
        summary = build_summary(
            run=run,
            progress=progress,
            stats=stats,
            histogram=joined.histogram,
            histogram_field=job.histogram_field,
            tolerated_failure_pct=job.tolerated_failure_pct,
            report_uri=layout.uri,
            files=files,
            reduced_at=utc_now_iso(),
        )
        summary["not_attempted"] = not_attempted
        summary["report_csv_bytes"] = joined.csv_bytes
        summary["report_jsonl_bytes"] = joined.jsonl_bytes
        # The ledger makes the one failure-tolerance decision and records it with the report.
        return self.ledger.finish_run(
            run.run_id, tolerated_failure_pct=job.tolerated_failure_pct, report_uri=layout.uri, summary=summary
        )

    def _reported(self, run: RunRecord, layout: ReportLayout) -> TaskPositions:
        """The task ids the parts of a stopped run hold (from their id files)."""
        reported = TaskPositions(run)
        for shard in range(run.shard_count):
            for task_id in read_lines(self.s3, self.bucket, layout.part_ids(shard)):
                reported.add(task_id)
        return reported

    def _late_part(
        self, job: JobDeclaration, run: RunRecord, layout: ReportLayout, reported: TaskPositions
    ) -> PartStats:
        """Part `shard_count` of a stopped run: the tasks recorded after their shard's part was
        built (batches still in flight at the stop). Reads the run's task records once, as the
        not-attempted listing did; the rows it adds join `reported`, so that the report and
        not_attempted.csv, both from this one reading, hold every task exactly once."""

        def late(shard: int) -> list[TaskRecord]:
            return [
                r
                for r in self.ledger.iter_results(run.run_id, shard)
                if reported.position(r.task_id) is not None and r.task_id not in reported
            ]

        records = [r for shard_records in _pool.map(late, range(run.shard_count)) for r in shard_records]
        for record in records:
            reported.add(record.task_id)
        if records:
            log.info("run %s: %d tasks recorded after their part was built, reported too", run.run_id, len(records))
        return build_part(
            self.ledger,
            self.s3,
            layout,
            job,
            run.shard_count,
            part_bytes=self.part_bytes,
            records=records,
        )

    def _notify_once(self, job: JobDeclaration, run: RunRecord, summary: dict[str, Any], layout: ReportLayout) -> str:
        """Enqueue the completion callback and send the email, once per run (the email claim
        covers both); a failure gives the claim back and raises, so the finalize is retried."""
        email = bool(job.recipients)
        if email and not self.email_sender:
            log.warning("run %s: job '%s' has recipients but SES_SENDER is not set: no email", run.run_id, job.name)
            email = False
        completion = bool(job.completion_path)
        if not (email or completion):
            return "none declared"

        def send() -> None:
            if completion:
                enqueue_completion(self.completion_sender, job, run.run_id, completion_body(run))
            if email:
                url = presign(self.s3, self.bucket, layout.report_html, self.link_expiry_s)
                send_report_email(
                    self.ses,
                    sender=self.email_sender,
                    job=job,
                    summary=summary,
                    report_url=url,
                    link_expiry_s=self.link_expiry_s,
                )

        if not notify_once(self.ledger, run.run_id, send):
            return "already sent"
        return ", ".join(n for n, on in (("completion enqueued", completion), ("email sent", email)) if on)
