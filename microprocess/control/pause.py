"""Pause and resume a run, burning no attempt and losing nothing however long the pause.

**Pause** sets the run `PAUSED` (remembering `paused_from`: SPLITTING or RUNNING) in one
conditional write. From then on:

* the splitter's next page is refused (`account_page` wants SPLITTING), so it stops;
* the forwarder, reading the run within its cache time (2 s), *parks* each of the run's
  messages instead of pushing it: the body goes to the ledger beside the run, and the message
  is acknowledged. A parked message is received once, so it burns no attempt
  (`ApproximateReceiveCount` does not climb towards the queue's redrive), never reaches the
  DLQ, and does not age in the queue towards its retention limit (the ledger keeps it for as
  long as the pause lasts). Messages in a backoff come back when it ends and are parked then.
* other runs and jobs are not touched.

The parking itself is one of the forwarder's admission gates (`microprocess.pipeline.admission`,
the records' layout in `microprocess.pipeline.parking`); this module keeps the commands.

**Resume** puts the run back to where it was paused, then re-sends every parked message (to
its job's task queue, or the reduce queue for a reduce message) with the attempts already
made in the `microprocess-prior-attempts` message attribute, which the forwarder adds to the
receive count; then deletes the parked records. It restarts the splitter of a run paused while
splitting, and runs the completion check of a run whose tasks all finished while it was
paused. A forwarder that read "paused" just before the resume may park a message just after
the drain: the resume drains a second time after the forwarder's cache time, and running
`resume` again on a running run drains anything left (every step is idempotent: a re-sent
message that was already sent is a duplicate the ledger absorbs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from microprocess.control.lookup import batch_write
from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger, LedgerError, RunStatus, utc_now_iso
from microprocess.ledger.records import _from_ddb, _is_conditional_failure, _run_pk, _to_ddb
from microprocess.pipeline.attempts import PRIOR_ATTEMPTS_ATTRIBUTE
from microprocess.pipeline.envelope import TaskKind
from microprocess.pipeline.fanin import enqueue_reduce_parts
from microprocess.pipeline.parking import parked_pk
from microprocess.pipeline.queue import SQS_BATCH, QueueSender
from microprocess.pipeline.tenants import group_field, group_id

log = logging.getLogger(__name__)


#: Statuses a run can be paused from.
PAUSABLE = (RunStatus.SPLITTING, RunStatus.RUNNING)
#: How long a forwarder may act on a run read before the resume (its run cache), s.
FORWARDER_CACHE_S = 3.0


class PauseError(LedgerError):
    """A pause or resume that does not apply to the run; the message says why and what to do."""


def pause(ledger: Ledger, run_id: str) -> RunStatus:
    """Pause a splitting or running run; returns the status it was paused from."""
    values: dict[str, Any] = {":p": str(RunStatus.PAUSED), ":now": utc_now_iso()}
    values |= {f":s{i}": str(s) for i, s in enumerate(PAUSABLE)}
    try:
        resp = ledger.client.update_item(
            TableName=ledger.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            UpdateExpression="SET paused_from = #st, #st = :p, paused_at = :now, updated_at = :now",
            ConditionExpression=f"#st IN ({', '.join(f':s{i}' for i in range(len(PAUSABLE)))})",
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues=_to_ddb(values),
            ReturnValues="UPDATED_OLD",
        )
        return RunStatus(_from_ddb(resp["Attributes"])["status"])
    except ClientError as exc:
        if not _is_conditional_failure(exc):
            raise
    run = ledger.require_run(run_id)
    if run.status is RunStatus.PAUSED:
        raise PauseError(f"run {run_id} is already paused; continue it with `microprocess resume {run_id}`")
    if run.status is RunStatus.REDUCING:
        raise PauseError(f"run {run_id} is reducing: every task is done, there is nothing left to pause")
    raise PauseError(f"run {run_id} has ended ({run.status}); only a splitting or running run can be paused")


def paused_from(ledger: Ledger, run_id: str) -> RunStatus | None:
    """Where a paused run resumes (None when it is not paused)."""
    resp = ledger.client.get_item(
        TableName=ledger.table_name,
        Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
        ProjectionExpression="#st, paused_from",
        ExpressionAttributeNames={"#st": "status"},
        ConsistentRead=True,
    )
    item = _from_ddb(resp.get("Item", {}))
    if item.get("status") != str(RunStatus.PAUSED):
        return None
    return RunStatus(item.get("paused_from") or RunStatus.RUNNING)


def cancel_paused(ledger: Ledger, run_id: str, shard_count: int | None = None) -> bool:
    """Cancel a paused run (the ledger's `cancel` takes splitting and running runs) and drop
    its parked messages, as a cancel drops a running run's messages. False if it is not paused."""
    try:
        ledger.client.update_item(
            TableName=ledger.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            UpdateExpression="SET #st = :c, finished_at = :now REMOVE paused_from",
            ConditionExpression="#st = :p",
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues=_to_ddb(
                {":c": str(RunStatus.CANCELLED), ":p": str(RunStatus.PAUSED), ":now": utc_now_iso()}
            ),
        )
    except ClientError as exc:
        if _is_conditional_failure(exc):
            return False
        raise
    shards = shard_count if shard_count is not None else ledger.require_run(run_id).shard_count
    for shard in range(shards):
        parked = _query_partition(ledger, parked_pk(run_id, shard))
        batch_write(ledger, [{"DeleteRequest": {"Key": _to_ddb({"pk": i["pk"], "sk": i["sk"]})}} for i in parked])
    return True


def _query_partition(ledger: Ledger, pk: str) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {
        "TableName": ledger.table_name,
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": _to_ddb({":p": pk}),
        "ConsistentRead": True,
    }
    items: list[dict[str, Any]] = []
    while True:
        resp = ledger.client.query(**kwargs)
        items.extend(_from_ddb(raw) for raw in resp.get("Items", []))
        if "LastEvaluatedKey" not in resp:
            return items
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


@dataclass(frozen=True)
class ResumeResult:
    """What `resume` did: the status the run went back to, messages re-sent, and the follow-ups."""

    status: RunStatus
    requeued: int
    splitter_restarted: bool = False
    reduce_claimed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "requeued": self.requeued,
            "splitter_restarted": self.splitter_restarted,
            "reduce_claimed": self.reduce_claimed,
        }


class RunResumer:
    """Resumes paused runs.

    Args:
        ledger: the run ledger.
        sqs: a boto3 SQS client.
        job_queue_url: the task queue of a job, by job name.
        reduce_queue_url: the reduce queue.
        restart_splitter: invokes the splitter asynchronously with a start event.
        settle_s: how long to wait before the second drain (a forwarder's cache time).
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        sqs: Any,
        job_queue_url: Callable[[str], str],
        reduce_queue_url: str,
        restart_splitter: Callable[[dict[str, Any]], None],
        settle_s: float = FORWARDER_CACHE_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ledger, self.sqs = ledger, sqs
        self.job_queue_url, self.reduce_queue_url = job_queue_url, reduce_queue_url
        self.restart_splitter = restart_splitter
        self.settle_s, self.sleep = settle_s, sleep

    def resume(self, run_id: str, job: JobDeclaration) -> ResumeResult:
        run = self.ledger.require_run(run_id)
        if run.status is RunStatus.PAUSED:
            self._unpause(run_id)
            run = self.ledger.require_run(run_id)
        elif run.status not in PAUSABLE:
            raise PauseError(f"run {run_id} is {run.status}, not paused; nothing to resume")
        requeued = self.drain(run_id, run.shard_count, run.tenants)
        restarted = claimed = False
        if run.status is RunStatus.SPLITTING:
            self.restart_splitter({"job": run.job, "run_id": run_id, "source": "resume"})
            restarted = True
        elif run.status is RunStatus.RUNNING and run.split_done and self.ledger.finish_split(run_id):
            # Its last tasks finished while it was paused: the completion check they ran was refused.
            enqueue_reduce_parts(
                QueueSender(client=self.sqs, queue_url=self.reduce_queue_url), job, run_id, run.shard_count
            )
            claimed = True
        if self.settle_s:
            self.sleep(self.settle_s)
        requeued += self.drain(run_id, run.shard_count, run.tenants)
        return ResumeResult(run.status, requeued, restarted, claimed)

    def _unpause(self, run_id: str) -> None:
        try:
            self.ledger.client.update_item(
                TableName=self.ledger.table_name,
                Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
                UpdateExpression="SET #st = paused_from, resumed_at = :now, updated_at = :now REMOVE paused_from",
                ConditionExpression="#st = :p AND attribute_exists(paused_from)",
                ExpressionAttributeNames={"#st": "status"},
                ExpressionAttributeValues=_to_ddb({":p": str(RunStatus.PAUSED), ":now": utc_now_iso()}),
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise  # another resume won the race: the run is resumed either way

    def parked_count(self, run_id: str, shard_count: int) -> int:
        return len(self.parked_messages(run_id, shard_count))

    def parked_messages(self, run_id: str, shard_count: int) -> list[dict[str, Any]]:
        """The run's parked messages: each with its `job`, `kind`, `body` and `prior_attempts`."""
        return [item for k in range(shard_count) for item in self._parked(run_id, k)]

    def drain(self, run_id: str, shard_count: int, tenants: int = 1) -> int:
        """Re-send every parked message of the run (a task in its run's fair-queue tenant, of the
        run's `tenants`), then delete its parked record; returns how many."""
        sent = 0
        for shard in range(shard_count):
            parked = self._parked(run_id, shard)
            by_queue: dict[str, list[dict[str, Any]]] = {}
            for item in parked:
                task = item["kind"] == str(TaskKind.TASK)
                url = self.job_queue_url(item["job"]) if task else self.reduce_queue_url
                task_id = str(item["sk"]).split("#", 2)[-1]  # `M#<kind>#<task id>` (`parking.park`)
                item["group"] = group_id(run_id, task_id, tenants) if task else None
                by_queue.setdefault(url, []).append(item)
            for url, items in by_queue.items():
                self._send(url, items)
            batch_write(
                self.ledger,
                [{"DeleteRequest": {"Key": _to_ddb({"pk": i["pk"], "sk": i["sk"]})}} for i in parked],
            )
            sent += len(parked)
        if sent:
            log.info("run %s: %d parked messages re-sent", run_id, sent)
        return sent

    def _parked(self, run_id: str, shard: int) -> list[dict[str, Any]]:
        return _query_partition(self.ledger, parked_pk(run_id, shard))

    def _send(self, queue_url: str, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), SQS_BATCH):
            pending = {
                str(i): {
                    "Id": str(i),
                    "MessageBody": item["body"],
                    **group_field(item["group"]),
                    "MessageAttributes": {
                        PRIOR_ATTEMPTS_ATTRIBUTE: {
                            "DataType": "Number",
                            "StringValue": str(int(item["prior_attempts"])),
                        }
                    },
                }
                for i, item in enumerate(items[start : start + SQS_BATCH])
            }
            for attempt in range(8):
                resp = self.sqs.send_message_batch(QueueUrl=queue_url, Entries=list(pending.values()))
                for ok in resp.get("Successful", []):
                    pending.pop(ok["Id"], None)
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 2.0))
            if pending:
                # The parked records stay (nothing deleted): `resume` again re-sends them.
                raise PauseError(f"{len(pending)} parked messages not re-sent to {queue_url}; run `resume` again")
