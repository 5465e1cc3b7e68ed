"""The dead-letter handler: every message that reaches the DLQ still finishes its run.

* A task message (redriven after too many receives, or sent here by the forwarder)
  is recorded FAILED with the reason, counted once like any outcome; if that was the
  run's last task, the reduce is claimed and enqueued.
* A reduce message ends its run FAILED with the reason.
* A message that cannot be parsed, or names no known job or run, is written to the
  quarantine prefix in S3 with its attributes (nothing is lost), then deleted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from microprocess.control.stop import stop_if_hopeless
from microprocess.declarations import JobRegistry, UnknownJobError
from microprocess.ledger import Ledger, TaskOutcome, TaskState
from microprocess.pipeline.attempts import prior_attempts
from microprocess.pipeline.envelope import MalformedEnvelope, TaskEnvelope, TaskKind, outside_run
from microprocess.pipeline.fanin import enqueue_reduce_parts
from microprocess.pipeline.forwarder import REASON_ATTRIBUTE
from microprocess.pipeline.queue import QueueSender

log = logging.getLogger(__name__)
MetricsEmitter = Callable[..., None]  # (name, value, job, *, run_id=None)


def quarantine_key(record: dict[str, Any], now: datetime | None = None) -> str:
    day = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
    return f"quarantine/{day}/{record.get('messageId', 'unknown')}.json"


class DeadLetterHandler:
    def __init__(
        self,
        *,
        jobs: JobRegistry,
        ledger: Ledger,
        s3: Any,
        bucket: str,
        sender: QueueSender,
        emit: MetricsEmitter | None = None,
    ) -> None:
        """`sender` sends the reduce parts a dead-lettered last task claims (the reduce queue)."""
        if not bucket:
            raise ValueError("the dead-letter handler needs REPORTS_BUCKET for the quarantine")
        self.jobs, self.ledger, self.s3, self.bucket, self.sender = jobs, ledger, s3, bucket, sender
        self.emit = emit or (lambda name, value, job, **_: None)

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        failures = []
        for record in event.get("Records", []):
            try:
                self._one(record)
            except Exception:  # retried by the DLQ's event source; logged with the message id
                log.exception("dead-letter: could not settle message %s", record.get("messageId"))
                failures.append({"itemIdentifier": record.get("messageId")})
        return {"batchItemFailures": failures}

    @staticmethod
    def reason_of(record: dict[str, Any]) -> str:
        attr = record.get("messageAttributes", {}).get(REASON_ATTRIBUTE, {})
        reason = attr.get("stringValue") or attr.get("StringValue")
        if reason:
            return str(reason)
        count = record.get("attributes", {}).get("ApproximateReceiveCount", "?")
        return f"dead-lettered after {count} receives (the forwarder never settled it)"

    def _one(self, record: dict[str, Any]) -> None:
        reason = self.reason_of(record)
        try:
            env = TaskEnvelope.parse(record.get("body", ""))
            job = self.jobs.get(env.job)
        except (MalformedEnvelope, UnknownJobError) as exc:
            self._quarantine(record, f"{reason}; {exc}")
            return
        run = self.ledger.get_run(env.run_id)
        if run is None:
            self._quarantine(record, f"{reason}; unknown run '{env.run_id}'")
            return
        if env.kind is TaskKind.TASK and run.owns_task(env.task_id) is None:
            raise RuntimeError(f"task {env.task_id} of run {env.run_id} is not accounted yet; retrying later")
        outside = outside_run(env, run)
        if outside is not None:  # not the run's own message: it neither fails a task nor the run
            self._quarantine(record, f"{reason}; {outside}")
            return
        if env.kind is not TaskKind.TASK:
            if self.ledger.fail_run(env.run_id, f"{env.kind} {env.task_id} dead-lettered: {reason}"):
                self.emit("RunsFailed", 1, job.name, run_id=env.run_id)
            return
        attempts = int(record.get("attributes", {}).get("ApproximateReceiveCount", "0") or 0)
        attempts += prior_attempts(record)  # made before a pause parked and re-sent the message
        item_id = None
        if isinstance(env.item, dict) and job.item_id_field in env.item:
            item_id = str(env.item[job.item_id_field])
        outcome = TaskOutcome(
            env.task_id,
            env.shard,
            TaskState.FAILED,
            attempts,
            item_id,
            error=reason,
            item=env.item,
            item_ref=env.item_ref,
        )
        res = self.ledger.record_outcomes(env.run_id, run.counter_count, [outcome])
        if res.newly_recorded:
            self.emit("TasksFailed", 1, job.name, run_id=env.run_id)
            stop_if_hopeless(self.ledger, env.run_id, job, emit=self.emit, reduce_sender=self.sender)
        if res.claimed_reduce:
            self.emit("ReducesClaimed", 1, job.name, run_id=env.run_id)
            enqueue_reduce_parts(self.sender, job, env.run_id, run.shard_count)

    def _quarantine(self, record: dict[str, Any], reason: str) -> None:
        key = quarantine_key(record)
        doc = {
            "reason": reason,
            "messageId": record.get("messageId"),
            "body": record.get("body"),
            "attributes": record.get("attributes"),
            "messageAttributes": record.get("messageAttributes"),
            "eventSourceARN": record.get("eventSourceARN"),
        }
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(doc, default=str).encode())
        log.warning("quarantined message %s to s3://%s/%s: %s", record.get("messageId"), self.bucket, key, reason)
