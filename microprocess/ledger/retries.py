"""A run and its retries: the link from a run to the runs that retried it, which of a run's
tasks have a record, and the combined outcome of a run across its retries.

A retry run names the run it retries (`source_run` on its run item). The other direction is one
small item per retry on the original's partition, written by the splitter when it creates the
retry (before the run item: a crash in between leaves a link to no run, which `retries_of`
skips):

| pk | sk | holds |
| --- | --- | --- |
| `RUN#<run>` | `RETRY#<retry run>` | retry_run_id, not_attempted, created_at |

**Combined outcome** (`combined_progress`): the latest outcome of each of the original's tasks,
from counters only (no task record is read): a run's successes stand; its failures (and, for a
retry with `--include-not-attempted`, its tasks never attempted) take the outcome of its latest
retry, recursively. Items = the original's expected tasks; what is neither succeeded, failed nor
not attempted is pending (a retry still running or splitting).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from microprocess.ledger.records import _from_ddb, _run_pk, _shard_pk, _to_ddb, utc_now_iso
from microprocess.ledger.table import Ledger
from microprocess.pipeline.envelope import shard_of

RETRY_SK_PREFIX = "RETRY#"
#: Keys per BatchGetItem (DynamoDB's limit).
BATCH_GET_KEYS = 100


@dataclass(frozen=True)
class RetryLink:
    run_id: str
    not_attempted: bool
    created_at: str


def record_retry(ledger: Ledger, original: str, retry: str, *, not_attempted: bool) -> None:
    """Link `retry` to the run it retries (idempotent: a repeated write puts the same item)."""
    ledger.client.put_item(
        TableName=ledger.table_name,
        Item=_to_ddb(
            {
                "pk": _run_pk(original),
                "sk": f"{RETRY_SK_PREFIX}{retry}",
                "retry_run_id": retry,
                "not_attempted": not_attempted,
                "created_at": utc_now_iso(),
            }
        ),
    )


def retries_of(ledger: Ledger, run_id: str) -> list[RetryLink]:
    """The runs that retried `run_id` (that exist), oldest first."""
    kwargs: dict[str, Any] = {
        "TableName": ledger.table_name,
        "KeyConditionExpression": "pk = :p AND begins_with(sk, :r)",
        "ExpressionAttributeValues": _to_ddb({":p": _run_pk(run_id), ":r": RETRY_SK_PREFIX}),
        "ConsistentRead": True,
    }
    links: list[RetryLink] = []
    while True:
        resp = ledger.client.query(**kwargs)
        for raw in resp.get("Items", []):
            item = _from_ddb(raw)
            links.append(RetryLink(str(item["retry_run_id"]), bool(item.get("not_attempted")), str(item["created_at"])))
        if "LastEvaluatedKey" not in resp:
            break
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
    existing = [link for link in links if ledger.get_run(link.run_id) is not None]
    return sorted(existing, key=lambda link: (link.created_at, link.run_id))


def recorded_task_ids(ledger: Ledger, run_id: str, shard_count: int, task_ids: Iterable[str]) -> set[str]:
    """The ids among `task_ids` that have a task record (a terminal outcome) in `run_id`."""
    keys = [_to_ddb({"pk": _shard_pk(run_id, shard_of(t, shard_count)), "sk": f"T#{t}"}) for t in task_ids]
    found: set[str] = set()
    for start in range(0, len(keys), BATCH_GET_KEYS):
        request: dict[str, Any] = {
            ledger.table_name: {
                "Keys": keys[start : start + BATCH_GET_KEYS],
                "ConsistentRead": True,
                "ProjectionExpression": "task_id",
            }
        }
        for attempt in range(20):
            resp = ledger.client.batch_get_item(RequestItems=request)
            found.update(str(_from_ddb(raw)["task_id"]) for raw in resp.get("Responses", {}).get(ledger.table_name, []))
            request = resp.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(min(0.05 * 2**attempt, 1.0))
        if request:
            raise TimeoutError(f"run {run_id}: DynamoDB left keys unprocessed 20 times; try again")
    return found


@dataclass(frozen=True)
class CombinedProgress:
    """The latest outcome of a run's tasks across its retries (counts of the original's tasks).

    Attributes:
        run_id: the original run.
        items: its tasks (its expected count).
        succeeded / failed / not_attempted / pending: the latest outcome of each.
        runs: the run and the retries whose outcome counts, in order (each the latest retry of
            the one before).
        retries: every retry of the run, latest or not (direct retries only).
    """

    run_id: str
    items: int
    succeeded: int
    failed: int
    not_attempted: int
    pending: int
    runs: list[str] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "items": self.items,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "not_attempted": self.not_attempted,
            "pending": self.pending,
            "runs": self.runs,
            "retries": self.retries,
        }


def combined_progress(ledger: Ledger, run_id: str) -> CombinedProgress:
    """The run's tasks with the latest outcome of each across its retries (module docstring)."""
    succeeded, failed, not_attempted, runs = _combined(ledger, run_id, depth=0)
    items = ledger.progress(run_id).expected
    pending = max(items - succeeded - failed - not_attempted, 0)
    retries = [link.run_id for link in retries_of(ledger, run_id)]
    return CombinedProgress(run_id, items, succeeded, failed, not_attempted, pending, runs, retries)


#: Retries of retries followed at most (a chain longer than this is reported up to here).
MAX_CHAIN = 50


def _combined(ledger: Ledger, run_id: str, depth: int) -> tuple[int, int, int, list[str]]:
    """(succeeded, failed, not attempted, runs) of `run_id`'s tasks, latest outcome of each."""
    progress = ledger.progress(run_id)
    left = progress.pending if progress.status.terminal else 0
    links = retries_of(ledger, run_id) if depth < MAX_CHAIN else []
    if not links:
        return progress.succeeded, progress.failed, left, [run_id]
    latest = links[-1]
    s, f, na, runs = _combined(ledger, latest.run_id, depth + 1)
    return progress.succeeded + s, f, na + (0 if latest.not_attempted else left), [run_id, *runs]
