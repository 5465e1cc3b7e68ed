"""Repair: recount a run's task records inside an epoch fence and rewrite its counters, in
resumable steps; never over-counts (ARCHITECTURE §3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from microprocess.ledger.counters import Counters
from microprocess.ledger.records import (
    LedgerError,
    RepairState,
    TaskState,
    _counter_pk,
    _from_ddb,
    _is_conditional_failure,
    _run_key,
    _run_pk,
    _shard_pk,
    _to_ddb,
    utc_now_iso,
)
from microprocess.ledger.runs import Runs


class Repair(Runs, Counters):
    """The sweeper's counter repair (`repair_step`) and its note (`RUN#<run>` / `REPAIR`)."""

    def repair_counters(self, run_id: str) -> tuple[int, int]:
        """Recount the run's task records and rewrite its counters, to the end (tools, tests).
        Returns the recounted (succeeded, failed). The sweeper uses `repair_step`."""
        while True:
            state = self.repair_step(run_id)
            if state.done:
                return state.succeeded, state.failed

    def repair_step(
        self, run_id: str, *, budget_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> RepairState:
        """One step of the counter repair: resumable, in steps that fit a function's time limit.

        Inside an epoch fence: (1) move every counter to an odd epoch e+1 (a transaction),
        and note the repair on its own item (`RUN#<run>` / `REPAIR`); (2) recount the task
        records shard by shard, noting each shard's counts there, until `budget_s` is spent
        (at least one shard per step); (3) when every shard is counted, rewrite every counter
        with the recount and epoch e+2. A forwarder's counter update is conditional on the
        epoch it saw before it wrote its tasks, so an update that could double-count a
        recounted task is refused (never counted twice; the next repair counts it).

        A repair interrupted anywhere is taken up by the next call: the fence (an odd epoch)
        is never a lock, the counted shards are kept, and a missing note is rebuilt.
        """
        run = self.require_run(run_id)
        k = run.counter_count
        epoch = max(c.epoch for c in self._read_counters(run_id, k))
        if epoch % 2 == 0:
            self._transact_counters(
                run_id,
                k,
                lambda j: {
                    "UpdateExpression": "SET epoch = :next",
                    "ConditionExpression": "attribute_not_exists(epoch) OR epoch = :e",
                    "ExpressionAttributeValues": _to_ddb({":next": epoch + 1, ":e": epoch}),
                },
            )
            epoch += 1
            self._forget_epoch(run_id)
        counts = self._repair_note(run_id, epoch)
        started, counted_now = clock(), 0
        for shard in range(run.shard_count):
            if shard in counts:
                continue
            if counted_now and budget_s is not None and clock() - started >= budget_s:
                return RepairState(run_id, epoch, len(counts), run.shard_count, False, 0, 0)
            counted_now += 1
            counts[shard] = self._recount_shard(run_id, shard)
            self.client.update_item(
                TableName=self.table_name,
                Key=_to_ddb({"pk": _run_pk(run_id), "sk": "REPAIR"}),
                UpdateExpression="SET counts.#k = :c, updated_at = :now",
                ConditionExpression="epoch = :e",
                ExpressionAttributeNames={"#k": str(shard)},
                ExpressionAttributeValues=_to_ddb({":c": list(counts[shard]), ":e": epoch, ":now": utc_now_iso()}),
            )
        succeeded = sum(s for s, _ in counts.values())
        failed = sum(f for _, f in counts.values())
        run = self.require_run(run_id)
        if run.split_done and succeeded + failed > run.expected:
            raise LedgerError(f"run {run_id}: {succeeded + failed} task records but {run.expected} expected")
        plan = _spread(succeeded, failed, k, run.expected if run.split_done else None)
        strays = self._stray_markers(run_id, k)

        def rewrite(j: int) -> dict[str, Any]:
            s_j, f_j, room_j = plan[j]
            values = {":s": s_j, ":f": f_j, ":d": s_j + f_j, ":e1": epoch, ":e2": epoch + 1}
            expr = "SET succeeded = :s, failed = :f, done = :d, epoch = :e2"
            removes = [f"#m{i}" for i in range(len(strays[j]))]
            if room_j is None:
                removes.append("room")
            else:
                expr += ", room = :r"
                values[":r"] = room_j
            if removes:
                expr += " REMOVE " + ", ".join(removes)
            update: dict[str, Any] = {
                "UpdateExpression": expr,
                "ConditionExpression": "epoch = :e1",
                "ExpressionAttributeValues": _to_ddb(values),
            }
            if strays[j]:
                update["ExpressionAttributeNames"] = {f"#m{i}": name for i, name in enumerate(strays[j])}
            return update

        self._transact_counters(run_id, k, rewrite)
        self.client.delete_item(TableName=self.table_name, Key=_to_ddb({"pk": _run_pk(run_id), "sk": "REPAIR"}))
        if run.split_done:
            self.client.update_item(
                TableName=self.table_name,
                Key=_to_ddb(_run_key(run_id)),
                UpdateExpression="SET targets_final = :t",
                ExpressionAttributeValues=_to_ddb({":t": True}),
            )
        return RepairState(run_id, epoch, run.shard_count, run.shard_count, True, succeeded, failed)

    def _stray_markers(self, run_id: str, k: int) -> dict[int, list[str]]:
        """The `b_<token>` markers left on counters by writers that died between their add and
        its clean-up (the repair's rewrite removes them, so counters stay small)."""
        keys = [_to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"}) for j in range(k)]
        strays: dict[int, list[str]] = {j: [] for j in range(k)}
        request = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
        for _ in range(20):
            resp = self.client.batch_get_item(RequestItems=request)
            for raw in resp.get("Responses", {}).get(self.table_name, []):
                j = int(raw["pk"]["S"].rsplit("#C", 1)[1])
                strays[j] = sorted(name for name in raw if name.startswith("b_"))[:40]
            request = resp.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(0.05)
        return strays

    def repair_state(self, run_id: str) -> RepairState | None:
        """The repair under way for a run (its fence and counted shards), or None."""
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "REPAIR"}),
            ConsistentRead=True,
        )
        if "Item" not in resp:
            return None
        item = _from_ddb(resp["Item"])
        run = self.require_run(run_id)
        return RepairState(run_id, int(item["epoch"]), len(item.get("counts", {})), run.shard_count, False, 0, 0)

    def _repair_note(self, run_id: str, epoch: int) -> dict[int, tuple[int, int]]:
        """The shards already counted by the repair fenced at `epoch` (a note is created, or
        replaced if it belongs to an older fence)."""
        key = {"pk": _run_pk(run_id), "sk": "REPAIR"}
        resp = self.client.get_item(TableName=self.table_name, Key=_to_ddb(key), ConsistentRead=True)
        item = _from_ddb(resp.get("Item", {}))
        if item and int(item.get("epoch", -1)) == epoch:
            return {int(s): (int(c[0]), int(c[1])) for s, c in item.get("counts", {}).items()}
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=_to_ddb({**key, "epoch": epoch, "counts": {}, "started_at": utc_now_iso()}),
                ConditionExpression="attribute_not_exists(pk) OR epoch <> :e",
                ExpressionAttributeValues=_to_ddb({":e": epoch}),
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return self._repair_note(run_id, epoch)  # another sweeper just created it
        return {}

    def _recount_shard(self, run_id: str, shard: int) -> tuple[int, int]:
        succeeded = failed = 0
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :p AND begins_with(sk, :t)",
            "ExpressionAttributeValues": _to_ddb({":p": _shard_pk(run_id, shard), ":t": "T#"}),
            "ProjectionExpression": "#s",
            "ExpressionAttributeNames": {"#s": "state"},
            "ConsistentRead": True,
        }
        while True:
            resp = self.client.query(**kwargs)
            for raw in resp.get("Items", []):
                if raw.get("state", {}).get("S") == str(TaskState.SUCCEEDED):
                    succeeded += 1
                else:
                    failed += 1
            if "LastEvaluatedKey" not in resp:
                return succeeded, failed
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def _transact_counters(self, run_id: str, k: int, update_for: Callable[[int], dict[str, Any]]) -> None:
        items = [
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": _to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"}),
                    **update_for(j),
                }
            }
            for j in range(k)
        ]
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                raise LedgerError(
                    f"run {run_id}: counter repair raced another repair or a forwarder; try again"
                ) from exc
            raise


def _spread(succeeded: int, failed: int, k: int, expected: int | None) -> list[tuple[int, int, int | None]]:
    """Spread recounted totals over k counters; with `expected`, give each a room so that
    sum(done + room) == expected."""
    plan: list[tuple[int, int, int | None]] = []
    if expected is None:
        plan.append((succeeded, failed, None))
        plan.extend((0, 0, None) for _ in range(k - 1))
        return plan
    s_left, f_left = succeeded, failed
    for j in range(k):
        target = expected // k + (1 if j < expected % k else 0)
        s_j = min(target, s_left)
        f_j = min(target - s_j, f_left)
        s_left -= s_j
        f_left -= f_j
        plan.append((s_j, f_j, target - s_j - f_j))
    return plan
