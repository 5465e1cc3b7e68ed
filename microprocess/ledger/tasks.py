"""Task records: each terminal outcome written once (a batch's successes in one
BatchExecuteStatement of PartiQL INSERTs, failures and big records by a conditional put), carrying
the call's write token; then the batch's new outcomes counted with one counter update.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from microprocess.ledger.completion import Completion
from microprocess.ledger.failure_groups import FailureGroupWriter
from microprocess.ledger.records import (
    CRASH_AFTER_COUNTER_UPDATE,
    CRASH_AFTER_TASK_WRITE,
    TASK_RECORD_LIMIT_BYTES,
    WRITE_TOKEN,
    RecordResult,
    TaskOutcome,
    TaskState,
    _from_ddb,
    _is_conditional_failure,
    _item_size,
    _shard_pk,
    _to_ddb,
    _token,
    _written_by,
    insert_statement,
    utc_now_iso,
)

log = logging.getLogger(__name__)

#: Task records written together, one PartiQL INSERT each, in one BatchExecuteStatement
#: (DynamoDB takes at most 25 statements per call).
INSERT_BATCH = 25
#: Records bigger than this go one by one (a conditional put): a batch stays a small request.
INSERT_ITEM_MAX_BYTES = 4096


class TaskRecords(Completion):
    """Counted once (ARCHITECTURE §3.1): only the writer whose put created a task's record counts it."""

    #: Adds newly counted failures to their error groups (set by `Ledger`).
    failure_groups: FailureGroupWriter

    def record_outcomes(self, run_id: str, counter_count: int, outcomes: list[TaskOutcome]) -> RecordResult:
        """Record a batch of terminal task outcomes; count the new ones with one counter update.

        Each task record is written once: a duplicate delivery finds its record and is not
        counted again. The batch's successes go in one call (`_insert_tasks`: a PartiQL INSERT
        per record, which fails on an existing key); failures and large records one by one
        (a conditional put, `_put_task`). Then the batch's new successes and failures go to
        one randomly chosen counter. If that update empties the counter's room, the full
        completion check runs and may claim the reduce.

        Every write is safe when the SDK retries it after it was applied (a 5xx or a timeout
        on a request DynamoDB had carried out): the task put and the counter update carry
        this call's token, and a retry that fails its condition on its own token counts as
        done, never as a duplicate or a second add. A result too big for a DynamoDB item
        makes its task FAILED with the reason; the batch's other tasks are counted as usual.
        """
        epoch = self._known_epoch(run_id, counter_count)
        outcomes = list({o.task_id: o for o in outcomes}.values())  # one outcome per task in a batch
        token = _token()
        written = self._write_tasks(run_id, outcomes, token)
        newly = [o for o, w in zip(outcomes, written, strict=True) if w is not None]
        dupes = [o.task_id for o, w in zip(outcomes, written, strict=True) if w is None]
        self._crash(CRASH_AFTER_TASK_WRITE)
        if not newly:
            return RecordResult([], dupes, True, False)
        states = [w for w in written if w is not None]
        s = sum(1 for state in states if state is TaskState.SUCCEEDED)
        f = len(states) - s
        counted, emptied = self._count(run_id, counter_count, epoch, s, f)
        self._crash(CRASH_AFTER_COUNTER_UPDATE)
        if f:
            self.failure_groups.record(
                run_id,
                counter_count,
                [
                    (o.task_id, o.error if o.state is TaskState.FAILED else "its result is too big for a ledger record")
                    for o, w in zip(outcomes, written, strict=True)
                    if w is TaskState.FAILED
                ],
            )
        claimed = self.check_completion(run_id) if emptied else False
        return RecordResult([o.task_id for o in newly], dupes, counted, claimed)

    def _write_tasks(self, run_id: str, outcomes: list[TaskOutcome], token: str) -> list[TaskState | None]:
        """Each outcome's record, written once; the state recorded, or None for a duplicate."""
        states: dict[int, TaskState | None] = {}
        together: list[tuple[int, dict[str, Any]]] = []
        alone: list[int] = []
        for i, o in enumerate(outcomes):
            item = _task_item(run_id, o, token)
            if o.state is TaskState.SUCCEEDED and _item_size(item) <= INSERT_ITEM_MAX_BYTES:
                together.append((i, item))
            else:
                alone.append(i)  # a FAILED record has its F# item first; a big one goes alone
        for start in range(0, len(together), INSERT_BATCH):
            chunk = together[start : start + INSERT_BATCH]
            inserted, refused = self._insert_tasks([item for _, item in chunk], token)
            states.update({chunk[k][0]: state for k, state in inserted.items()})
            alone += [chunk[k][0] for k in refused]
        for i, state in zip(
            alone, self._pool.map(lambda i: self._put_task(run_id, outcomes[i], token), alone), strict=True
        ):
            states[i] = state
        return [states[i] for i in range(len(outcomes))]

    def _insert_tasks(self, items: list[dict[str, Any]], token: str) -> tuple[dict[int, TaskState | None], list[int]]:
        """Insert SUCCEEDED task records in one BatchExecuteStatement. Returns, by position, the
        state of each record written (SUCCEEDED, or None for a duplicate: another delivery's
        record is there), and the positions whose statement failed for another reason (throttled,
        an internal error): those go alone (a conditional put decides, as for a record that may
        have been written).

        A duplicate key may also be this call's own record, when the SDK retried the call after
        DynamoDB had applied it: the record's write token tells (a strongly consistent read,
        on duplicates only)."""
        try:
            resp = self.client.batch_execute_statement(Statements=[insert_statement(self.table_name, i) for i in items])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("ValidationException", "UnknownOperationException"):
                raise
            # The call itself refused (no PartiQL here, or a request DynamoDB will not take):
            # nothing was written; every record goes alone.
            log.warning("task records not inserted together (%s): writing them one by one", exc)
            return {}, list(range(len(items)))
        written: dict[int, TaskState | None] = {}
        refused: list[int] = []
        duplicates: list[int] = []
        for k, (item, r) in enumerate(zip(items, resp.get("Responses", []), strict=True)):
            error = r.get("Error")
            if error is None:
                written[k] = TaskState.SUCCEEDED
            elif error.get("Code") == "DuplicateItem":
                duplicates.append(k)
            else:
                log.warning("task record %s not inserted (%s): writing it alone", item["sk"], error)
                refused.append(k)
        tokens = self._pool.map(lambda k: self._record_token(items[k]), duplicates)
        for k, found in zip(duplicates, tokens, strict=True):
            written[k] = TaskState.SUCCEEDED if found == token else None
        return written, refused

    def _record_token(self, item: dict[str, Any]) -> str | None:
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": item["pk"], "sk": item["sk"]}),
            ConsistentRead=True,
            ProjectionExpression="#t",
            ExpressionAttributeNames={"#t": WRITE_TOKEN},
        )
        found = _from_ddb(resp.get("Item") or {})
        return str(found[WRITE_TOKEN]) if WRITE_TOKEN in found else None

    def _put_task(self, run_id: str, o: TaskOutcome, token: str) -> TaskState | None:
        """Write the task's record once. Returns the state recorded (FAILED for a result too
        big to store), or None when the task already had a record (a duplicate)."""
        item = _task_item(run_id, o, token)
        if _item_size(item) > TASK_RECORD_LIMIT_BYTES:
            item = _task_item(run_id, _oversize(o, _item_size(item)), token)
        try:
            return self._write_task(item)
        except ClientError as exc:
            if not _is_item_too_large(exc):
                raise
            # DynamoDB measures a little differently from our estimate: the same outcome.
            return self._write_task(_task_item(run_id, _oversize(o, _item_size(item)), token))

    def _write_task(self, item: dict[str, Any]) -> TaskState | None:
        state = TaskState(item["state"])
        if state is TaskState.FAILED:
            # A failed task also gets a small `F#` item beside it, so that `retry-failed` reads
            # the failures of a run and not all its records. Written first (a crash after it
            # leaves a marker whose task has no record yet, or a SUCCEEDED one: the reader
            # checks the record, see `failed_page`), then the record, once.
            marker = {k: item.get(k) for k in ("pk", "task_id", "attempts", "item_id", "error", "item", "item_ref")}
            marker["sk"] = f"F#{item['task_id']}"
            self.client.put_item(TableName=self.table_name, Item=_to_ddb(marker))
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=_to_ddb(item),
                ConditionExpression="attribute_not_exists(sk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return state
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return state if _written_by(exc, item[WRITE_TOKEN]) else None


def _task_item(run_id: str, o: TaskOutcome, token: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": _shard_pk(run_id, o.shard),
        "sk": f"T#{o.task_id}",
        "task_id": o.task_id,
        "state": str(o.state),
        "attempts": o.attempts,
        "item_id": o.item_id,
        "finished_at": utc_now_iso(),
        "error": o.error,
        WRITE_TOKEN: token,
    }
    if o.result is not None:
        item["result"] = json.dumps(o.result, separators=(",", ":"), default=str)
    if o.state is TaskState.FAILED:
        if o.item is not None:
            item["item"] = json.dumps(o.item, separators=(",", ":"), default=str)
        item["item_ref"] = o.item_ref
    return item


def _oversize(o: TaskOutcome, size: int) -> TaskOutcome:
    """The outcome of a task whose record would not fit a DynamoDB item: FAILED, saying why.
    Its item is kept for `retry-failed` only if it fits on its own."""
    what = "result" if o.result is not None else "record"
    error = (
        f"task {o.task_id}: its {what} makes a {size:,}-byte ledger record, over the "
        f"{TASK_RECORD_LIMIT_BYTES:,}-byte limit (DynamoDB items are at most 400 KB): return a smaller "
        "result, or store the result in S3 and return its URI"
    )
    item = o.item
    if item is not None and len(json.dumps(item, default=str).encode()) > TASK_RECORD_LIMIT_BYTES // 2:
        item = None
        error += "; the item itself is too big to keep for retry-failed"
    return TaskOutcome(
        o.task_id, o.shard, TaskState.FAILED, o.attempts, o.item_id, error=error, item=item, item_ref=o.item_ref
    )


def _is_item_too_large(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    return err.get("Code") == "ValidationException" and "size" in str(err.get("Message", "")).lower()
