"""The splitter: reads a job's items in pages and enqueues one task per item.

Crash-safe (ARCHITECTURE §3.6): each page is *sent first, then accounted* in one
conditional write (cursor + expected count). Task ids are the item's position in
its segment (`<segment>-<seq>`), so a splitter resumed from the saved cursor
re-sends the same ids: duplicates the ledger absorbs. When the Lambda's remaining
time falls under a margin it saves nothing more (the cursor is already saved) and
invokes itself asynchronously to continue.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from microprocess.chaos.faults import FaultInjector
from microprocess.control.lookup import index_page
from microprocess.control.stop import stop_if_hopeless
from microprocess.declarations import JobDeclaration, JobRegistry
from microprocess.ledger import CURSOR_DONE, Ledger, RunNotActive, RunStatus
from microprocess.pipeline.envelope import EnvelopeTooLarge, TaskEnvelope, canonical_json, shard_of
from microprocess.pipeline.fanin import enqueue_reduce_parts
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.settings import RuntimeSettings
from microprocess.pipeline.sources import FailedTasksSource, InlineSource, Source, source_for

MetricsEmitter = Callable[..., None]  # (name, value, job, *, run_id=None)


class StartEventError(ValueError):
    """A start event the splitter cannot act on; the message names the field and the fix."""


@dataclass(frozen=True)
class StartRequest:
    job: str
    run_id: str
    items: list[Any] | None = None
    retry_of: str | None = None
    continuation: int = 0
    segment: int | None = None  # one parallel-scan segment to split; None: all of them


_RUN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _compact(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def scheduled_run_id(job: str, event_time: str) -> str:
    """The run id of a scheduled start: the job and the event's time, so a doubled
    delivery of the same schedule tick starts the same run."""
    try:
        ts = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
    except ValueError:
        raise StartEventError(f"scheduled event 'time' {event_time!r} is not an ISO 8601 timestamp") from None
    return f"{job}-{_compact(ts)}"


def new_run_id(job: str, now: datetime | None = None) -> str:
    """A fresh run id for a manual start: `<job>-<UTC time>-<4 hex>`."""
    return f"{job}-{_compact(now or datetime.now(UTC))}-{secrets.token_hex(2)}"


def parse_start_event(event: Any) -> StartRequest:
    """A scheduled EventBridge event (the rule's input names the job and carries the
    event time), or a manual start `{"job", "run_id"?, "items"?, "retry_of"?}`."""
    if not isinstance(event, dict):
        raise StartEventError(f"start event must be a JSON object, got {type(event).__name__}")
    raw_detail = event.get("detail")
    detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
    job = event.get("job") or detail.get("job")
    if not isinstance(job, str) or not job:
        raise StartEventError('start event has no \'job\': pass {"job": "<declared job name>"}')
    items = event.get("items")
    if items is not None and not isinstance(items, list):
        raise StartEventError("start event 'items' must be a list of items")
    run_id = event.get("run_id")
    if run_id is None:
        if event.get("source") in ("schedule", "aws.events") or "time" in event:
            if not isinstance(event.get("time"), str):
                raise StartEventError("scheduled start event has no 'time' to derive the run id from")
            run_id = scheduled_run_id(job, event["time"])
        else:
            run_id = new_run_id(job)
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise StartEventError(f"run_id {run_id!r} must be 1-128 chars of letters, digits and . _ : -")
    retry_of = event.get("retry_of")
    if retry_of is not None and not isinstance(retry_of, str):
        raise StartEventError("start event 'retry_of' must be a run id")
    segment = event.get("segment")
    if segment is not None and (not isinstance(segment, int) or segment < 0):
        raise StartEventError(f"start event 'segment' must be a segment number, got {segment!r}")
    return StartRequest(job, run_id, items, retry_of, int(event.get("continuation", 0)), segment)


class Splitter:
    """Splits one run. Ports are injected; `continue_with` invokes this function again
    asynchronously with the given event."""

    def __init__(
        self,
        *,
        settings: RuntimeSettings,
        jobs: JobRegistry,
        ledger: Ledger,
        s3: Any,
        dynamodb: Any,
        continue_with: Callable[[dict[str, Any]], None],
        faults: FaultInjector | None = None,
        emit: MetricsEmitter | None = None,
        sender_for: Callable[[str], QueueSender] | None = None,
        sender: QueueSender | None = None,
        reduce_sender: QueueSender | None = None,
    ) -> None:
        if (sender_for is None) == (sender is None):
            raise ValueError("give the Splitter exactly one of sender_for (each job's task queue) and sender")
        self.settings = settings
        self.jobs = jobs
        self.ledger = ledger
        #: The sender of a job's tasks, by job name (its own task queue).
        self.sender_for: Callable[[str], QueueSender] = sender_for or (lambda _job: sender)  # type: ignore[assignment,return-value]
        #: Where reduce parts go (the reduce queue); the task sender when not given.
        self.reduce_sender: QueueSender = reduce_sender or sender  # type: ignore[assignment]
        self.s3 = s3
        self.dynamodb = dynamodb
        self.continue_with = continue_with
        self.faults = faults
        self.emit = emit or (lambda name, value, job, **_: None)

    def handle(self, event: Any, remaining_ms: Callable[[], int]) -> dict[str, Any]:
        req = parse_start_event(event)
        job = self.jobs.get(req.job)
        source = self._source(job, req)
        run, created = self.ledger.create_run(req.run_id, job, segments=source.segments, source_run=req.retry_of)
        if created:
            self.emit("RunsStarted", 1, job.name)
        continued = False
        if run.status is RunStatus.SPLITTING and req.segment is None and source.segments > 1:
            # Parallel scan: one invocation per segment still to read, all at once.
            for seg in sorted(run.cursors, key=int):
                if run.cursors[seg] != CURSOR_DONE:
                    self.continue_with({**event, "run_id": req.run_id, "segment": int(seg)})
            continued = True
        elif run.status is RunStatus.SPLITTING:
            cursors = run.cursors if req.segment is None else {str(req.segment): run.cursors[str(req.segment)]}
            try:
                continued = self._split(job, req, source, cursors, run.seg_counts, remaining_ms, event)
            except RunNotActive:
                continued = False
            now = self.ledger.require_run(req.run_id)
            # The last segment to finish (every cursor at its end) finishes the split.
            if (
                not continued
                and now.status is RunStatus.SPLITTING
                and all(c == CURSOR_DONE for c in now.cursors.values())
            ):
                self._finish(job, req.run_id)
        elif run.status is RunStatus.RUNNING:
            self._finish(job, req.run_id)  # a split that crashed after marking itself done
        final = self.ledger.require_run(req.run_id)
        return {"run_id": req.run_id, "status": str(final.status), "expected": final.expected, "continued": continued}

    def _finish(self, job: JobDeclaration, run_id: str) -> None:
        if self.ledger.finish_split(run_id):
            self.emit("ReducesClaimed", 1, job.name, run_id=run_id)
            enqueue_reduce_parts(self.reduce_sender, job, run_id, self.ledger.require_run(run_id).shard_count)
        else:  # the expected total is final now: failures so far may already be too many
            stop_if_hopeless(self.ledger, run_id, job, emit=self.emit, reduce_sender=self.reduce_sender)

    def _source(self, job: JobDeclaration, req: StartRequest) -> Source:
        if req.items is not None:
            return InlineSource(req.items)
        if req.retry_of:
            original = self.ledger.require_run(req.retry_of)
            if original.job != job.name:
                raise StartEventError(f"run {req.retry_of} belongs to job '{original.job}', not '{job.name}'")
            return FailedTasksSource(ledger=self.ledger, run_id=req.retry_of)
        return source_for(
            job.source, dynamodb=self.dynamodb, s3=self.s3, source_tables=self.settings.source_table_names
        )

    def _split(
        self,
        job: JobDeclaration,
        req: StartRequest,
        source: Source,
        cursors: dict[str, str],
        seg_counts: dict[str, int],
        remaining_ms: Callable[[], int],
        event: dict[str, Any],
    ) -> bool:
        """Send and account pages until every segment is read. True if it handed over to a continuation."""
        for seg in sorted(cursors, key=int):
            cursor, seq = cursors[seg], seg_counts.get(seg, 0)
            while cursor != CURSOR_DONE:
                if remaining_ms() < self.settings.splitter_margin_ms:
                    self.continue_with({**event, "run_id": req.run_id, "continuation": req.continuation + 1})
                    return True
                page = source.read_page(int(seg), cursor, job.source.page_size)
                bodies = [
                    self._body(job, req.run_id, f"{seg}-{seq + i:09d}", item) for i, item in enumerate(page.items)
                ]
                indexing = (  # item ids indexed alongside the send, before the page is accounted
                    index_page(self.ledger, job.item_id_field, req.run_id, seg, seq, page.items)
                    if job.item_index
                    else None
                )
                self.sender_for(job.name).send(bodies)
                if indexing is not None:
                    indexing.result()
                if self.faults:
                    self.faults.maybe_crash("splitter_after_send")
                if self.ledger.account_page(
                    req.run_id, segment=seg, cursor_from=cursor, cursor_to=page.next_cursor, count=len(bodies)
                ):
                    cursor, seq = page.next_cursor, seq + len(bodies)
                    self.emit("TasksEnqueued", len(bodies), job.name)
                else:  # another splitter moved this segment on: continue from where it is
                    run = self.ledger.require_run(req.run_id)
                    cursor, seq = run.cursors[seg], run.seg_counts[seg]
        return False

    def _body(self, job: JobDeclaration, run_id: str, task_id: str, item: Any) -> str:
        shard = shard_of(task_id, job.shard_count)
        if isinstance(item, dict) and set(item) == {"__item_ref"} and item["__item_ref"]:
            return TaskEnvelope(
                job=job.name, run_id=run_id, task_id=task_id, shard=shard, item_ref=item["__item_ref"]
            ).to_json()
        env = TaskEnvelope(job=job.name, run_id=run_id, task_id=task_id, shard=shard, item=item)
        try:
            return env.to_json(limit=self.settings.claim_check_bytes)
        except EnvelopeTooLarge:
            return self._claim_check(env, item)

    def _claim_check(self, env: TaskEnvelope, item: Any) -> str:
        """Put an oversized item in S3 (deterministic key) and send a reference to it."""
        if not self.settings.reports_bucket:
            raise EnvelopeTooLarge(
                f"task {env.task_id}: item is over {self.settings.claim_check_bytes} bytes and no "
                "REPORTS_BUCKET is set for the claim check"
            )
        key = f"claims/{env.job}/{env.run_id}/{env.task_id}.json"
        self.s3.put_object(Bucket=self.settings.reports_bucket, Key=key, Body=canonical_json(item).encode())
        ref = f"s3://{self.settings.reports_bucket}/{key}"
        return TaskEnvelope(
            job=env.job, run_id=env.run_id, task_id=env.task_id, shard=env.shard, item_ref=ref
        ).to_json()
