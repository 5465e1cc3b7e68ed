"""`microprocess.ledger.results`: task records and failures read back (moto)."""

from __future__ import annotations

from microprocess.ledger import (
    CURSOR_DONE,
    Ledger,
    TaskState,
)
from microprocess.pipeline.envelope import shard_of
from tests.ledger_scenarios import JOB, K, outcome, record, split


def test_iter_results_and_failed(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [30])
    outs = [outcome(i, TaskState.FAILED if i < 3 else TaskState.SUCCEEDED, item={"company_id": i}) for i in range(30)]
    record(ledger, "r1", outs)
    rows = [t for k in range(JOB.shard_count) for t in ledger.iter_results("r1", k)]
    assert sorted(t.task_id for t in rows) == sorted(o.task_id for o in outs)
    assert all(t.shard == shard_of(t.task_id, JOB.shard_count) for t in rows)
    failed = list(ledger.iter_failed("r1"))
    assert {t.item_id for t in failed} == {"C0000000", "C0000001", "C0000002"}
    assert all(t.error == "boom" and t.item is not None for t in failed)
    assert next(t for t in rows if t.task_id == "0-000000010").result == {"score": 10}


def test_failed_page_reads_failures_only_from_a_cursor(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [40])
    outs = [outcome(i, TaskState.FAILED if i % 4 == 0 else TaskState.SUCCEEDED, item={"n": i}) for i in range(40)]
    record(ledger, "r1", outs)
    # a late failure of a task that had succeeded leaves a marker: it is not a failure
    ledger.record_outcomes("r1", K, [outcome(1, TaskState.FAILED, item={"n": 1})])
    seen, cursor, pages = [], "", 0
    while cursor != CURSOR_DONE:
        page, cursor = ledger.failed_page("r1", cursor, 3)
        assert len(page) <= 3
        seen += [t.item["n"] for t in page]
        pages += 1
    assert sorted(seen) == list(range(0, 40, 4)) and pages >= 4
