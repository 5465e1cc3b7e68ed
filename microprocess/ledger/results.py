"""Results and lookups: a shard's task records (the report reads them), a run's failures only
(`retry-failed` reads them, through the `F#` items), and whether one task has a record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from microprocess.ledger.records import (
    CURSOR_DONE,
    TaskRecord,
    TaskState,
    _from_ddb,
    _shard_pk,
    _to_ddb,
)
from microprocess.ledger.runs import Runs


class Results(Runs):
    """Reads of task records, page by page."""

    def iter_results(self, run_id: str, shard: int) -> Iterator[TaskRecord]:
        """Every task record of one shard, in task-id order, page by page."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :p AND begins_with(sk, :t)",
            "ExpressionAttributeValues": _to_ddb({":p": _shard_pk(run_id, shard), ":t": "T#"}),
            "ConsistentRead": True,
        }
        while True:
            resp = self.client.query(**kwargs)
            for raw in resp.get("Items", []):
                yield _task_record(_from_ddb(raw), shard)
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def iter_failed(self, run_id: str) -> Iterator[TaskRecord]:
        """Every FAILED task of a run (reads only the failures, page by page)."""
        cursor = ""
        while cursor != CURSOR_DONE:
            page, cursor = self.failed_page(run_id, cursor, 100)
            yield from page

    def failed_page(self, run_id: str, cursor: str, limit: int) -> tuple[list[TaskRecord], str]:
        """Up to `limit` FAILED tasks of a run from `cursor` (`""` to start), and the cursor of
        the next page (`CURSOR_DONE` at the end). Reads the run's `F#` failure items shard by
        shard, never its successes, so `retry-failed` of a 19 M-item run reads what failed;
        each failure is checked against its task record (a marker whose record is missing
        or SUCCEEDED, left by a crash or a late duplicate, is skipped)."""
        run = self.require_run(run_id)
        state = json.loads(cursor) if cursor else {"k": 0}
        shard, start_key = int(state["k"]), state.get("key")
        found: list[TaskRecord] = []
        while shard < run.shard_count and len(found) < limit:
            kwargs: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "pk = :p AND begins_with(sk, :f)",
                "ExpressionAttributeValues": _to_ddb({":p": _shard_pk(run_id, shard), ":f": "F#"}),
                "ConsistentRead": True,
                "Limit": limit - len(found),
            }
            if start_key:
                kwargs["ExclusiveStartKey"] = start_key
            resp = self.client.query(**kwargs)
            markers = [_from_ddb(raw) for raw in resp.get("Items", [])]
            found.extend(self._confirmed_failures(run_id, shard, markers))
            start_key = resp.get("LastEvaluatedKey")
            if not start_key:
                shard += 1
        if shard >= run.shard_count:
            return found, CURSOR_DONE
        return found, json.dumps({"k": shard, "key": start_key}, sort_keys=True)

    def _confirmed_failures(self, run_id: str, shard: int, markers: list[dict[str, Any]]) -> list[TaskRecord]:
        if not markers:
            return []
        keys = [_to_ddb({"pk": _shard_pk(run_id, shard), "sk": f"T#{m['task_id']}"}) for m in markers]
        records: dict[str, dict[str, Any]] = {}
        request = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
        for _ in range(20):
            resp = self.client.batch_get_item(RequestItems=request)
            for raw in resp.get("Responses", {}).get(self.table_name, []):
                rec = _from_ddb(raw)
                records[rec["task_id"]] = rec
            request = resp.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(0.05)
        out = []
        for m in markers:
            found = records.get(m["task_id"])
            if found is None or found.get("state") != str(TaskState.FAILED):
                continue
            out.append(_task_record(found, shard))
        return out

    def task_exists(self, run_id: str, shard: int, task_id: str) -> bool:
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _shard_pk(run_id, shard), "sk": f"T#{task_id}"}),
            ProjectionExpression="pk",
            ConsistentRead=True,
        )
        return "Item" in resp


def _task_record(item: dict[str, Any], shard: int) -> TaskRecord:
    return TaskRecord(
        task_id=item["task_id"],
        shard=shard,
        state=TaskState(item["state"]),
        attempts=int(item.get("attempts", 0)),
        item_id=item.get("item_id"),
        result=json.loads(item["result"]) if item.get("result") else None,
        error=item.get("error"),
        finished_at=item["finished_at"],
        item=json.loads(item["item"]) if item.get("item") else None,
        item_ref=item.get("item_ref"),
    )
