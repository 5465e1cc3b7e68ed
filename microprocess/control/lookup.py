"""Finding one item of a run, and listing a run's tasks by state.

**By task id** (`<segment>-<seq>`): the task record's key is computed from the id
(`RUN#<run>#S<shard_of(task)>`, `T#<task>`): one GetItem.

**By item id**: task ids are positions in the source, so an item's task id cannot be computed
from the item's id. The splitter writes one *item index* record per item, beside the task
records, when it sends the item's page:

| pk | sk | holds |
| --- | --- | --- |
| `RUN#<run>#I<p>` (p = hash(item id) mod 64) | `I#<item id>#<task id>` | item_id, task_id |

A lookup is one Query of one partition with `begins_with(sk, "I#<item id>#")`: O(1) reads
whatever the run's size, and it finds every task of an item id that occurs twice in the
source. Written while the page is sent, and before the page is accounted, so an accounted
task is findable while PENDING; a resumed splitter re-sends the same positions, so re-writing an
index record is harmless (same key, same value). Measured on moto: 2,000 index records in
0.5 s (80 BatchWriteItem calls), against 0.54 s for 200 conditional task puts.

**Write cost** (ARCHITECTURE §8): one write unit per item (the record is ~100 bytes), batched
25 per BatchWriteItem: +$0.625 per million items on on-demand DynamoDB, the same as the task
record itself, i.e. about +60% of the pattern's per-item floor. It buys an O(1) answer to
"what happened to item X" at any size; the alternative, filtering every task record of the
run, reads the whole run (19 M records ≈ 2.4 M read units and minutes) for each question. A
job that never needs it sets `item_index = false` (lookups by task id still work). The 64
partitions spread the split's writes (no hot key, §3.5).

**PENDING** (split, not terminal) is what the ledger does not hold, so it is computed: the
run's accounted positions (`seg_counts`) minus its task records, with one bit per position
(19 M tasks: 2.4 MB). It reads every task record of the run once (a listing, not a lookup).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from microprocess.ledger import Ledger, RunRecord, TaskRecord, TaskState
from microprocess.ledger.records import _from_ddb, _run_pk, _shard_pk, _to_ddb
from microprocess.pipeline.envelope import shard_of

#: Partitions of a run's item index (fixed: a lookup recomputes the partition from the item id).
ITEM_INDEX_PARTITIONS = 64
#: Items per BatchWriteItem (DynamoDB's limit).
DYNAMODB_BATCH_WRITE = 25

_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="control")
#: A page's index write runs here while the page is sent; its chunks go to `_pool` (a separate
#: pool, so that a page's write never waits for a thread its own chunks hold).
_page_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="index-page")


class TaskPositions:
    """A set of a run's task ids, one bit per accounted position (`seg_counts`): 19 M tasks
    take 2.4 MB. Ids that are not accounted positions of the run are not held."""

    def __init__(self, run: RunRecord) -> None:
        self._counts = dict(run.seg_counts)
        self._bits = {seg: bytearray((count + 7) // 8) for seg, count in self._counts.items()}

    def position(self, task_id: str) -> tuple[str, int] | None:
        """The (segment, seq) of an accounted task id, or None."""
        pos = _position(task_id)
        if pos is None or pos[0] not in self._counts or pos[1] >= self._counts[pos[0]]:
            return None
        return pos

    def add(self, task_id: str) -> None:
        pos = self.position(task_id)
        if pos is not None:
            self._bits[pos[0]][pos[1] >> 3] |= 1 << (pos[1] & 7)

    def __contains__(self, task_id: object) -> bool:
        pos = self.position(task_id) if isinstance(task_id, str) else None
        return pos is not None and bool(self._bits[pos[0]][pos[1] >> 3] & (1 << (pos[1] & 7)))

    def missing(self) -> Iterator[str]:
        """The accounted positions not in the set, as task ids, in position order."""
        for seg in sorted(self._bits, key=lambda s: int(s) if s.isdigit() else s):
            bits = self._bits[seg]
            for seq in range(self._counts[seg]):
                if not bits[seq >> 3] & (1 << (seq & 7)):
                    yield task_id_at(seg, seq)


class TaskView(StrEnum):
    """A task's state as `microprocess tasks` shows it."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    PENDING = "PENDING"  # split, not terminal, the run still going
    NOT_ATTEMPTED = "NOT_ATTEMPTED"  # split, never terminal, the run has ended (cancelled, stopped early)


def task_id_at(segment: str | int, seq: int) -> str:
    """The task id of position `seq` of `segment` (the splitter's scheme)."""
    return f"{segment}-{seq:09d}"


def _position(task_id: str) -> tuple[str, int] | None:
    seg, _, seq = task_id.partition("-")
    return (seg, int(seq)) if seq.isdigit() else None


def index_partition_key(run_id: str, item_id: str) -> str:
    return f"{_run_pk(run_id)}#I{shard_of(item_id, ITEM_INDEX_PARTITIONS)}"


def index_entries(item_id_field: str, segment: str, first_seq: int, items: Sequence[Any]) -> list[tuple[str, str]]:
    """(item id, task id) of each item of a page that has an id (items without one are not indexed)."""
    entries = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get(item_id_field) is not None:
            entries.append((str(item[item_id_field]), task_id_at(segment, first_seq + i)))
    return entries


def _batch_write(ledger: Ledger, requests: list[dict[str, Any]]) -> None:
    """BatchWriteItem of up to 25 requests, retrying unprocessed ones (throttling) with backoff."""
    pending = {ledger.table_name: requests}
    for attempt in range(10):
        resp = ledger.client.batch_write_item(RequestItems=pending)
        pending = resp.get("UnprocessedItems") or {}
        if not pending:
            return
        time.sleep(min(0.05 * 2**attempt, 2.0))
    raise RuntimeError(f"{len(pending.get(ledger.table_name, []))} ledger writes stayed unprocessed; retry")


def batch_write(ledger: Ledger, requests: list[dict[str, Any]]) -> None:
    """Write every request, 25 per BatchWriteItem, the chunks in parallel."""
    chunks = [requests[i : i + DYNAMODB_BATCH_WRITE] for i in range(0, len(requests), DYNAMODB_BATCH_WRITE)]
    list(_pool.map(lambda c: _batch_write(ledger, c), chunks))


def write_item_index(ledger: Ledger, run_id: str, entries: Iterable[tuple[str, str]]) -> int:
    """Write the index records of (item id, task id) pairs; returns how many. Idempotent."""
    requests = [
        {
            "PutRequest": {
                "Item": _to_ddb(
                    {
                        "pk": index_partition_key(run_id, item_id),
                        "sk": f"I#{item_id}#{task_id}",
                        "item_id": item_id,
                        "task_id": task_id,
                    }
                )
            }
        }
        for item_id, task_id in dict.fromkeys(entries)
    ]
    batch_write(ledger, requests)
    return len(requests)


def index_page(
    ledger: Ledger, item_id_field: str, run_id: str, segment: str, first_seq: int, items: Sequence[Any]
) -> Future[int]:
    """The splitter's hook: start indexing one page's items, alongside the page's send (the
    splitter waits for it before it accounts the page, so an accounted task is always indexed)."""
    entries = index_entries(item_id_field, segment, first_seq, items)
    return _page_pool.submit(write_item_index, ledger, run_id, entries)


@dataclass(frozen=True)
class TaskDetail:
    """What `microprocess tasks` shows of one task."""

    task_id: str
    state: TaskView
    shard: int
    item_id: str | None = None
    attempts: int | None = None
    error: str | None = None
    result: Any = None
    finished_at: str | None = None
    #: Seconds from the run's start to the task's terminal outcome.
    seconds_after_start: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "state": str(self.state),
            "item_id": self.item_id,
            "attempts": self.attempts,
            "error": self.error,
            "result": self.result,
            "finished_at": self.finished_at,
            "seconds_after_start": self.seconds_after_start,
            "shard": self.shard,
        }


def _seconds_between(start: str, end: str | None) -> float | None:
    if not end:
        return None

    def parse(ts: str) -> datetime:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))

    return round((parse(end) - parse(start)).total_seconds(), 3)


def _record_from_item(item: dict[str, Any], shard: int) -> TaskRecord:
    return TaskRecord(
        task_id=item["task_id"],
        shard=shard,
        state=TaskState(item["state"]),
        attempts=int(item.get("attempts", 0)),
        item_id=item.get("item_id"),
        result=json.loads(item["result"]) if item.get("result") else None,
        error=item.get("error") or None,
        finished_at=item["finished_at"],
        item=json.loads(item["item"]) if item.get("item") else None,
        item_ref=item.get("item_ref"),
    )


class RunTasks:
    """Reads a run's tasks: one by task id or item id, or all of one state.

    Args:
        ledger: the run ledger (its table and client are used directly).
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # ------------------------------------------------------------------ one task

    def get_record(self, run: RunRecord, task_id: str) -> TaskRecord | None:
        shard = shard_of(task_id, run.shard_count)
        resp = self.ledger.client.get_item(
            TableName=self.ledger.table_name,
            Key=_to_ddb({"pk": _shard_pk(run.run_id, shard), "sk": f"T#{task_id}"}),
            ConsistentRead=True,
        )
        return _record_from_item(_from_ddb(resp["Item"]), shard) if "Item" in resp else None

    def task(self, run: RunRecord, task_id: str, *, item_id: str | None = None) -> TaskDetail | None:
        """The task `task_id` of `run`, terminal or not; None if the run has no such task."""
        record = self.get_record(run, task_id)
        if record is not None:
            return self._detail(run, record)
        if not run.owns_task(task_id):  # False: not the run's; None: its page is not accounted yet
            return None
        state = TaskView.NOT_ATTEMPTED if run.status.terminal else TaskView.PENDING
        return TaskDetail(task_id, state, shard_of(task_id, run.shard_count), item_id=item_id)

    def item(self, run: RunRecord, item_id: str) -> list[TaskDetail]:
        """Every task of the item `item_id` (an id that occurs twice in the source has two)."""
        details = []
        for task_id in self.index_lookup(run.run_id, item_id):
            detail = self.task(run, task_id, item_id=item_id)
            # A record naming another item means the source changed under a resumed split.
            if detail is not None and (detail.item_id is None or detail.item_id == item_id):
                details.append(detail if detail.item_id else replace(detail, item_id=item_id))
        return details

    def index_lookup(self, run_id: str, item_id: str) -> list[str]:
        """The task ids the item index holds for `item_id`: one Query of one partition."""
        prefix = f"I#{item_id}#"
        kwargs: dict[str, Any] = {
            "TableName": self.ledger.table_name,
            "KeyConditionExpression": "pk = :p AND begins_with(sk, :s)",
            "ExpressionAttributeValues": _to_ddb({":p": index_partition_key(run_id, item_id), ":s": prefix}),
        }
        found: list[str] = []
        while True:
            resp = self.ledger.client.query(**kwargs)
            for raw in resp.get("Items", []):
                entry = _from_ddb(raw)
                if entry.get("item_id") == item_id:  # an id that merely starts with this one is another item
                    found.append(str(entry["task_id"]))
            if "LastEvaluatedKey" not in resp:
                return sorted(found)
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def _detail(self, run: RunRecord, record: TaskRecord) -> TaskDetail:
        return TaskDetail(
            task_id=record.task_id,
            state=TaskView(str(record.state)),
            shard=record.shard,
            item_id=record.item_id,
            attempts=record.attempts,
            error=record.error,
            result=record.result,
            finished_at=record.finished_at,
            seconds_after_start=_seconds_between(run.created_at, record.finished_at),
        )

    # ------------------------------------------------------------------ listings

    def terminal(self, run: RunRecord, state: TaskState) -> Iterator[TaskDetail]:
        """Every task of `run` recorded in `state`, shard by shard."""
        for shard in range(run.shard_count):
            for record in self.ledger.iter_results(run.run_id, shard):
                if record.state is state:
                    yield self._detail(run, record)

    def unfinished(self, run: RunRecord) -> Iterator[str]:
        """The task ids of `run` that are split (accounted) but have no terminal record, in
        position order: PENDING while the run goes on, NOT_ATTEMPTED once it has ended
        (a cancelled or stopped-early run). Reads every task record of the run once."""
        done = TaskPositions(run)
        for task_ids in _pool.map(lambda k: self._task_ids(run.run_id, k), range(run.shard_count)):
            for task_id in task_ids:
                done.add(task_id)
        return done.missing()

    def unfinished_details(self, run: RunRecord, *, limit: int | None = None) -> list[TaskDetail]:
        """`unfinished` as details, with each task's item id from the item index (read once)."""
        state = TaskView.NOT_ATTEMPTED if run.status.terminal else TaskView.PENDING
        ids: list[str] = []
        for task_id in self.unfinished(run):
            if limit is not None and len(ids) >= limit:
                break
            ids.append(task_id)
        items = self._items_of(run.run_id, set(ids)) if ids else {}
        return [TaskDetail(t, state, shard_of(t, run.shard_count), item_id=items.get(t)) for t in ids]

    def item_ids_of(self, run_id: str, task_ids: set[str]) -> dict[str, str]:
        """The item id of each of `task_ids` that the run's item index holds (reads the index once)."""
        return self._items_of(run_id, task_ids)

    def _items_of(self, run_id: str, task_ids: set[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for entries in _pool.map(lambda p: list(self._index_partition(run_id, p)), range(ITEM_INDEX_PARTITIONS)):
            for item_id, task_id in entries:
                if task_id in task_ids:
                    found[task_id] = item_id
        return found

    def _index_partition(self, run_id: str, partition: int) -> Iterator[tuple[str, str]]:
        kwargs: dict[str, Any] = {
            "TableName": self.ledger.table_name,
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": _to_ddb({":p": f"{_run_pk(run_id)}#I{partition}"}),
        }
        while True:
            resp = self.ledger.client.query(**kwargs)
            for raw in resp.get("Items", []):
                entry = _from_ddb(raw)
                yield str(entry["item_id"]), str(entry["task_id"])
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def _task_ids(self, run_id: str, shard: int) -> list[str]:
        kwargs: dict[str, Any] = {
            "TableName": self.ledger.table_name,
            "KeyConditionExpression": "pk = :p AND begins_with(sk, :t)",
            "ExpressionAttributeValues": _to_ddb({":p": _shard_pk(run_id, shard), ":t": "T#"}),
            "ProjectionExpression": "task_id",
            "ConsistentRead": True,
        }
        ids: list[str] = []
        while True:
            resp = self.ledger.client.query(**kwargs)
            ids.extend(str(_from_ddb(raw)["task_id"]) for raw in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return ids
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def not_attempted(ledger: Ledger, run_id: str) -> Iterator[str]:
    """The task ids of a run that never reached a terminal state (for the report builders of a
    cancelled or stopped-early run): its accounted positions without a task record."""
    return RunTasks(ledger).unfinished(ledger.require_run(run_id))
