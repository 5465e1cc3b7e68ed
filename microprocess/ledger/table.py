"""The run ledger: one DynamoDB table holding runs (parents), tasks (children) and counters.

Layout (declared once in `LEDGER_SCHEMA`; the CDK construct reads the same object):

| item    | pk                 | sk          | holds |
| ------- | ------------------ | ----------- | ----- |
| run     | `RUN#<run>`        | `RUN`       | job, status, split cursors, expected, timings, report |
| counter | `RUN#<run>#C<j>`   | `COUNT`     | succeeded, failed, done, room, epoch (j < counter_count) |
| task    | `RUN#<run>#S<k>`   | `T#<task>`  | state, result or error, attempts; written once |
| failure | `RUN#<run>#S<k>`   | `F#<task>`  | a failed task's item and error (what `retry-failed` reads) |
| items   | `RUN#<run>`        | `ITEMS`     | the inline items a run was started with |
| parts   | `RUN#<run>`        | `PARTS`     | the reduced parts |
| repair  | `RUN#<run>`        | `REPAIR`    | the fence and per-shard recounts of a repair under way |
| failure group | `RUN#<run>#E<j>` | `E#<group>` | failures counted per kind of error, examples (`failure_groups`) |

How the invariants hold (ARCHITECTURE §3):

* **Counted once.** A task is counted only by the writer whose conditional put
  (`attribute_not_exists`) created its record. A batch's newly written tasks are then
  added with *one* update to *one* randomly chosen counter item (no hot key: every
  counter takes ~1/counter_count of the batches).
* **Exact completion with spread counters.** Until the split is done, counters only
  grow. When it is done, every counter gets `room` = its share of what is left, so that
  sum(done + room) == expected. From then on a batch adds `done += n, room -= n` under
  the condition `room >= n`; `done + room` never changes, so the targets are exact. The
  batch that takes a counter's room to 0 runs the full completion check (read the run
  and all counters, consistently); the last batch of a run always empties its counter.
* **Reduce once.** The claim is `SET status = REDUCING IF status = RUNNING AND split_done`.
* **Ambiguous failures are safe** (§3.8). The SDK retries a write after a 5xx or a timeout
  that DynamoDB may have applied. Puts and claims carry a fresh token and return the old
  item when their condition fails: a retry that finds its own token was applied. A counter
  ADD sets a `b_<time><token>` marker under `attribute_not_exists`, so its retry fails and
  finds it. The writer's next update of that counter removes it in the same write; markers
  older than an hour (a writer that died or moved on) go with any update that sees them.
* **Repair never over-counts.** A crash between a task's put and the counter update
  under-counts. The sweeper repairs by recounting the task records inside an *epoch
  fence*: it bumps every counter's epoch, recounts shard by shard (in steps that fit a
  function's time limit, noted on the `REPAIR` item so that any later sweep resumes an
  interrupted repair: the fence is never a lock), then rewrites the counters with the
  next epoch, all by transactions. A counter update is conditional on the epoch the
  writer saw before it wrote its tasks, so no task is both recounted and added.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.exceptions import ClientError

from microprocess.declarations import JobDeclaration
from microprocess.ledger.failure_groups import FailureGroupWriter
from microprocess.ledger.records import (
    CRASH_AFTER_COUNTER_UPDATE,
    CRASH_AFTER_TASK_WRITE,
    CURSOR_DONE,
    LEDGER_SCHEMA,
    TASK_RECORD_LIMIT_BYTES,
    WRITE_TOKEN,
    LedgerError,
    Progress,
    RecordResult,
    RepairState,
    RunNotActive,
    RunNotFound,
    RunRecord,
    RunStatus,
    TaskOutcome,
    TaskRecord,
    TaskState,
    _Counter,
    _counter_pk,
    _from_ddb,
    _is_conditional_failure,
    _item_size,
    _run_key,
    _run_pk,
    _shard_pk,
    _to_ddb,
    _token,
    _written_by,
    ended_status,
    failed_percentage,
    insert_statement,
    run_verdict,
    utc_now_iso,
)

log = logging.getLogger(__name__)

#: Batches a process adds to one counter before it moves to another (see `Ledger._home_counter`):
#: each move costs one write (the marker left on the old counter is removed).
HOME_BATCHES = 16
#: Runs whose counter and markers a process remembers (a long-lived function sees many runs).
MAX_RUNS_REMEMBERED = 64
#: Age after which any writer removes a counter marker it sees: far beyond the longest life of
#: the call that set it (a Lambda invocation lasts 15 minutes at most), s.
MARKER_STALE_S = 3600
#: Size of a counter item (DynamoDB's count, bytes) above which a writer removes its marker at
#: once rather than with its next update: an update is billed a write unit per 1 KB started.
COUNTER_KEEP_BYTES = 900
#: Markers one update removes at most (the rest wait for the next one).
MAX_MARKERS_PER_UPDATE = 40
#: Task records written together, one PartiQL INSERT each, in one BatchExecuteStatement
#: (DynamoDB takes at most 25 statements per call).
INSERT_BATCH = 25
#: Records bigger than this go one by one (a conditional put): a batch stays a small request.
INSERT_ITEM_MAX_BYTES = 4096
_MARKER = "b_"


def marker_name(now: float) -> str:
    """A counter marker's attribute name: `b_` and 18 base64url characters holding the time
    (4 bytes of Unix seconds) and 9 random bytes (72 bits: no two writers pick the same)."""
    raw = (int(now) & 0xFFFFFFFF).to_bytes(4, "big") + secrets.token_bytes(9)
    return _MARKER + base64.urlsafe_b64encode(raw).decode()[:18]


def marker_time(name: str) -> int | None:
    """The Unix seconds (mod 2^32) a marker was set at; None for a name that is not a timed
    marker (markers from before they carried their time are `b_` and 16 hex digits)."""
    if not name.startswith(_MARKER) or len(name) != len(_MARKER) + 18:
        return None
    try:
        raw = base64.urlsafe_b64decode(name[len(_MARKER) :] + "==")
    except ValueError:
        return None
    return int.from_bytes(raw[:4], "big")


def stale_markers(counter: dict[str, Any], now: float) -> list[str]:
    """The timed markers on a counter item set more than `MARKER_STALE_S` ago (at most
    `MAX_MARKERS_PER_UPDATE`). A time ahead of `now` (clock skew) is not stale."""
    stale = []
    for name in counter:
        born = marker_time(name)
        if born is None:
            continue
        age = (int(now) - born) & 0xFFFFFFFF
        if MARKER_STALE_S < age < 2**31:
            stale.append(name)
    return sorted(stale)[:MAX_MARKERS_PER_UPDATE]


def _counter_size(counter: dict[str, Any]) -> int:
    """A counter item's size as DynamoDB bills it: names, strings, numbers (about one byte per
    two digits, plus one), bytes."""
    total = 0
    for name, value in counter.items():
        total += len(name.encode())
        if isinstance(value, str):
            total += len(value.encode())
        else:
            total += len(str(abs(int(value)))) // 2 + 2
    return total


class Ledger:
    """The run ledger over one DynamoDB table.

    Args:
        table_name: the deployed table's name (passed in, never hard-coded).
        client: a boto3 DynamoDB client; created lazily when omitted.
        rng: source of randomness for the counter choice (seedable in tests).
        crash_hook: called with a crash-point name between writes; chaos testing
            makes it raise. `None` in production.
    """

    def __init__(
        self,
        table_name: str,
        *,
        client: Any = None,
        rng: random.Random | None = None,
        crash_hook: Callable[[str], None] | None = None,
        max_workers: int = 10,
    ) -> None:
        self.table_name = table_name
        self._client = client
        self._rng = rng or random.Random()
        self._crash_hook = crash_hook
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ledger")
        self._epochs: dict[str, int] = {}
        self._capped: dict[str, bool] = {}  # per run: have the counters' targets been set?
        self._homes: dict[str, tuple[int, int]] = {}  # per run: (counter, batches left on it)
        self._short: dict[str, set[int]] = {}  # per run: counters seen without room for another batch
        self._markers: dict[tuple[str, int], list[str]] = {}  # (run, counter): markers to remove
        self._lock = threading.Lock()
        #: Adds newly counted failures to their error groups (`failure_groups`).
        self.failure_groups = FailureGroupWriter(self)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("dynamodb")
        return self._client

    # ------------------------------------------------------------------ runs

    def create_run(
        self,
        run_id: str,
        job: JobDeclaration,
        *,
        segments: int = 1,
        source_run: str | None = None,
        source: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        inline_items: list[Any] | None = None,
    ) -> tuple[RunRecord, bool]:
        """Create the run if it does not exist. Returns (run, created).

        The run records what it reads (`source`, a plain dict the splitter builds), its
        run-time `params`, and its own shard and counter counts, so that every later step
        (a resumed splitter, the sweeper, the forwarder) uses the run's settings, never a
        redeployed job's. Inline items are kept on an item of their own (`RUN#<run>` /
        `ITEMS`) so that a restarted splitter reads the same list.

        Idempotent: a second call with the same run id returns the existing run
        (created=False). The same run id for another job is an error.
        """
        now = utc_now_iso()
        if inline_items is not None:
            self._put_once(
                {
                    "pk": _run_pk(run_id),
                    "sk": "ITEMS",
                    "items": json.dumps(inline_items, separators=(",", ":"), default=str),
                }
            )
        item = {
            "pk": _run_pk(run_id),
            "sk": "RUN",
            "run_id": run_id,
            "job": job.name,
            "status": str(RunStatus.SPLITTING),
            "shard_count": job.shard_count,
            "counter_count": job.counter_count,
            "expected": 0,
            "pages": 0,
            "split_done": False,
            "targets_final": False,
            "cursors": {str(s): "" for s in range(segments)},
            "seg_counts": {str(s): 0 for s in range(segments)},
            "created_at": now,
            "updated_at": now,
            "source_run": source_run,
            "source": json.dumps(source, sort_keys=True, default=str) if source else None,
            "params": json.dumps(params, sort_keys=True, default=str) if params else None,
            LEDGER_SCHEMA.runs_index_partition_key: f"JOB#{job.name}",
            LEDGER_SCHEMA.runs_index_sort_key: f"{now}#{run_id}",
        }
        if self._put_once(item):
            return self._run_from_item(item), True
        existing = self.get_run(run_id)
        if existing is None:  # pragma: no cover - a put that failed its condition means the item exists
            raise LedgerError(f"run {run_id} exists but could not be read")
        if existing.job != job.name:
            raise LedgerError(f"run id {run_id} already belongs to job '{existing.job}', not '{job.name}'")
        return existing, False

    def _put_once(self, item: dict[str, Any]) -> bool:
        """Put `item` if its key is new. True if this call wrote it: a put the SDK retried
        after it was applied is recognised by its write token (ARCHITECTURE §3.8)."""
        token = _token()
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=_to_ddb({**item, WRITE_TOKEN: token}),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return True
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return _written_by(exc, token)

    def inline_items(self, run_id: str) -> list[Any]:
        """The inline items a run was started with (empty when it was started with none)."""
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "ITEMS"}),
            ConsistentRead=True,
        )
        if "Item" not in resp:
            return []
        return list(json.loads(_from_ddb(resp["Item"])["items"]))

    def get_run(self, run_id: str, *, consistent: bool = True) -> RunRecord | None:
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            ConsistentRead=consistent,
        )
        if "Item" not in resp:
            return None
        return self._run_from_item(_from_ddb(resp["Item"]))

    def require_run(self, run_id: str) -> RunRecord:
        run = self.get_run(run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} is not in the ledger ({self.table_name})")
        return run

    @staticmethod
    def _run_from_item(item: dict[str, Any]) -> RunRecord:
        return RunRecord(
            run_id=item["run_id"],
            job=item["job"],
            status=RunStatus(item["status"]),
            shard_count=int(item["shard_count"]),
            counter_count=int(item["counter_count"]),
            expected=int(item.get("expected", 0)),
            split_done=bool(item.get("split_done", False)),
            cursors={k: str(v) for k, v in item.get("cursors", {}).items()},
            seg_counts={k: int(v) for k, v in item.get("seg_counts", {}).items()},
            created_at=item["created_at"],
            split_finished_at=item.get("split_finished_at"),
            reduce_claimed_at=item.get("reduce_claimed_at"),
            finished_at=item.get("finished_at"),
            report_uri=item.get("report_uri"),
            error=item.get("error"),
            targets_final=bool(item.get("targets_final", False)),
            source_run=item.get("source_run"),
            summary=json.loads(item["summary"]) if item.get("summary") else {},
            updated_at=item.get("updated_at"),
            finalize_claimed_at=item.get("finalize_claimed_at"),
            sweep_done=int(item["sweep_done"]) if "sweep_done" in item else None,
            sweep_changed_at=item.get("sweep_changed_at"),
            source=json.loads(item["source"]) if item.get("source") else {},
            params=json.loads(item["params"]) if item.get("params") else {},
            email_sent_at=item.get("email_sent_at"),
            stopped_early_at=item.get("stopped_early_at"),
            source_failed_at=item.get("source_failed_at"),
        )

    def list_runs(self, job: str, *, limit: int = 20) -> list[RunRecord]:
        """The newest runs of `job`, newest first."""
        resp = self.client.query(
            TableName=self.table_name,
            IndexName=LEDGER_SCHEMA.runs_index,
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": LEDGER_SCHEMA.runs_index_partition_key},
            ExpressionAttributeValues=_to_ddb({":p": f"JOB#{job}"}),
            ScanIndexForward=False,
            Limit=limit,
        )
        return [self._run_from_item(_from_ddb(i)) for i in resp.get("Items", [])]

    def active_runs(self, jobs: Iterable[str], *, limit: int = 100) -> list[RunRecord]:
        """Runs of `jobs` that are not terminal (for the sweeper)."""
        return [r for j in jobs for r in self.list_runs(j, limit=limit) if not r.status.terminal]

    # ----------------------------------------------------------------- split

    def account_page(self, run_id: str, *, segment: str, cursor_from: str, cursor_to: str, count: int) -> bool:
        """Account one sent page: move the segment's cursor and add `count` expected tasks.

        One conditional write on the run item: it succeeds only if the segment's cursor
        is still `cursor_from`, so a page is accounted at most once (an SDK retry of an
        applied write finds its own token and answers True). Returns False when the cursor
        had already moved (a resumed splitter re-sent the page).
        Raises `RunNotActive` if the run is no longer splitting (cancelled).
        """
        if self._claim(
            _run_key(run_id),
            set_expr="cursors.#s = :to, seg_counts.#s = seg_counts.#s + :n, updated_at = :now",
            add_expr="expected :n, pages :one",
            remove_expr="split_errors",  # the errors `note_split_error` counts are those since the last page
            cond="cursors.#s = :from AND #st = :splitting",
            names={"#s": segment, "#st": "status"},
            values={
                ":to": cursor_to,
                ":from": cursor_from,
                ":n": count,
                ":one": 1,
                ":splitting": "SPLITTING",
                ":now": utc_now_iso(),
            },
            token_attr="tok_page",
        ):
            return True
        run = self.require_run(run_id)
        if run.status is not RunStatus.SPLITTING:
            raise RunNotActive(f"run {run_id} is {run.status}; it takes no more pages")
        return False

    def _claim(
        self,
        key: dict[str, Any],
        *,
        set_expr: str,
        cond: str,
        values: dict[str, Any],
        token_attr: str,
        names: dict[str, str] | None = None,
        add_expr: str = "",
        remove_expr: str = "",
    ) -> bool:
        """A conditional update that is safe when the SDK retries it after it was applied:
        it also sets `token_attr` to a fresh token, and a failed condition whose item holds
        that token means this caller's write went through (ARCHITECTURE §3.8).
        True if this call's update was applied."""
        token = _token()
        expr = f"SET #ctok = :ctok, {set_expr}" + (f" ADD {add_expr}" if add_expr else "")
        expr += f" REMOVE {remove_expr}" if remove_expr else ""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_to_ddb(key),
                UpdateExpression=expr,
                ConditionExpression=cond,
                ExpressionAttributeNames={**(names or {}), "#ctok": token_attr},
                ExpressionAttributeValues=_to_ddb({**values, ":ctok": token}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return True
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return _written_by(exc, token, token_attr)

    def note_split_error(self, run_id: str, error: str) -> int:
        """Remember a transient error of the split; returns how many the run has had since
        its last accounted page. Each error adds its own token to a set, so an SDK retry of
        this write does not count it twice."""
        resp = self.client.update_item(
            TableName=self.table_name,
            Key=_to_ddb(_run_key(run_id)),
            UpdateExpression="SET split_error = :e ADD split_errors :tok",
            ExpressionAttributeValues=_to_ddb({":e": error[:2000], ":tok": {_token()}}),
            ReturnValues="UPDATED_NEW",
        )
        return len(_from_ddb(resp["Attributes"]).get("split_errors", set()))

    def finish_split(self, run_id: str) -> bool:
        """Mark the split done, fix the counters' targets, and run the completion check.

        Idempotent (a resumed splitter or the sweeper may call it again).
        Returns True if this call claimed the reduce (an empty or already finished run).
        """
        run = self.require_run(run_id)
        if run.status is RunStatus.SPLITTING:
            pending = [s for s, c in run.cursors.items() if c != CURSOR_DONE]
            if pending:
                raise LedgerError(f"run {run_id}: segments {pending} are not read to the end")
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
                    UpdateExpression="SET split_done = :t, #st = :running, split_finished_at = :now",
                    ConditionExpression="#st = :splitting",
                    ExpressionAttributeNames={"#st": "status"},
                    ExpressionAttributeValues=_to_ddb(
                        {":t": True, ":running": "RUNNING", ":splitting": "SPLITTING", ":now": utc_now_iso()}
                    ),
                )
            except ClientError as exc:
                if not _is_conditional_failure(exc):
                    raise
            run = self.require_run(run_id)
        if run.status is not RunStatus.RUNNING or not run.split_done:
            return False
        if not run.targets_final:
            self._set_targets(run)
        return self.check_completion(run_id)

    def _set_targets(self, run: RunRecord) -> None:
        """Give every counter a `room` so that sum(done + room) == expected, exactly."""
        run_id, expected = run.run_id, run.expected
        for _ in range(100):
            counters = self._read_counters(run_id, run.counter_count)
            unset = [c for c in counters if c.room is None]
            if unset:
                known = sum(c.done + (c.room or 0) for c in counters)
                remaining = max(expected - known, 0)
                for i, c in enumerate(unset):
                    share = remaining // len(unset) + (1 if i < remaining % len(unset) else 0)
                    try:
                        self.client.update_item(
                            TableName=self.table_name,
                            Key=_to_ddb({"pk": _counter_pk(run_id, c.index), "sk": "COUNT"}),
                            UpdateExpression="SET room = :r",
                            ConditionExpression="attribute_not_exists(room)",
                            ExpressionAttributeValues=_to_ddb({":r": share}),
                        )
                    except ClientError as exc:
                        if not _is_conditional_failure(exc):
                            raise
                continue
            # Every counter has a room now, so done + room is stable under concurrent adds.
            excess = sum(c.done + (c.room or 0) for c in counters) - expected
            if excess == 0:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
                    UpdateExpression="SET targets_final = :t",
                    ExpressionAttributeValues=_to_ddb({":t": True}),
                )
                return
            if excess < 0:  # completions that raced the shares were fewer than estimated
                self._adjust_room(run_id, counters[0].index, -excess)
                continue
            for c in sorted(counters, key=lambda c: -(c.room or 0)):
                take = min(c.room or 0, excess)
                if take <= 0:
                    continue
                if self._adjust_room(run_id, c.index, -take):
                    excess -= take
                if excess == 0:
                    break
        raise LedgerError(f"run {run_id}: could not settle the counter targets; the sweeper will retry")

    def _adjust_room(self, run_id: str, j: int, delta: int) -> bool:
        cond = "attribute_exists(room)" if delta >= 0 else "room >= :need"
        values: dict[str, Any] = {":d": delta}
        if delta < 0:
            values[":need"] = -delta
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"}),
                UpdateExpression="ADD room :d",
                ConditionExpression=cond,
                ExpressionAttributeValues=_to_ddb(values),
            )
            return True
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise

    # ----------------------------------------------------------- completions

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

    def _crash(self, point: str) -> None:
        if self._crash_hook is not None:
            self._crash_hook(point)

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

    def _known_epoch(self, run_id: str, counter_count: int) -> int:
        """The counters' epoch as last seen (read once per run per process)."""
        with self._lock:
            if run_id in self._epochs:
                return self._epochs[run_id]
        counters = self._read_counters(run_id, counter_count)
        epoch = max((c.epoch for c in counters), default=0)
        with self._lock:
            self._epochs[run_id] = epoch
        return epoch

    def _count(self, run_id: str, counter_count: int, epoch: int, s: int, f: int) -> tuple[bool, bool]:
        """Add s successes and f failures to counters. Returns (counted, emptied_a_counter)."""
        n = s + f
        j = self._home_counter(run_id, counter_count)
        outcome = self._add(run_id, j, epoch, s, f, capped=None)
        if outcome == "ok":
            return True, False
        if outcome == "emptied":
            return True, True
        if outcome == "fenced":
            return False, False
        # "no-room": rooms are getting small (the run's tail). Rather than trying counters
        # at random (each failed conditional write is billed), read them once and split.
        self._leave_home(run_id)
        # Split the batch over the counters that have room.
        emptied = False
        remaining_s, remaining_f = s, f
        for _ in range(10):
            counters = self._read_counters(run_id, counter_count)
            if any(c.epoch != epoch for c in counters):
                self._forget_epoch(run_id)
                return False, False
            self._note_short(run_id, [c.index for c in counters if (c.room or 0) < n])
            left: dict[int, int] = {}  # room each counter has after this batch, as read
            for c in sorted(counters, key=lambda c: -(c.room or 0)):
                room = c.room or 0
                if room <= 0 or remaining_s + remaining_f == 0:
                    left[c.index] = room
                    continue
                take_s = min(room, remaining_s)
                take_f = min(room - take_s, remaining_f)
                out = self._add(run_id, c.index, epoch, take_s, take_f, capped=True)
                if out in ("ok", "emptied"):
                    remaining_s -= take_s
                    remaining_f -= take_f
                    emptied = emptied or out == "emptied"
                left[c.index] = room - take_s - take_f if out in ("ok", "emptied") else 0
            if remaining_s + remaining_f == 0:
                # The next batches go to the counter with the most room left (as read).
                roomiest = max(left, key=lambda i: left[i], default=j)
                self._set_home(run_id, roomiest if left.get(roomiest, 0) > 0 else j)
                return True, emptied
        raise LedgerError(
            f"run {run_id}: no counter has room for {remaining_s + remaining_f} completions of {n}; "
            "more tasks completed than were accounted — the sweeper's repair will recount"
        )

    def _home_counter(self, run_id: str, counter_count: int) -> int:
        """The counter this process adds to: the same one for `HOME_BATCHES` batches, then
        another one at random (its marker removed first). Staying on one counter lets each
        update remove the marker the previous one left there; moving on keeps every counter
        at ~1/counter_count of the batches over a run."""
        with self._lock:
            short = self._short.get(run_id, set())
            home = self._homes.pop(run_id, None)
            if home is not None and home[0] < counter_count and home[1] > 0 and home[0] not in short:
                self._homes[run_id] = (home[0], home[1] - 1)
                return home[0]
            roomy = [i for i in range(counter_count) if i not in short] if short else []
            j = self._rng.choice(roomy) if roomy else self._rng.randrange(counter_count)
            self._homes[run_id] = (j, HOME_BATCHES - 1)
            while len(self._homes) > MAX_RUNS_REMEMBERED:  # a long-lived process: forget old runs
                old = next(iter(self._homes))
                self._homes.pop(old)
                self._short.pop(old, None)
                for key in [key for key in self._markers if key[0] == old]:
                    self._markers.pop(key)  # left on the counter: harmless, stale within the hour
        self._clear_markers(run_id, keep=j)
        return j

    def _leave_home(self, run_id: str) -> None:
        """Pick another counter for the next batch (this one had no room left)."""
        with self._lock:
            self._homes.pop(run_id, None)

    def _note_short(self, run_id: str, counters: Iterable[int]) -> None:
        """Counters seen without room for another batch like this one: this process does not pick
        them again for the run (a refused update is billed a write unit). Rooms only shrink within
        an epoch; a new epoch (`_forget_epoch`) forgets them."""
        with self._lock:
            self._short.setdefault(run_id, set()).update(counters)

    def _set_home(self, run_id: str, j: int) -> None:
        """Go on with counter j (markers owed elsewhere are removed now)."""
        with self._lock:
            self._homes[run_id] = (j, HOME_BATCHES)
        self._clear_markers(run_id, keep=j)

    def _take_markers(self, run_id: str, j: int) -> list[str]:
        with self._lock:
            owed = self._markers.pop((run_id, j), [])
            if len(owed) > MAX_MARKERS_PER_UPDATE:
                self._markers[(run_id, j)] = owed[MAX_MARKERS_PER_UPDATE:]
            return owed[:MAX_MARKERS_PER_UPDATE]

    def _give_back_markers(self, run_id: str, j: int, names: Iterable[str]) -> None:
        with self._lock:
            pending = self._markers.setdefault((run_id, j), [])
            pending.extend(name for name in names if name not in pending)

    def _clear_markers(self, run_id: str, *, keep: int) -> None:
        """Remove the markers this process still owes to the run's counters other than `keep`
        (one update each; a failure leaves them to a later try or to the stale clean-up)."""
        with self._lock:
            owed = [j for (r, j) in self._markers if r == run_id and j != keep]
        for j in owed:
            self._remove_markers(run_id, j, self._take_markers(run_id, j))

    def _remove_markers(self, run_id: str, j: int, names: list[str]) -> None:
        """Remove markers (idempotent). The batch is counted already, so a failure here only
        keeps them owed (for this process's next try) and says so."""
        if not names:
            return
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"}),
                UpdateExpression="REMOVE " + ", ".join(f"#r{i}" for i in range(len(names))),
                ExpressionAttributeNames={f"#r{i}": name for i, name in enumerate(names)},
            )
        except ClientError as exc:
            log.warning(
                "run %s counter %d: markers %s not removed yet (%s); kept for the next try", run_id, j, names, exc
            )
            self._give_back_markers(run_id, j, names)

    def _add(self, run_id: str, j: int, epoch: int, s: int, f: int, *, capped: bool | None) -> str:
        """Add to counter j, once.

        The update also sets a marker attribute named after a fresh token and the time
        (`b_<time><token>`, see `marker_name`) under the condition that it does not exist yet:
        an SDK retry of an applied update fails that condition and finds its marker, so the
        ADD is never applied twice (ARCHITECTURE §3.8).

        A marker may go once the call that set it has returned (no retry of it can follow).
        It is removed by this process's next update of the same counter, in the same write
        (`_home_counter` keeps a process on one counter for a few batches): one write per
        batch instead of an add and a removal. The same update removes markers older than
        `MARKER_STALE_S` that it saw on the counter (left by a process that died or moved on:
        no call lives that long, a function's limit is 15 minutes). If the counter comes back
        bigger than `COUNTER_KEEP_BYTES` (many processes on one counter), the marker is
        removed at once instead, so an update never costs a second write unit.
        """
        n = s + f
        epoch_clause = "attribute_not_exists(epoch)" if epoch == 0 else "epoch = :e"
        values: dict[str, Any] = {":s": s, ":f": f, ":n": n, ":one": 1}
        if epoch:
            values[":e"] = epoch
        if capped is None:  # the form that worked last for this run first: a failed try is a billed write
            first = self._capped.get(run_id, False)
            attempts = [first, not first]
        else:
            attempts = [capped]
        key = _to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"})
        owed = self._take_markers(run_id, j)
        for cap in attempts:
            marker = marker_name(time.time())
            names = {"#b": marker, **{f"#r{i}": name for i, name in enumerate(owed)}}
            removal = (" REMOVE " + ", ".join(f"#r{i}" for i in range(len(owed)))) if owed else ""
            if cap:
                expr = "SET #b = :one ADD succeeded :s, failed :f, done :n, room :neg" + removal
                cond = f"attribute_not_exists(#b) AND room >= :n AND {epoch_clause}"
                vals = {**values, ":neg": -n}
            else:
                expr = "SET #b = :one ADD succeeded :s, failed :f, done :n" + removal
                cond = f"attribute_not_exists(#b) AND attribute_not_exists(room) AND {epoch_clause}"
                vals = values
            try:
                resp = self.client.update_item(
                    TableName=self.table_name,
                    Key=key,
                    UpdateExpression=expr,
                    ConditionExpression=cond,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=_to_ddb(vals),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                new = _from_ddb(resp["Attributes"])
            except ClientError as exc:
                if not _is_conditional_failure(exc):
                    # Applied or not: owe both (removing a missing attribute is harmless).
                    self._give_back_markers(run_id, j, [*owed, marker])
                    raise
                old = _from_ddb(exc.response.get("Item", {}) or {})
                if marker in old:  # our own update, retried by the SDK after it was applied
                    new = old
                else:
                    if int(old.get("epoch", 0)) != epoch:
                        self._give_back_markers(run_id, j, owed)
                        self._forget_epoch(run_id)
                        return "fenced"
                    if cap and "room" not in old:
                        continue  # targets not set yet: the uncapped form applies
                    if not cap and "room" in old:
                        self._capped[run_id] = True
                        continue  # targets were just set: the capped form applies
                    self._give_back_markers(run_id, j, owed)
                    return "no-room"
            self._capped[run_id] = cap
            if cap and int(new.get("room", n)) < n:  # the next batch like this one would be refused here
                self._note_short(run_id, [j])
            stale = stale_markers(new, time.time())
            if _counter_size(new) > COUNTER_KEEP_BYTES:
                self._remove_markers(run_id, j, [marker, *stale])
            else:
                self._give_back_markers(run_id, j, [marker, *stale])
            return "emptied" if "room" in new and int(new["room"]) == 0 else "ok"
        self._give_back_markers(run_id, j, owed)
        self._note_short(run_id, [j])
        return "no-room"

    def _forget_epoch(self, run_id: str) -> None:
        with self._lock:
            self._epochs.pop(run_id, None)
            self._short.pop(run_id, None)

    def _read_counters(self, run_id: str, counter_count: int) -> list[_Counter]:
        keys = [_to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"}) for j in range(counter_count)]
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(keys), 100):
            request = {self.table_name: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
            for _ in range(20):
                resp = self.client.batch_get_item(RequestItems=request)
                for raw in resp.get("Responses", {}).get(self.table_name, []):
                    item = _from_ddb(raw)
                    found[int(item["pk"].rsplit("#C", 1)[1])] = item
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.05)
        return [
            _Counter(
                index=j,
                succeeded=int(found.get(j, {}).get("succeeded", 0)),
                failed=int(found.get(j, {}).get("failed", 0)),
                done=int(found.get(j, {}).get("done", 0)),
                room=int(found[j]["room"]) if j in found and "room" in found[j] else None,
                epoch=int(found.get(j, {}).get("epoch", 0)),
            )
            for j in range(counter_count)
        ]

    def check_completion(self, run_id: str) -> bool:
        """Claim the reduce if the split is done and every task is terminal. True exactly once per run."""
        run = self.require_run(run_id)
        if run.status is not RunStatus.RUNNING or not run.split_done:
            return False
        counters = self._read_counters(run_id, run.counter_count)
        succeeded = sum(c.succeeded for c in counters)
        failed = sum(c.failed for c in counters)
        if succeeded + failed < run.expected:
            return False
        if succeeded + failed > run.expected:
            raise LedgerError(
                f"run {run_id}: counters say {succeeded + failed} done but {run.expected} expected; "
                "refusing to reduce — run the sweeper's repair"
            )
        return self._claim(
            _run_key(run_id),
            set_expr="#st = :reducing, reduce_claimed_at = :now, succeeded = :s, failed = :f",
            cond="#st = :running AND split_done = :t",
            names={"#st": "status"},
            values={
                ":reducing": "REDUCING",
                ":running": "RUNNING",
                ":t": True,
                ":now": utc_now_iso(),
                ":s": succeeded,
                ":f": failed,
            },
            token_attr="tok_reduce",
        )

    # -------------------------------------------------------------- progress

    def progress(self, run_id: str) -> Progress:
        run = self.require_run(run_id)
        counters = self._read_counters(run_id, run.counter_count)
        return Progress(
            run_id=run.run_id,
            job=run.job,
            status=run.status,
            expected=run.expected,
            succeeded=sum(c.succeeded for c in counters),
            failed=sum(c.failed for c in counters),
            split_done=run.split_done,
            created_at=run.created_at,
            finished_at=run.finished_at,
            report_uri=run.report_uri,
            error=run.error,
        )

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

    # ---------------------------------------------------------------- cancel

    def cancel(self, run_id: str) -> bool:
        """Cancel a run that is splitting or running. Returns False if it had already ended."""
        self.require_run(run_id)
        return self._claim(
            _run_key(run_id),
            set_expr="#st = :c, finished_at = :now",
            cond="#st IN (:sp, :ru)",
            names={"#st": "status"},
            values={":c": "CANCELLED", ":now": utc_now_iso(), ":sp": "SPLITTING", ":ru": "RUNNING"},
            token_attr="tok_status",
        )

    # ---------------------------------------------------------------- reduce

    def record_reduce_part(self, run_id: str, shard: int, shard_count: int) -> bool:
        """Record that shard `shard` is reduced. True for exactly one caller: the one that
        completed the last part and so claims the finalize step.

        The set of reduced parts lives on its own item (`RUN#<run>` / `PARTS`), not on the
        run item, which stays small and takes no write per part."""
        resp = self.client.update_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "PARTS"}),
            UpdateExpression="ADD parts_done :p",
            ExpressionAttributeValues=_to_ddb({":p": {f"{shard:03d}"}}),
            ReturnValues="ALL_NEW",
        )
        done = _from_ddb(resp["Attributes"]).get("parts_done", set())
        if len(done) < shard_count:
            return False
        return self.claim_finalize(run_id)

    def parts_done(self, run_id: str) -> frozenset[str]:
        """The reduced parts of a run, as zero-padded shard numbers (`"007"`)."""
        resp = self.client.get_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "PARTS"}),
            ConsistentRead=True,
        )
        return frozenset(_from_ddb(resp.get("Item", {})).get("parts_done", set()))

    def claim_finalize(self, run_id: str, *, reclaim_before: str | None = None) -> bool:
        """Claim the finalize step once (or again, if the earlier claim is older than `reclaim_before`)."""
        cond = "#st = :reducing AND attribute_not_exists(finalize_claimed_at)"
        values: dict[str, Any] = {":reducing": "REDUCING", ":now": utc_now_iso()}
        if reclaim_before:
            cond = "#st = :reducing AND (attribute_not_exists(finalize_claimed_at) OR finalize_claimed_at < :old)"
            values[":old"] = reclaim_before
        return self._claim(
            _run_key(run_id),
            set_expr="finalize_claimed_at = :now",
            cond=cond,
            names={"#st": "status"},
            values=values,
            token_attr="tok_finalize",
        )

    def claim_email(self, run_id: str, *, lease_s: float | None = None) -> bool:
        """Claim the right to send the run's report email: True for one caller at a time, so
        that concurrent finalizes send it once (until `release_email` gives it back after a
        failed send).

        With `lease_s`, a claim older than that whose email was never recorded as sent
        (`record_email_sent`) may be taken again: a sender that died between its claim and its
        record is replaced, so the email is sent at least once (possibly twice, never zero times).
        Without it, the claim is for good (at most once)."""
        values: dict[str, Any] = {":now": utc_now_iso()}
        cond = "attribute_exists(pk) AND attribute_not_exists(email_claimed_at)"
        if lease_s is not None:
            values[":old"] = (datetime.now(UTC) - timedelta(seconds=lease_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            cond = (
                "attribute_exists(pk) AND attribute_not_exists(email_sent_at) AND "
                "(attribute_not_exists(email_claimed_at) OR email_claimed_at < :old)"
            )
        return self._claim(
            _run_key(run_id),
            set_expr="email_claimed_at = :now",
            cond=cond,
            values=values,
            token_attr="tok_email",
        )

    def email_sent(self, run_id: str) -> str | None:
        """When the run's report email was recorded as sent (ISO time), or None.

        The at-least-once protocol: the finalize checks this, sends the email, then calls
        `record_email_sent`. A crash between the send and the record sends it again on the
        retried finalize (a possible duplicate, never a lost email); once recorded, every
        later finalize skips it."""
        run = self.require_run(run_id)
        return run.email_sent_at

    def record_email_sent(self, run_id: str, message_id: str = "") -> bool:
        """Record that the run's report email went out (the deduplication record). True for
        the first record; idempotent afterwards (the first send's time and id are kept)."""
        return self._claim(
            _run_key(run_id),
            set_expr="email_sent_at = :now, email_message_id = :m",
            cond="attribute_exists(pk) AND attribute_not_exists(email_sent_at)",
            values={":now": utc_now_iso(), ":m": message_id or "-"},
            token_attr="tok_email_sent",
        )

    def release_email(self, run_id: str) -> None:
        """Give back an email claim whose send failed, so that a retried finalize sends it."""
        self.client.update_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            UpdateExpression="REMOVE email_claimed_at",
        )

    def finish_run(
        self, run_id: str, *, tolerated_failure_pct: float, report_uri: str, summary: dict[str, Any] | None = None
    ) -> RunStatus | None:
        """End a reducing run: SUCCEEDED, or FAILED when failures exceed the tolerance
        (`run_verdict`, the one rule the report and the email use too).

        Returns the final status, or None if the run was not reducing (already ended).
        """
        run = self.require_run(run_id)
        if run.status is not RunStatus.REDUCING:
            return None
        prog = self.progress(run_id)
        verdict = run_verdict(prog.failed, prog.expected, tolerated_failure_pct)
        status = ended_status(run, prog.failed, prog.expected, tolerated_failure_pct)
        error = (
            f"{prog.failed} of {prog.expected} tasks failed "
            f"({failed_percentage(prog.failed, prog.expected):.2f}%), above the tolerated {tolerated_failure_pct}%"
            if verdict is RunStatus.FAILED
            else None
        )
        if run.error and error:  # a reducing run with an error was stopped early: keep why, first
            error = f"{run.error}; at its end, {error}"
        elif error is None and status is RunStatus.FAILED:  # stopped within the tolerance: why it stopped
            error = run.error
        done = self._claim(
            _run_key(run_id),
            set_expr="#st = :s, finished_at = :now, report_uri = :r, summary = :sum, #err = :e",
            cond="#st = :reducing",
            names={"#st": "status", "#err": "error"},
            values={
                ":s": str(status),
                ":now": utc_now_iso(),
                ":r": report_uri,
                ":sum": json.dumps(summary or {}, default=str),
                ":e": error or "",
                ":reducing": "REDUCING",
            },
            token_attr="tok_status",
        )
        return status if done else None

    def fail_run(self, run_id: str, error: str) -> bool:
        """End a non-terminal run FAILED with `error` (e.g. its reduce failed for good, or
        its source cannot be read)."""
        return self._claim(
            _run_key(run_id),
            set_expr="#st = :f, finished_at = :now, #err = :e",
            cond="#st IN (:sp, :ru, :re)",
            names={"#st": "status", "#err": "error"},
            values={
                ":f": "FAILED",
                ":now": utc_now_iso(),
                ":e": error,
                ":sp": "SPLITTING",
                ":ru": "RUNNING",
                ":re": "REDUCING",
            },
            token_attr="tok_status",
        )

    def note_progress(self, run_id: str, done: int) -> str:
        """Sweeper bookkeeping: remember the done count; return when it last changed (ISO time)."""
        run = self.require_run(run_id)
        if run.sweep_done == done and run.sweep_changed_at:
            return run.sweep_changed_at
        now = utc_now_iso()
        self.client.update_item(
            TableName=self.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            UpdateExpression="SET sweep_done = :d, sweep_changed_at = :now",
            ExpressionAttributeValues=_to_ddb({":d": done, ":now": now}),
        )
        return now

    def requeue_reduce(self, run_id: str, *, claimed_before: str) -> bool:
        """Take the right to re-enqueue a reduce claimed before `claimed_before` and not
        finished: True for one caller per timeout window (it moves the claim time on)."""
        return self._claim(
            _run_key(run_id),
            set_expr="reduce_claimed_at = :now",
            cond="#st = :reducing AND reduce_claimed_at < :old",
            names={"#st": "status"},
            values={":now": utc_now_iso(), ":old": claimed_before, ":reducing": "REDUCING"},
            token_attr="tok_requeue",
        )

    # ---------------------------------------------------------------- repair

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


def ledger_table_definition(table_name: str) -> dict[str, Any]:
    """`create_table` arguments for the ledger (tests and tools; the CDK construct builds the
    same keys from `LEDGER_SCHEMA`)."""
    s = LEDGER_SCHEMA
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"}
            for name in (s.partition_key, s.sort_key, s.runs_index_partition_key, s.runs_index_sort_key)
        ],
        "KeySchema": [
            {"AttributeName": s.partition_key, "KeyType": "HASH"},
            {"AttributeName": s.sort_key, "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": s.runs_index,
                "KeySchema": [
                    {"AttributeName": s.runs_index_partition_key, "KeyType": "HASH"},
                    {"AttributeName": s.runs_index_sort_key, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


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
