"""Shared ledger scenarios for the ledger's test modules: a job's outcomes, a split, batches recorded."""

from __future__ import annotations

import random
from typing import Any

from microprocess.ledger import (
    CURSOR_DONE,
    Ledger,
    TaskOutcome,
    TaskState,
)
from microprocess.pipeline.envelope import shard_of
from tests.declared import CREDIT_SCORES

JOB = CREDIT_SCORES
K = JOB.counter_count


def outcome(i: int, state: TaskState = TaskState.SUCCEEDED, **kw: Any) -> TaskOutcome:
    task_id = f"0-{i:09d}"
    return TaskOutcome(
        task_id=task_id,
        shard=shard_of(task_id, JOB.shard_count),
        state=state,
        attempts=1,
        item_id=f"C{i:07d}",
        result={"score": i} if state is TaskState.SUCCEEDED else None,
        error="boom" if state is TaskState.FAILED else None,
        **kw,
    )


def split(ledger: Ledger, run_id: str, sizes: list[int]) -> None:
    cursor = ""
    for n, size in enumerate(sizes):
        nxt = CURSOR_DONE if n == len(sizes) - 1 else f"page-{n + 1}"
        assert ledger.account_page(run_id, segment="0", cursor_from=cursor, cursor_to=nxt, count=size)
        cursor = nxt


def record(ledger: Ledger, run_id: str, outs: list[TaskOutcome], batch: int = 10) -> list[bool]:
    return [ledger.record_outcomes(run_id, K, outs[i : i + batch]).claimed_reduce for i in range(0, len(outs), batch)]


def counter_markers(ddb: Any, table: str) -> dict[str, list[str]]:
    """Each counter item's marker attributes, by counter key."""
    items = ddb.scan(TableName=table)["Items"]
    return {it["pk"]["S"]: sorted(n for n in it if n.startswith("b_")) for it in items if it["sk"]["S"] == "COUNT"}


class _UpdateLog:
    """A client that records every UpdateItem it passes on."""

    def __init__(self, ddb: Any) -> None:
        self._ddb = ddb
        self.updates: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddb, name)

    def update_item(self, **kw: Any) -> Any:
        self.updates.append(kw)
        return self._ddb.update_item(**kw)


def ambiguous_ledger(table: str, rate: float = 1.0) -> tuple[Ledger, Any]:
    """A ledger on its own client whose writes are applied, then retried by the SDK as after a 500."""
    import boto3

    from microprocess.chaos.faults import FaultConfig, FaultInjector

    client = boto3.client("dynamodb", region_name="us-east-1")
    injector = FaultInjector(FaultConfig(applied_then_error=rate))
    injector.install_ambiguous_writes(client)
    return Ledger(table, client=client, rng=random.Random(2)), injector
