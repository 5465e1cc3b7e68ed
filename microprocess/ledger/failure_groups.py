"""Failures grouped by error: counts and example tasks per kind of error, written as tasks fail.

The console shows a run's failures by cause without reading its task records (a 19 M-task run
must not be scanned). Each batch that records new failures adds them to one small item per
error group:

| item          | pk               | sk          | holds |
| ------------- | ---------------- | ----------- | ----- |
| failure group | `RUN#<run>#E<j>` | `E#<group>` | n (failures), error (normalized text), examples (task ids) |

* **Grouping.** Errors that differ only in numbers, ids or hashes (`HTTP 422: invoice INV-00012
  is not overdue`) fall into one group: `normalize_error` replaces them, and the group key is a
  hash of the normalized text.
* **No hot key.** A process writes a run's groups under one partition `j < counter_count`,
  chosen at random once per run (like the counters), so a run whose every task fails the same
  way spreads its writes over the run's counter partitions. A batch makes one update per
  group it has failures of.
* **Counted once.** Only failures whose task record this batch created are added (the
  ledger's counted-once rule), and the update sets a marker attribute under
  `attribute_not_exists`, as the counters do: an SDK retry of an applied update fails its
  condition and finds its marker, so the ADD is never applied twice. The writer's next update
  of the same group removes its marker; markers older than an hour go with any update.
* **Never over-counts, may under-count.** A process that dies between its task records and
  this update leaves those failures out of their group (the run's failed total, from the
  counters, is repaired by the sweeper; the groups are a view and are not). A failed update is
  logged and never fails the batch.

Reading a run's groups is one Query per partition (`counter_count` of them, at most 50),
whatever the run's size.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from microprocess.ledger.counters import MAX_MARKERS_PER_UPDATE, marker_clauses, marker_name, stale_markers
from microprocess.ledger.records import _from_ddb, _is_conditional_failure, _to_ddb, utc_now_iso

if TYPE_CHECKING:
    from microprocess.ledger.store import LedgerStore

log = logging.getLogger(__name__)

#: The normalized error text kept per group, characters.
ERROR_TEXT_MAX = 240
#: Example task ids kept per group and partition (the reader merges the partitions').
EXAMPLES_PER_GROUP = 3
#: Groups whose pending marker removals a process remembers (beyond: left, stale within the hour).
MAX_GROUPS_REMEMBERED = 512
#: Groups read per partition (a run with more distinct errors shows the first ones, by key).
GROUPS_READ_PER_PARTITION = 500

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_HEX = re.compile(r"\b(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{12,}\b")
_DIGITS = re.compile(r"\d+")
_HTTP = re.compile(r"^HTTP \d{3}\b")
_SPACES = re.compile(r"\s+")


def normalize_error(error: str | None) -> str:
    """The error text with what varies from task to task replaced: UUIDs by `<uuid>`, long hex
    runs by `<hex>`, every other run of digits by `#` (a leading `HTTP 422` is kept: the status
    is the cause). Whitespace is collapsed and the text cut to `ERROR_TEXT_MAX` characters."""
    text = _SPACES.sub(" ", (error or "").strip()) or "(no error text)"
    head_match = _HTTP.match(text)
    head = head_match.group(0) if head_match else ""
    rest = text[len(head) :]
    rest = _UUID.sub("<uuid>", rest)
    rest = _HEX.sub("<hex>", rest)
    rest = _DIGITS.sub("#", rest)
    normalized = head + rest
    return normalized if len(normalized) <= ERROR_TEXT_MAX else normalized[: ERROR_TEXT_MAX - 1] + "…"


def group_key(normalized: str) -> str:
    """The group's key: 16 hex characters of the normalized text's SHA-256."""
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


def _group_pk(run_id: str, j: int) -> str:
    return f"RUN#{run_id}#E{j}"


@dataclass(frozen=True)
class FailureGroup:
    """One kind of error of a run.

    Attributes:
        key: the group's key (`group_key`).
        error: the normalized error text.
        count: failures counted in the group (at most the run's failed total).
        examples: a few task ids that failed this way.
        last_at: when a failure was last added (ISO-8601, UTC).
    """

    key: str
    error: str
    count: int
    examples: tuple[str, ...] = ()
    last_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "error": self.error,
            "count": self.count,
            "examples": list(self.examples),
            "last_at": self.last_at,
        }


@dataclass
class _Batch:
    error: str
    task_ids: list[str] = field(default_factory=list)


class FailureGroupWriter:
    """Adds a batch's new failures to their groups (one update per group), once."""

    def __init__(self, ledger: LedgerStore) -> None:
        self._ledger = ledger
        self._homes: dict[str, int] = {}
        self._owed: dict[tuple[str, int, str], list[str]] = {}
        self._lock = threading.Lock()

    def _home(self, run_id: str, counter_count: int) -> int:
        with self._lock:
            if run_id not in self._homes:
                self._homes[run_id] = self._ledger._rng.randrange(max(counter_count, 1))
                while len(self._homes) > MAX_GROUPS_REMEMBERED:
                    self._homes.pop(next(iter(self._homes)))
            return self._homes[run_id]

    def record(self, run_id: str, counter_count: int, failures: Iterable[tuple[str, str | None]]) -> None:
        """Add `(task_id, error)` failures, each counted by this batch only, to their groups.
        Never raises: a group update that failed is logged (its failures stay uncounted there)."""
        batches: dict[str, _Batch] = {}
        for task_id, error in failures:
            text = normalize_error(error)
            batches.setdefault(group_key(text), _Batch(text)).task_ids.append(task_id)
        if not batches:
            return
        j = self._home(run_id, counter_count)
        for key, batch in batches.items():
            try:
                self._add(run_id, j, key, batch)
            except Exception:
                log.exception(
                    "run %s: %d failures not added to their error group %s (the failed total is counted)",
                    run_id,
                    len(batch.task_ids),
                    key,
                )

    def _add(self, run_id: str, j: int, key: str, batch: _Batch) -> None:
        ledger = self._ledger
        slot = (run_id, j, key)
        with self._lock:
            owed = self._owed.pop(slot, [])[:MAX_MARKERS_PER_UPDATE]
        marker = marker_name(time.time())
        names, removal = marker_clauses(marker, owed)
        names["#e"] = "error"
        values = {
            ":one": 1,
            ":k": len(batch.task_ids),
            ":msg": batch.error,
            ":ex": batch.task_ids[:EXAMPLES_PER_GROUP],
            ":now": utc_now_iso(),
        }
        try:
            resp = ledger.client.update_item(
                TableName=ledger.table_name,
                Key=_to_ddb({"pk": _group_pk(run_id, j), "sk": f"E#{key}"}),
                UpdateExpression=(
                    "SET #b = :one, #e = if_not_exists(#e, :msg), examples = if_not_exists(examples, :ex), "
                    "last_at = :now ADD n :k" + removal
                ),
                ConditionExpression="attribute_not_exists(#b)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=_to_ddb(values),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            new = _from_ddb(resp["Attributes"])
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                self._owe(slot, [*owed, marker])  # applied or not: removing a missing attribute is harmless
                raise
            new = _from_ddb(exc.response.get("Item", {}) or {})
            if marker not in new:  # pragma: no cover - a fresh 72-bit marker name exists only if we set it
                self._owe(slot, owed)
                raise
        self._owe(slot, [marker, *stale_markers(new, time.time())])

    def _owe(self, slot: tuple[str, int, str], names: list[str]) -> None:
        with self._lock:
            pending = self._owed.setdefault(slot, [])
            pending.extend(name for name in names if name not in pending)
            while len(self._owed) > MAX_GROUPS_REMEMBERED:
                self._owed.pop(next(iter(self._owed)))  # left on the item: stale within the hour


def read_failure_groups(ledger: LedgerStore, run_id: str, counter_count: int) -> list[FailureGroup]:
    """A run's failure groups, largest first: one Query per partition (`counter_count`), merged."""

    def partition(j: int) -> list[dict[str, Any]]:
        resp = ledger.client.query(
            TableName=ledger.table_name,
            KeyConditionExpression="pk = :p AND begins_with(sk, :e)",
            ExpressionAttributeValues=_to_ddb({":p": _group_pk(run_id, j), ":e": "E#"}),
            Limit=GROUPS_READ_PER_PARTITION,
        )
        return [_from_ddb(raw) for raw in resp.get("Items", [])]

    with ThreadPoolExecutor(max_workers=min(max(counter_count, 1), 16)) as pool:
        parts = list(pool.map(partition, range(max(counter_count, 1))))
    merged: dict[str, dict[str, Any]] = {}
    for items in parts:
        for item in items:
            key = str(item["sk"]).removeprefix("E#")
            into = merged.setdefault(key, {"error": item.get("error", ""), "n": 0, "examples": [], "last_at": None})
            into["n"] += int(item.get("n", 0))
            for ex in item.get("examples", []):
                if ex not in into["examples"] and len(into["examples"]) < EXAMPLES_PER_GROUP:
                    into["examples"].append(str(ex))
            last = item.get("last_at")
            if last and (into["last_at"] is None or last > into["last_at"]):
                into["last_at"] = last
    groups = [
        FailureGroup(key, str(v["error"]), v["n"], tuple(sorted(v["examples"])), v["last_at"])
        for key, v in merged.items()
    ]
    return sorted(groups, key=lambda g: (-g.count, g.error))
