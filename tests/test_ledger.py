"""Ledger operations against in-process DynamoDB (moto), including the error paths."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from microprocess.declarations import declare
from microprocess.ledger import (
    CRASH_AFTER_TASK_WRITE,
    CURSOR_DONE,
    Ledger,
    LedgerError,
    RunNotActive,
    RunNotFound,
    RunStatus,
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


def test_create_run_is_idempotent_and_refuses_another_job(ledger: Ledger) -> None:
    # GIVEN a new run id WHEN created twice THEN the second call returns the same run, not created
    run, created = ledger.create_run("r1", JOB)
    again, created_again = ledger.create_run("r1", JOB)
    assert created and not created_again
    assert again.created_at == run.created_at and again.status is RunStatus.SPLITTING
    # AND the same id for another job is refused with a message naming both jobs
    other = declare(**{**JOB.model_dump(), "name": "other-job"})
    with pytest.raises(LedgerError, match=r"credit-scores.*other-job"):
        ledger.create_run("r1", other)


def test_unknown_run_is_a_clear_error(ledger: Ledger) -> None:
    with pytest.raises(RunNotFound, match="r-missing"):
        ledger.progress("r-missing")
    assert ledger.get_run("r-missing") is None


def test_account_page_moves_the_cursor_once(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    assert ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=5)
    # a resumed splitter re-sending the same page does not count it again
    assert not ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=5)
    run = ledger.require_run("r1")
    assert run.expected == 5 and run.cursors == {"0": "p1"} and run.seg_counts == {"0": 5}


def test_account_page_after_cancel_raises(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    assert ledger.cancel("r1")
    with pytest.raises(RunNotActive, match="CANCELLED"):
        ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=5)


def test_finish_split_refuses_unread_segments(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB, segments=2)
    ledger.account_page("r1", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=3)
    with pytest.raises(LedgerError, match=r"\['1'\]"):
        ledger.finish_split("r1")


def test_empty_source_claims_the_reduce_at_once(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    ledger.account_page("r1", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=0)
    assert ledger.finish_split("r1") is True
    assert ledger.require_run("r1").status is RunStatus.REDUCING
    assert ledger.finish_split("r1") is False  # idempotent, never a second claim


def test_full_run_claims_once_at_the_last_completion(ledger: Ledger) -> None:
    # GIVEN 95 tasks, some completed before the split finished
    ledger.create_run("r1", JOB)
    outs = [outcome(i, TaskState.FAILED if i % 19 == 0 else TaskState.SUCCEEDED) for i in range(95)]
    ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=50)
    assert not any(record(ledger, "r1", outs[:40]))
    ledger.account_page("r1", segment="0", cursor_from="p1", cursor_to=CURSOR_DONE, count=45)
    assert ledger.finish_split("r1") is False
    # WHEN the rest complete THEN exactly the last batch claims the reduce
    claims = record(ledger, "r1", outs[40:])
    assert claims == [False] * (len(claims) - 1) + [True]
    prog = ledger.progress("r1")
    assert (prog.status, prog.expected, prog.succeeded, prog.failed, prog.pending) == (
        RunStatus.REDUCING,
        95,
        90,
        5,
        0,
    )
    # AND redelivered completions are absorbed without a second claim
    again = ledger.record_outcomes("r1", K, outs[:10])
    assert again.duplicates == [o.task_id for o in outs[:10]] and not again.claimed_reduce
    assert ledger.progress("r1").succeeded == 90


def test_no_claim_before_split_done_even_when_all_sent_tasks_finished(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=20)
    assert not any(record(ledger, "r1", [outcome(i) for i in range(20)]))
    assert ledger.check_completion("r1") is False
    assert ledger.require_run("r1").status is RunStatus.SPLITTING


def test_completions_split_over_counters_when_rooms_are_small(ledger: Ledger) -> None:
    # GIVEN 3 tasks spread over 16 counters (rooms of 0 or 1) WHEN one batch of 3 completes
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [3])
    ledger.finish_split("r1")
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(3)])
    # THEN it is counted across counters and claims the reduce
    assert res.counted and res.claimed_reduce
    assert ledger.progress("r1").succeeded == 3


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


def test_cancel(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    assert ledger.cancel("r1") is True
    assert ledger.cancel("r1") is False
    assert ledger.require_run("r1").status is RunStatus.CANCELLED
    with pytest.raises(RunNotFound):
        ledger.cancel("nope")


def test_reduce_parts_claim_finalize_once_and_finish(ledger: Ledger) -> None:
    job = declare(**{**JOB.model_dump(), "shard_count": 3})
    ledger.create_run("r1", job)
    split(ledger, "r1", [10])
    outs = [
        TaskOutcome(f"t{i}", shard_of(f"t{i}", 3), TaskState.FAILED if i == 0 else TaskState.SUCCEEDED, 1)
        for i in range(10)
    ]
    ledger.finish_split("r1")
    assert ledger.record_outcomes("r1", K, outs).claimed_reduce
    assert [ledger.record_reduce_part("r1", k, 3) for k in (0, 1, 1, 2)] == [False, False, False, True]
    assert ledger.record_reduce_part("r1", 2, 3) is False  # a redelivered part does not claim again
    assert ledger.parts_done("r1") == {"000", "001", "002"}
    assert ledger.claim_finalize("r1") is False
    assert ledger.claim_email("r1") and not ledger.claim_email("r1")
    ledger.release_email("r1")
    assert ledger.claim_email("r1")
    # 1 of 10 failed = 10% > 1% tolerated
    assert ledger.finish_run("r1", tolerated_failure_pct=1.0, report_uri="s3://b/r/") is RunStatus.FAILED
    run = ledger.require_run("r1")
    assert run.report_uri == "s3://b/r/" and "1 of 10 tasks failed" in (run.error or "")
    assert ledger.finish_run("r1", tolerated_failure_pct=1.0, report_uri="s3://b/r/") is None


def test_finish_run_succeeds_within_tolerance(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [4])
    ledger.finish_split("r1")
    record(ledger, "r1", [outcome(0, TaskState.FAILED)] + [outcome(i) for i in range(1, 4)])
    assert ledger.finish_run("r1", tolerated_failure_pct=25.0, report_uri="s3://b/r/") is RunStatus.SUCCEEDED


def test_fail_run(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    assert ledger.fail_run("r1", "reduce failed: 500")
    assert not ledger.fail_run("r1", "again")
    assert ledger.require_run("r1").error == "reduce failed: 500"


def test_crash_between_task_write_and_count_is_repaired(ddb: Any, ledger_table: str) -> None:
    # GIVEN a forwarder that dies after writing its task records, before counting them
    def crash(point: str) -> None:
        if point == CRASH_AFTER_TASK_WRITE:
            raise RuntimeError("killed")

    crashing = Ledger(ledger_table, client=ddb, crash_hook=crash)
    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(1))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [20])
    ledger.finish_split("r1")
    record(ledger, "r1", [outcome(i) for i in range(10)])
    with pytest.raises(RuntimeError):
        crashing.record_outcomes("r1", K, [outcome(i) for i in range(10, 20)])
    # THEN the redelivery is a duplicate, so the run is under-counted and not claimed
    assert not ledger.record_outcomes("r1", K, [outcome(i) for i in range(10, 20)]).claimed_reduce
    assert ledger.progress("r1").succeeded == 10
    # WHEN the sweeper repairs THEN the counts are exact and the completion check claims
    assert ledger.repair_counters("r1") == (20, 0)
    assert ledger.progress("r1").succeeded == 20
    assert ledger.check_completion("r1") is True


def test_repair_fences_off_a_stale_counter_update(ddb: Any, ledger_table: str) -> None:
    # GIVEN a forwarder that learned the counters' epoch before a repair
    ledger = Ledger(ledger_table, client=ddb)
    slow = Ledger(ledger_table, client=ddb)
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [20])
    ledger.finish_split("r1")
    slow.record_outcomes("r1", K, [outcome(0)])  # caches epoch 0
    # WHEN a repair runs, then the slow forwarder records a task
    ledger.repair_counters("r1")
    res = slow.record_outcomes("r1", K, [outcome(1)])
    # THEN its counter update is refused (never a double count) and the next repair counts it
    assert res.newly_recorded == ["0-000000001"] and res.counted is False
    assert ledger.progress("r1").succeeded == 1
    assert ledger.repair_counters("r1") == (2, 0)
    assert ledger.progress("r1").succeeded == 2
    # AND the slow forwarder, having re-read the epoch, counts normally again
    assert slow.record_outcomes("r1", K, [outcome(2)]).counted
    assert ledger.progress("r1").succeeded == 3


def test_list_runs_newest_first(ledger: Ledger) -> None:
    for r in ("r1", "r2", "r3"):
        ledger.create_run(r, JOB)
    assert [r.run_id for r in ledger.list_runs(JOB.name)] == ["r3", "r2", "r1"]
    ledger.cancel("r2")
    assert [r.run_id for r in ledger.active_runs([JOB.name])] == ["r3", "r1"]


class _CountingClient:
    """Wraps a DynamoDB client and counts writes per item key."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: Counter[tuple[str, str]] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("put_item", "update_item", "delete_item"):

            def wrapped(**kw: Any) -> Any:
                key = kw.get("Key") or kw["Item"]
                self.writes[(key["pk"]["S"], key["sk"]["S"])] += 1
                return attr(**kw)

            return wrapped
        if name == "transact_write_items":

            def wrapped_tx(**kw: Any) -> Any:
                for action in kw["TransactItems"]:
                    body = next(iter(action.values()))
                    key = body.get("Key") or body.get("Item")
                    self.writes[(key["pk"]["S"], key["sk"]["S"])] += 1
                return attr(**kw)

            return wrapped_tx
        return attr


def test_no_hot_key_over_10000_completions(ddb: Any, ledger_table: str) -> None:
    # GIVEN a ledger whose writes are counted per item
    client = _CountingClient(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    n = 10_000
    ledger.create_run("hot", JOB)
    # WHEN a splitter accounts pages of 250 while forwarders record batches of 10
    outs = [outcome(i, TaskState.FAILED if i % 500 == 0 else TaskState.SUCCEEDED) for i in range(n)]
    cursor = ""
    for p in range(n // 250):
        nxt = CURSOR_DONE if p == n // 250 - 1 else f"p{p + 1}"
        ledger.account_page("hot", segment="0", cursor_from=cursor, cursor_to=nxt, count=250)
        cursor = nxt
        if p == n // 250 - 1:
            ledger.finish_split("hot")
        claims = record(ledger, "hot", outs[p * 250 : (p + 1) * 250])
    # THEN the run completes and no item took more than 20 writes per 1,000 completions
    assert claims[-1] is True
    hottest_key, hottest = client.writes.most_common(1)[0]
    per_1000 = hottest * 1000 / n
    print(f"hottest item {hottest_key}: {hottest} writes = {per_1000:.1f} per 1,000 completions")
    assert per_1000 <= 20, f"{hottest_key} took {hottest} writes over {n} completions"
