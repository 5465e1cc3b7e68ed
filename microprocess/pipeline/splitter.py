"""The splitter: reads a run's items in pages and enqueues one task per item.

Crash-safe (ARCHITECTURE §3.6): each page is *sent first, then accounted* in one
conditional write (cursor + expected count). Task ids are the item's position in
its segment (`<segment>-<seq>`), so a splitter resumed from the saved cursor
re-sends the same ids: duplicates the ledger absorbs. A page read from a source that
can change (a table, an S3 object, a function) is kept in S3 before it is sent
(`splits/<run>/<segment>/<cursor hash>.json`, written once), so that a re-sent page
carries the same items under the same ids even if the source changed in between.
When the Lambda's remaining time falls under a margin it saves nothing more (the
cursor is already saved) and invokes itself asynchronously to continue.

A run keeps its own settings (ARCHITECTURE §3.9): what it reads (the declared source,
a `source_uri` override, an `items_uri` manifest, inline `items`, or the failures of
`retry_of`), its page size, segments and shard count are recorded on the run when it is
created, and every later invocation (a continuation, a restart by the sweeper, after a
deploy) reads the run's record, never the job's current declaration.

A source that cannot be read for good (a missing bucket, object or table, access denied,
a bad row) stops the run with the reason (`control.stop.stop_run`, `source_failed`);
transient errors are retried, and stop it after `MAX_SPLIT_ERRORS`. Its reduce then reports
what was sent, ends it FAILED and sends its email and completion callback, like any run.
An item that cannot be sent (a `null` line, an item without the job's `item_id_field`, an item
the envelope refuses) becomes a FAILED task with its reason (`page_bodies`); the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from microprocess.chaos.faults import FaultInjector
from microprocess.control.lookup import index_page
from microprocess.control.stop import enqueue_stopped_reduce, stop_if_hopeless, stop_run
from microprocess.declarations import JobDeclaration, JobRegistry, SourceKind, resolve_source_uri
from microprocess.declarations.run_keys import run_id_refusal
from microprocess.ledger import CURSOR_DONE, Ledger, RunNotActive, RunRecord, RunStatus
from microprocess.ledger.retries import record_retry
from microprocess.pipeline.backpressure import QueueGate
from microprocess.pipeline.fanin import enqueue_reduce_parts
from microprocess.pipeline.page_bodies import PageBodies
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.retry_source import NotAttemptedSource, RetrySource, rereads_alike
from microprocess.pipeline.settings import RuntimeSettings
from microprocess.pipeline.sources import (
    CallableSource,
    DynamoDBSource,
    FailedTasksSource,
    InlineSource,
    Page,
    S3ManifestSource,
    Source,
    SourceError,
    is_permanent,
)
from microprocess.pipeline.start import (
    StartEventError,
    StartRequest,
    manifest_format,
    parse_start_event,
    run_date,
    source_uri_refusal,
)
from microprocess.pipeline.tenants import group_id, tenant_count

log = logging.getLogger(__name__)
MetricsEmitter = Callable[..., None]  # (name, value, job, *, run_id=None)
#: Where pages read from a source that can change are kept (REPORTS_BUCKET), so re-sent pages match.
SPLITS_PREFIX = "splits/"
#: Inline items are kept on one ledger item (DynamoDB: 400 KB); larger lists go by `items_uri`.
MAX_INLINE_ITEMS_BYTES = 350_000
#: Transient source errors a run may have before it ends FAILED (each is one splitter attempt).
MAX_SPLIT_ERRORS = 5


class Splitter:
    """Splits one run. Ports are injected; `continue_with` invokes this function again
    asynchronously with the given event. `run_id_rule(job, run_id)` says why a new run may not
    take that id (default: it must start with `<job>-`, the prefix its ledger keys are granted by)."""

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
        run_id_rule: Callable[[str, str], str | None] | None = run_id_refusal,
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
        self.run_id_rule = run_id_rule
        self.page_bodies = PageBodies(settings=settings, s3=s3)

    def handle(self, event: Any, remaining_ms: Callable[[], int]) -> dict[str, Any]:
        req = parse_start_event(event)
        job = self.jobs.get(req.job)
        run = self.ledger.get_run(req.run_id)
        if run is None:
            # checked on a new run only: a run started before the rule goes on
            refusal = self.run_id_rule(job.name, req.run_id) if self.run_id_rule else None
            if refusal:
                raise StartEventError(refusal)
            record = self.source_record(job, req)
            if req.retry_of:  # linked first: a crash before the run exists leaves a link retries_of skips
                record_retry(self.ledger, req.retry_of, req.run_id, not_attempted=req.include_not_attempted)
            run, created = self.ledger.create_run(
                req.run_id,
                job,
                segments=int(record["segments"]),
                source_run=req.retry_of,
                source=record,
                params=req.params,
                inline_items=req.items if record["kind"] == SourceKind.INLINE else None,
                tenants=tenant_count(req.priority, job.priority_weight),
            )
            if created:
                self.emit("RunsStarted", 1, job.name)
        elif run.job != job.name:
            raise StartEventError(f"run {req.run_id} belongs to job '{run.job}', not '{job.name}'")
        continued = False
        if run.status is RunStatus.SPLITTING:
            try:
                continued = self._split_run(job, run, req, remaining_ms, event)
            except SourceReadError as exc:
                if not self._source_failed(job, run, exc.cause):
                    raise exc.cause from None
        elif run.status is RunStatus.RUNNING:
            self._finish(job, run.run_id)  # a split that crashed after marking itself done
        final = self.ledger.require_run(req.run_id)
        return {"run_id": req.run_id, "status": str(final.status), "expected": final.expected, "continued": continued}

    def _split_run(
        self,
        job: JobDeclaration,
        run: RunRecord,
        req: StartRequest,
        remaining_ms: Callable[[], int],
        event: dict[str, Any],
    ) -> bool:
        """Split what is left of a SPLITTING run; True if it handed over to other invocations."""
        pending = sorted((s for s, c in run.cursors.items() if c != CURSOR_DONE), key=int)
        if pending and req.segment is None and len(run.cursors) > 1:
            # Parallel scan: one invocation per segment still to read, all at once.
            for seg in pending:
                self.continue_with({**event, "run_id": run.run_id, "segment": int(seg)})
            return True
        continued = False
        if pending:
            try:
                source = self.open_source(run, job)
            except Exception as exc:
                raise SourceReadError(exc) from exc
            segments = pending if req.segment is None else [s for s in pending if s == str(req.segment)]
            try:
                continued = self._split(job, run, req, source, segments, remaining_ms, event)
            except RunNotActive:
                return False
        now = self.ledger.require_run(run.run_id)
        # The last segment to finish (every cursor at its end) finishes the split; so does a
        # restart of a split whose pages are all accounted but which was never marked done.
        if not continued and now.status is RunStatus.SPLITTING and all(c == CURSOR_DONE for c in now.cursors.values()):
            self._finish(job, run.run_id)
        return continued

    def _source_failed(self, job: JobDeclaration, run: RunRecord, exc: Exception) -> bool:
        """End the run FAILED if its source cannot be read for good (or keeps failing).
        Returns False to let a transient error propagate (the invocation is retried)."""
        where = describe_source(run.source or self.source_record(job, StartRequest(job.name, run.run_id)))
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SourceError) else str(exc)
        if not is_permanent(exc):
            count = self.ledger.note_split_error(run.run_id, reason)
            if count < MAX_SPLIT_ERRORS:
                log.warning(
                    "run %s: source %s failed (%d of %d): %s", run.run_id, where, count, MAX_SPLIT_ERRORS, reason
                )
                return False
            reason = f"{reason} ({count} attempts)"
        error = (
            f"the source {where} cannot be read: {reason}. Fix: check that it exists and that the splitter "
            "may read it (bucket, key or table name, IAM), and that every row is valid; then start a new run"
        )
        log.error("run %s failed: %s", run.run_id, error)
        # Stopped, not ended here: its reduce reports what was sent (nothing, for a missing
        # source), ends it FAILED and sends its email and completion callback, once, like any run.
        # A crash before the enqueue leaves a claimed reduce, which the sweeper re-enqueues.
        if stop_run(self.ledger, run.run_id, error, source_failed=True):
            self.emit("ReducesClaimed", 1, job.name, run_id=run.run_id)
            enqueue_stopped_reduce(self.reduce_sender, self.ledger, job, run.run_id)
        return True

    def _finish(self, job: JobDeclaration, run_id: str) -> None:
        if self.ledger.finish_split(run_id):
            self.emit("ReducesClaimed", 1, job.name, run_id=run_id)
            enqueue_reduce_parts(self.reduce_sender, job, run_id, self.ledger.require_run(run_id).shard_count)
        else:  # the expected total is final now: failures so far may already be too many
            stop_if_hopeless(self.ledger, run_id, job, emit=self.emit, reduce_sender=self.reduce_sender)

    # ------------------------------------------------------------- sources

    def source_record(self, job: JobDeclaration, req: StartRequest) -> dict[str, Any]:
        """What a new run reads, as recorded on the run (plain JSON)."""
        declared = job.source
        base: dict[str, Any] = {"page_size": declared.page_size, "segments": 1}
        if req.items is not None:
            size = len(json.dumps(req.items, separators=(",", ":"), default=str).encode())
            if size > MAX_INLINE_ITEMS_BYTES:
                raise StartEventError(
                    f"inline 'items' are {size:,} bytes, over the {MAX_INLINE_ITEMS_BYTES:,}-byte limit (they are "
                    "kept in one ledger item): upload them as a JSONL or CSV manifest and pass 'items_uri'"
                )
            return {**base, "kind": str(SourceKind.INLINE), "items": "ledger", "count": len(req.items)}
        if req.retry_of:
            original = self.ledger.require_run(req.retry_of)
            if original.job != job.name:
                raise StartEventError(f"run {req.retry_of} belongs to job '{original.job}', not '{job.name}'")
            if req.include_not_attempted:  # segment 0: the failures; segment 1: the tasks never attempted
                return {**base, "kind": "retry", "retry_of": req.retry_of, "not_attempted": True, "segments": 2}
            return {**base, "kind": "retry", "retry_of": req.retry_of}
        if req.source_uri:
            refusal = source_uri_refusal(job, req.source_uri, self.settings.reports_bucket)
            if refusal:
                raise StartEventError(refusal)
        if req.items_uri or req.source_uri:
            uri = str(req.items_uri or req.source_uri)
            fmt = manifest_format(uri, req.items_format, declared.format)
            return {**base, "kind": str(SourceKind.S3_MANIFEST), "uri": uri, "format": fmt, "given": True}
        if declared.kind is SourceKind.DYNAMODB:
            table = self.settings.source_table_names.get(declared.table or "", "")
            return {
                **base,
                "kind": str(declared.kind),
                "table_role": declared.table,
                "table": table,
                "segments": declared.segments,
            }
        if declared.kind is SourceKind.S3_MANIFEST:
            uri = resolve_source_uri(str(declared.uri), job=job.name, run_id=req.run_id, date=run_date(req))
            return {**base, "kind": str(declared.kind), "uri": uri, "format": declared.format}
        if declared.kind is SourceKind.CALLABLE:
            return {**base, "kind": str(declared.kind), "function": declared.function}
        return {**base, "kind": str(declared.kind)}

    def open_source(self, run: RunRecord, job: JobDeclaration) -> Source:
        """The run's own source, from its record (the job's declared one for a run created
        before sources were recorded)."""
        rec = run.source or self.source_record(job, StartRequest(job.name, run.run_id))
        kind = rec["kind"]
        if kind == SourceKind.INLINE:
            return InlineSource(self.ledger.inline_items(run.run_id))
        if kind == "retry":
            failed = FailedTasksSource(ledger=self.ledger, run_id=str(rec["retry_of"]))
            if not rec.get("not_attempted"):
                return failed
            return RetrySource(failed, self._not_attempted_of(self.ledger.require_run(str(rec["retry_of"])), job))
        if kind == SourceKind.DYNAMODB:
            if not rec.get("table"):
                role = rec.get("table_role")
                raise SourceError(
                    f"no deployed table for the source table role '{role}' (SOURCE_TABLES has "
                    f"{sorted(self.settings.source_table_names)}): declare [tables.{role}] and redeploy"
                )
            return DynamoDBSource(client=self.dynamodb, table_name=str(rec["table"]), segments=int(rec["segments"]))
        if kind == SourceKind.S3_MANIFEST:
            return S3ManifestSource(client=self.s3, uri=str(rec.get("uri") or ""), fmt=str(rec.get("format") or ""))
        if kind == SourceKind.CALLABLE:
            return CallableSource(str(rec.get("function") or ""))
        raise SourceError(f"source kind '{kind}' needs items in the start event ('items' or 'items_uri')")

    def _not_attempted_of(self, original: RunRecord, job: JobDeclaration) -> NotAttemptedSource:
        """The tasks `original` never attempted, read from its pages as it sent them."""
        page_size = int(original.source.get("page_size") or job.source.page_size)
        stable, source = rereads_alike(original.source), self.open_source(original, job)
        return NotAttemptedSource(
            ledger=self.ledger,
            original=original,
            read_page=lambda seg, cursor: self._page(original, source, seg, cursor, page_size, stable),
        )

    # --------------------------------------------------------------- pages

    def _split(
        self,
        job: JobDeclaration,
        run: RunRecord,
        req: StartRequest,
        source: Source,
        segments: list[str],
        remaining_ms: Callable[[], int],
        event: dict[str, Any],
    ) -> bool:
        """Send and account pages until the segments are read. True if it handed over to a continuation."""
        page_size = int(run.source.get("page_size") or job.source.page_size)
        stable = rereads_alike(run.source)
        for seg in segments:
            cursor, seq = run.cursors[seg], run.seg_counts.get(seg, 0)
            while cursor != CURSOR_DONE:
                if remaining_ms() < self.settings.splitter_margin_ms:
                    self.continue_with({**event, "run_id": run.run_id, "continuation": req.continuation + 1})
                    return True
                if not self._room_for(job, page_size, remaining_ms):  # the queue stayed full: later
                    self.continue_with({**event, "run_id": run.run_id, "continuation": req.continuation + 1})
                    return True
                page = self._page(run, source, seg, cursor, page_size, stable)
                bodies, task_ids, unsendable = self.page_bodies.bodies(job, run, seg, seq, page.items)
                indexing = (  # item ids indexed alongside the send, before the page is accounted
                    index_page(self.ledger, job.item_id_field, run.run_id, seg, seq, page.items)
                    if job.item_index
                    else None
                )
                self.sender_for(job.name).send(bodies, groups=[group_id(run.run_id, t, run.tenants) for t in task_ids])
                if indexing is not None:
                    indexing.result()
                if self.faults:
                    self.faults.maybe_crash("splitter_after_send")
                if unsendable:  # counted like any outcome, before the page is accounted
                    self.ledger.record_outcomes(run.run_id, run.counter_count, unsendable)
                    self.emit("TasksFailed", len(unsendable), job.name, run_id=run.run_id)
                count = len(bodies) + len(unsendable)
                if self.ledger.account_page(
                    run.run_id, segment=seg, cursor_from=cursor, cursor_to=page.next_cursor, count=count
                ):
                    cursor, seq = page.next_cursor, seq + count
                    self.emit("TasksEnqueued", len(bodies), job.name)
                else:
                    # Another splitter accounted this page (its write token is not ours): it is
                    # reading this segment now (a doubled start, a Lambda retry or a sweeper
                    # restart while the first was alive). Following it would send every later
                    # page twice, in lockstep; leave it the segment. Should it die, the sweeper
                    # restarts the split once the run has been quiet for `stuck_after_s`.
                    log.warning(
                        "run %s: segment %s: the page at %s was accounted by another splitter; "
                        "leaving it the rest of the segment",
                        run.run_id,
                        seg,
                        cursor,
                    )
                    self.emit("SplitSegmentsYielded", 1, job.name, run_id=run.run_id)
                    break
        return False

    def _room_for(self, job: JobDeclaration, page_size: int, remaining_ms: Callable[[], int]) -> bool:
        """Wait while the job's queue is at its depth limit (backpressure); False if it stayed full
        for all the time this invocation has left."""
        limit = self.settings.queue_depth_limit(job.max_queue_depth)
        if not limit:
            return True
        sender = self.sender_for(job.name)
        gate = QueueGate(sqs=sender.client, queue_url=sender.queue_url, max_depth=limit)
        margin_ms = self.settings.splitter_margin_ms
        result = gate.wait_for_room(page_size, budget_s=lambda: max(remaining_ms() - margin_ms, 0) / 1000)
        if result.waited_s:
            log.info(
                "job %s: waited %.1f s for its queue to drain below %d (depth %d)",
                job.name,
                result.waited_s,
                limit,
                result.depth,
            )
        return result.room

    def _page(self, run: RunRecord, source: Source, seg: str, cursor: str, limit: int, stable: bool) -> Page:
        """The page at `cursor`: read from the source the first time, and kept in S3 (written
        once) so that a re-sent page has the same items even if the source changed since."""
        if stable or not self.settings.reports_bucket:
            return _read(source, seg, cursor, limit)
        bucket = self.settings.reports_bucket
        key = f"{SPLITS_PREFIX}{run.run_id}/{seg}/{hashlib.sha256(cursor.encode()).hexdigest()[:32]}.json"
        try:
            kept = self._kept_page(bucket, key)
            if kept is not None:
                return kept
            page = _read(source, seg, cursor, limit)
            body = json.dumps({"cursor": cursor, "items": page.items, "next_cursor": page.next_cursor}, default=str)
            try:
                self.s3.put_object(Bucket=bucket, Key=key, Body=body.encode(), IfNoneMatch="*")
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise
                kept = self._kept_page(bucket, key)  # another splitter kept this page first: send its items
                if kept is not None:
                    return kept
            return page
        except ClientError as exc:
            if not is_permanent(exc):
                raise
            raise SourceReadError(
                SourceError(
                    f"the splitter cannot keep its pages in s3://{bucket}/{SPLITS_PREFIX} ({exc}): grant it "
                    f"read and write on that prefix of REPORTS_BUCKET"
                )
            ) from exc

    def _kept_page(self, bucket: str, key: str) -> Page | None:
        try:
            doc = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                return None
            raise
        return Page(list(doc["items"]), str(doc["next_cursor"]))


class SourceReadError(Exception):
    """Reading the run's source failed with `cause` (classified by `is_permanent`)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _read(source: Source, seg: str, cursor: str, limit: int) -> Page:
    try:
        return source.read_page(int(seg), cursor, limit)
    except Exception as exc:
        raise SourceReadError(exc) from exc


def describe_source(record: dict[str, Any]) -> str:
    """A run's source in words, for errors: `s3://bucket/key (jsonl)`, `table 'x' (role 'y')`..."""
    kind = record.get("kind")
    if kind == SourceKind.S3_MANIFEST:
        return f"{record.get('uri')} ({record.get('format')})"
    if kind == SourceKind.DYNAMODB:
        return f"table '{record.get('table') or '?'}' (role '{record.get('table_role')}')"
    if kind == SourceKind.CALLABLE:
        return f"function {record.get('function')}"
    if kind == "retry":
        return f"the failed tasks of run {record.get('retry_of')}"
    return f"{kind} items"
