"""The ledger's records: key schema, statuses, run/task/progress records and item keys.

Plain data and the DynamoDB key layout; `microprocess.ledger.table.Ledger` (one module per concern)
reads and writes them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError


@dataclass(frozen=True)
class LedgerSchema:
    """The ledger table's key schema: the single declaration infra and the core share."""

    partition_key: str = "pk"
    sort_key: str = "sk"
    runs_index: str = "runs-by-job"
    runs_index_partition_key: str = "gsi1pk"
    runs_index_sort_key: str = "gsi1sk"


LEDGER_SCHEMA = LedgerSchema()


class RunStatus(StrEnum):
    SPLITTING = "SPLITTING"
    RUNNING = "RUNNING"
    REDUCING = "REDUCING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    #: `microprocess pause`: no pushes, no split; `paused_from` on the run item says where it resumes.
    PAUSED = "PAUSED"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class TaskState(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class LedgerError(Exception):
    """A ledger operation that cannot be done; the message says why."""


class RunNotFound(LedgerError):
    pass


class RunNotActive(LedgerError):
    """The run is cancelled or finished, so the operation does not apply."""


#: The split cursor of a segment that has been read to its end.
CURSOR_DONE = "<done>"


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    job: str
    status: RunStatus
    shard_count: int
    counter_count: int
    expected: int
    split_done: bool
    cursors: dict[str, str]
    seg_counts: dict[str, int]
    created_at: str
    split_finished_at: str | None = None
    reduce_claimed_at: str | None = None
    finished_at: str | None = None
    report_uri: str | None = None
    error: str | None = None
    targets_final: bool = False
    source_run: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    updated_at: str | None = None
    finalize_claimed_at: str | None = None
    sweep_done: int | None = None
    sweep_changed_at: str | None = None
    #: What the run reads, recorded when it is created (`SourceRecord.as_dict()`); empty for
    #: runs created before sources were recorded (they fall back to the job's declared source).
    source: dict[str, Any] = field(default_factory=dict)
    #: Run-time parameters from the start event, passed into every task by the forwarder.
    params: dict[str, Any] = field(default_factory=dict)
    email_sent_at: str | None = None
    #: When the run was stopped before its end (`control.stop.stop_run`): its reduce reports what
    #: was done and lists the rest as not attempted.
    stopped_early_at: str | None = None
    #: When its source was found unreadable: the run is stopped and ends FAILED whatever its counts.
    source_failed_at: str | None = None
    #: The fair-queue tenants its tasks are spread over (`microprocess.pipeline.tenants`): 1, or
    #: its job's `priority_weight` for a run started `--priority high`; 1 for runs before this.
    tenants: int = 1

    def owns_task(self, task_id: str) -> bool | None:
        """Whether `task_id` is one of this run's tasks: True, False, or None when it cannot
        tell yet (its page may be sent but not accounted). Task ids are `<segment>-<seq>`."""
        seg, _, seq = task_id.partition("-")
        if seg not in self.cursors or not seq.isdigit():
            return False
        if int(seq) < self.seg_counts.get(seg, 0):
            return True
        return False if self.split_done or self.cursors[seg] == CURSOR_DONE else None


def failed_percentage(failed: int, expected: int) -> float:
    """The failed share of a run's tasks, in percent (0 for an empty run). For display: the
    verdict is `run_verdict`, which compares exactly and never a rounded figure."""
    return 100.0 * failed / expected if expected else 0.0


def run_verdict(failed: int, expected: int, tolerated_failure_pct: float) -> RunStatus:
    """SUCCEEDED, or FAILED when failures exceed the tolerated percentage of the expected tasks.

    The one rule for the ledger, the report and the email: exact (decimal) arithmetic on the
    counts, never a rounded percentage (2,501 failures in 250,000 tasks is 1.0004%: FAILED with
    1% tolerated, although it shows as 1.0%). Callers display `failed_percentage` as they like.
    """
    if expected <= 0:
        return RunStatus.SUCCEEDED
    over = Decimal(failed) * 100 > Decimal(str(tolerated_failure_pct)) * Decimal(expected)
    return RunStatus.FAILED if over else RunStatus.SUCCEEDED


def ended_status(run: RunRecord, failed: int, expected: int, tolerated_failure_pct: float) -> RunStatus:
    """The status a reduced run ends with: `run_verdict`, except that a run stopped before its
    end (by the stop-early rule, an operator, or a source that cannot be read) ends FAILED
    whatever its counts: some of its tasks never ran."""
    if run.stopped_early_at or run.source_failed_at:
        return RunStatus.FAILED
    return run_verdict(failed, expected, tolerated_failure_pct)


@dataclass(frozen=True)
class TaskOutcome:
    """The terminal outcome of one task, as the forwarder or dead-letter handler saw it."""

    task_id: str
    shard: int
    state: TaskState
    attempts: int
    item_id: str | None = None
    result: Any = None
    error: str | None = None
    item: Any = None  # kept for FAILED tasks so that `retry-failed` can re-run them
    item_ref: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    shard: int
    state: TaskState
    attempts: int
    item_id: str | None
    result: Any
    error: str | None
    finished_at: str
    item: Any = None
    item_ref: str | None = None


@dataclass(frozen=True)
class RecordResult:
    newly_recorded: list[str]
    duplicates: list[str]
    counted: bool  # False when the counter update was fenced off by a repair (sweeper recounts)
    claimed_reduce: bool


@dataclass(frozen=True)
class RepairState:
    """Where a run's counter repair stands: fenced at `epoch`, `shards_counted` of
    `shard_count` recounted; `done` with the recounted totals when the counters are rewritten."""

    run_id: str
    epoch: int
    shards_counted: int
    shard_count: int
    done: bool
    succeeded: int
    failed: int


@dataclass(frozen=True)
class Progress:
    run_id: str
    job: str
    status: RunStatus
    expected: int
    succeeded: int
    failed: int
    split_done: bool
    created_at: str
    finished_at: str | None
    report_uri: str | None
    error: str | None

    @property
    def pending(self) -> int:
        return max(self.expected - self.succeeded - self.failed, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job,
            "status": str(self.status),
            "expected": self.expected,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "pending": self.pending,
            "split_done": self.split_done,
            "started_at": self.created_at,
            "finished_at": self.finished_at,
            "report_uri": self.report_uri,
            "error": self.error,
        }


@dataclass(frozen=True)
class _Counter:
    index: int
    succeeded: int
    failed: int
    done: int
    room: int | None
    epoch: int


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_ser = TypeSerializer()
_de = TypeDeserializer()


def _to_ddb(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in item.items() if v is not None}


def _from_ddb(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


#: The attribute holding the token of the write that created an item or took a claim: a
#: conditional write that the SDK retried after it was applied fails its own condition, and
#: finds its token there (ARCHITECTURE §3.8, ambiguous failures are safe).
WRITE_TOKEN = "wtok"


def _token() -> str:
    return secrets.token_hex(8)


def _written_by(exc: ClientError, token: str, attribute: str = WRITE_TOKEN) -> bool:
    """Whether a conditional write that failed had in fact been applied by the caller (the
    item, returned by `ReturnValuesOnConditionCheckFailure=ALL_OLD`, carries its token)."""
    old = exc.response.get("Item") or {}
    return bool(old) and _from_ddb(old).get(attribute) == token


def insert_statement(table_name: str, item: dict[str, Any]) -> dict[str, Any]:
    """One PartiQL `INSERT` of a plain item, for `BatchExecuteStatement`: the values travel as
    parameters (never in the statement's text); DynamoDB fails the statement with `DuplicateItem`
    when an item with the same key exists (a conditional put's `attribute_not_exists`)."""
    values = _to_ddb(item)
    names = list(values)
    for name in names:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"attribute name {name!r} cannot go in a PartiQL INSERT as it is")
    if '"' in table_name:
        raise ValueError(f"table name {table_name!r} cannot go in a PartiQL statement")
    fields = ", ".join(f"'{name}': ?" for name in names)
    return {"Statement": f'INSERT INTO "{table_name}" VALUE {{{fields}}}', "Parameters": [values[n] for n in names]}


def _run_pk(run_id: str) -> str:
    return f"RUN#{run_id}"


def _run_key(run_id: str) -> dict[str, str]:
    return {"pk": _run_pk(run_id), "sk": "RUN"}


def _counter_pk(run_id: str, j: int) -> str:
    return f"RUN#{run_id}#C{j}"


def _shard_pk(run_id: str, k: int) -> str:
    return f"RUN#{run_id}#S{k}"


#: Named points where a crash can be injected (chaos) between ledger writes.
CRASH_AFTER_TASK_WRITE = "after_task_write"
CRASH_AFTER_COUNTER_UPDATE = "after_counter_update"

#: DynamoDB's item size limit (names and values, UTF-8), bytes.
DYNAMODB_ITEM_LIMIT_BYTES = 400 * 1024
#: What a task record may hold before its result is refused (room for keys and bookkeeping).
TASK_RECORD_LIMIT_BYTES = DYNAMODB_ITEM_LIMIT_BYTES - 4 * 1024


def _item_size(item: dict[str, Any]) -> int:
    """An upper estimate of a plain item's DynamoDB size (attribute names + values), bytes."""
    total = 0
    for name, value in item.items():
        if value is None:
            continue
        total += len(name.encode()) + _value_size(value)
    return total


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int | float | Decimal):
        return 21
    if isinstance(value, dict):
        return 3 + sum(len(str(k).encode()) + 1 + _value_size(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return 3 + sum(1 + _value_size(v) for v in value)
    return len(str(value).encode())
