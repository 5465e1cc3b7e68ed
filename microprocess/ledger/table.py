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

`Ledger` is composed of one class per concern, one module each: `store` (the client, put once,
claim), `runs`, `split`, `counters`, `tasks`, `completion`, `repair`, `results`; docs/ledger.md maps
each invariant to the module that keeps it.

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

import random
from collections.abc import Callable
from typing import Any

from microprocess.ledger.failure_groups import FailureGroupWriter
from microprocess.ledger.records import LEDGER_SCHEMA
from microprocess.ledger.repair import Repair
from microprocess.ledger.results import Results
from microprocess.ledger.split import SplitAccounting
from microprocess.ledger.tasks import TaskRecords


class Ledger(SplitAccounting, TaskRecords, Repair, Results):
    """The run ledger over one DynamoDB table, one concern per module (see the table above);
    its arguments are `LedgerStore`'s. It wires the failure groups' writer to the task records."""

    def __init__(
        self,
        table_name: str,
        *,
        client: Any = None,
        rng: random.Random | None = None,
        crash_hook: Callable[[str], None] | None = None,
        max_workers: int = 10,
    ) -> None:
        super().__init__(table_name, client=client, rng=rng, crash_hook=crash_hook, max_workers=max_workers)
        #: Adds newly counted failures to their error groups (`failure_groups`).
        self.failure_groups = FailureGroupWriter(self)


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
