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
from tests.interleave import PausedBeforeWrite

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


class _Crash(Exception):
    pass


def test_two_completion_checks_that_both_read_running_claim_the_reduce_once(ddb: Any, ledger_table: str) -> None:
    # GIVEN a split run whose 12 tasks are all recorded and counted (a forwarder died between
    # writing them and counting them; the sweeper recounted), still RUNNING: the next
    # completion check claims its reduce
    def crash(point: str) -> None:
        if point == CRASH_AFTER_TASK_WRITE:
            raise _Crash(point)

    plain = Ledger(ledger_table, client=ddb)
    plain.create_run("r1", JOB)
    split(plain, "r1", [12])
    assert plain.finish_split("r1") is False
    with pytest.raises(_Crash):
        Ledger(ledger_table, client=ddb, crash_hook=crash).record_outcomes("r1", K, [outcome(i) for i in range(12)])
    assert plain.repair_counters("r1") == (12, 0)
    assert plain.require_run("r1").status is RunStatus.RUNNING
    # WHEN two checks race: the first has read the run RUNNING with every task done and is about
    # to write its claim when the second reads the run (RUNNING still) and writes its own
    second = Ledger(ledger_table, client=ddb)
    paused = PausedBeforeWrite(ddb, meanwhile=lambda: second.check_completion("r1"))
    first_claimed = Ledger(ledger_table, client=paused).check_completion("r1")
    # THEN both reached the claim, and exactly one claimed: the second, which wrote first
    assert paused.paused
    assert (paused.outcome, first_claimed) == (True, False)
    assert plain.require_run("r1").status is RunStatus.REDUCING


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


# ------------------------------------------------- rare faults (ARCHITECTURE §3.8)


def ambiguous_ledger(table: str, rate: float = 1.0) -> tuple[Ledger, Any]:
    """A ledger on its own client whose writes are applied, then retried by the SDK as after a 500."""
    import boto3

    from microprocess.chaos.faults import FaultConfig, FaultInjector

    client = boto3.client("dynamodb", region_name="us-east-1")
    injector = FaultInjector(FaultConfig(applied_then_error=rate))
    injector.install_ambiguous_writes(client)
    return Ledger(table, client=client, rng=random.Random(2)), injector


def test_writes_retried_after_they_were_applied_count_once_and_claim_at_the_end(ledger_table: str) -> None:
    # GIVEN a run of 20 tasks whose every ledger write is applied, then retried by the SDK
    amb, injector = ambiguous_ledger(ledger_table)
    amb.create_run("r1", JOB)
    split(amb, "r1", [20])
    assert amb.finish_split("r1") is False
    # WHEN the tasks complete in batches of 5
    claims = record(amb, "r1", [outcome(i) for i in range(20)], batch=5)
    # THEN the fault fired, every task is new and counted once, and only the last batch claims
    assert (
        injector.fired["applied_then_error at UpdateItem"] > 0 and injector.fired["applied_then_error at PutItem"] > 0
    )
    prog = amb.progress("r1")
    assert (prog.expected, prog.succeeded, prog.failed) == (20, 20, 0)
    assert claims == [False, False, False, True]
    assert amb.require_run("r1").status is RunStatus.REDUCING


def test_claims_retried_after_they_were_applied_are_still_won(ledger_table: str) -> None:
    amb, _ = ambiguous_ledger(ledger_table)
    amb.create_run("r1", JOB)
    assert amb.account_page("r1", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=0)
    # an empty run: the claim of the reduce (retried after it was applied) is won once
    assert amb.finish_split("r1") is True
    assert amb.claim_finalize("r1") is True and amb.claim_finalize("r1") is False
    assert amb.record_email_sent("r1", "m-1") is True and amb.record_email_sent("r1", "m-2") is False
    assert amb.finish_run("r1", tolerated_failure_pct=1.0, report_uri="s3://b/r/") is RunStatus.SUCCEEDED


def test_a_result_over_the_item_limit_fails_its_task_and_the_batch_is_counted(ledger: Ledger) -> None:
    # GIVEN a batch of 5 whose third result is 500 KB (DynamoDB items are at most 400 KB)
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [5])
    ledger.finish_split("r1")
    outs = [outcome(i) for i in range(5)]
    big = outs[2]
    outs[2] = TaskOutcome(big.task_id, big.shard, TaskState.SUCCEEDED, 1, big.item_id, result={"blob": "x" * 500_000})
    # WHEN it is recorded
    res = ledger.record_outcomes("r1", K, outs)
    # THEN every task is new and counted, the big one FAILED with a reason naming the limit and the fix
    assert sorted(res.newly_recorded) == sorted(o.task_id for o in outs) and res.claimed_reduce
    prog = ledger.progress("r1")
    assert (prog.succeeded, prog.failed) == (4, 1)
    [failed] = list(ledger.iter_failed("r1"))
    assert failed.task_id == big.task_id and "400 KB" in (failed.error or "") and "S3" in (failed.error or "")


def test_the_item_size_error_of_dynamodb_also_fails_only_that_task(ddb: Any, ledger_table: str) -> None:
    # GIVEN a table that refuses an item our estimate let through (DynamoDB's own measure)
    class Strict:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def put_item(self, **kw: Any) -> Any:
            from botocore.exceptions import ClientError

            if len(kw["Item"].get("result", {}).get("S", "")) > 100_000:
                raise ClientError(
                    {
                        "Error": {
                            "Code": "ValidationException",
                            "Message": "Item size has exceeded the maximum allowed size",
                        }
                    },
                    "PutItem",
                )
            return self.inner.put_item(**kw)

    strict = Ledger(ledger_table, client=Strict(ddb))
    strict.create_run("r1", JOB)
    split(strict, "r1", [2])
    out = TaskOutcome(
        "0-000000001", shard_of("0-000000001", JOB.shard_count), TaskState.SUCCEEDED, 1, result="y" * 200_000
    )
    res = strict.record_outcomes("r1", K, [outcome(0), out])
    assert len(res.newly_recorded) == 2
    assert (strict.progress("r1").succeeded, strict.progress("r1").failed) == (1, 1)


@pytest.mark.parametrize(
    ("failed", "expected", "tolerated", "status"),
    [
        (2_501, 250_000, 1.0, RunStatus.FAILED),  # 1.0004 %: shows as 1.0 %, still above 1 %
        (2_500, 250_000, 1.0, RunStatus.SUCCEEDED),  # exactly the tolerance
        (1, 3, 33.333, RunStatus.FAILED),  # 33.3333... % > 33.333 %
        (0, 0, 0.0, RunStatus.SUCCEEDED),
    ],
)
def test_one_rule_decides_the_verdict_exactly(failed: int, expected: int, tolerated: float, status: RunStatus) -> None:
    from microprocess.ledger import failed_percentage, run_verdict

    assert run_verdict(failed, expected, tolerated) is status
    assert round(failed_percentage(failed, expected), 1) <= round(tolerated, 1) or status is RunStatus.FAILED


def test_finish_run_uses_the_exact_rule(ledger: Ledger) -> None:
    # GIVEN 1,001 tasks, 11 failed: 1.0989 % > 1.0 % (and 1.1 % rounded); 10 of 1,000 would pass
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [1001])
    ledger.finish_split("r1")
    record(ledger, "r1", [outcome(i, TaskState.FAILED if i < 11 else TaskState.SUCCEEDED) for i in range(1001)], 100)
    assert ledger.finish_run("r1", tolerated_failure_pct=1.0, report_uri="s3://b/r/") is RunStatus.FAILED


def test_the_report_email_is_recorded_after_it_is_sent(ledger: Ledger) -> None:
    # GIVEN a run whose finalize sends the email, then crashes before recording it
    ledger.create_run("r1", JOB)
    assert ledger.email_sent("r1") is None
    # WHEN the retried finalize looks: the email is not recorded, so it is sent (again) and recorded
    assert ledger.email_sent("r1") is None
    assert ledger.record_email_sent("r1", "msg-2") is True
    # THEN every later finalize skips it
    assert ledger.email_sent("r1") is not None and ledger.record_email_sent("r1", "msg-3") is False


def test_an_interrupted_repair_is_resumed_not_locked(ddb: Any, ledger_table: str) -> None:
    # GIVEN a run under-counted by a crash, and a repair that dies after fencing the counters
    job = declare(**{**JOB.model_dump(), "shard_count": 4, "counter_count": 4})
    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(1))
    ledger.create_run("r1", job)
    split(ledger, "r1", [12])
    ledger.finish_split("r1")

    def crash(point: str) -> None:
        if point == CRASH_AFTER_TASK_WRITE:
            raise RuntimeError("killed")

    outs = [TaskOutcome(f"0-{i:09d}", shard_of(f"0-{i:09d}", 4), TaskState.SUCCEEDED, 1) for i in range(12)]
    ledger.record_outcomes("r1", 4, outs[:6])
    with pytest.raises(RuntimeError):
        Ledger(ledger_table, client=ddb, crash_hook=crash).record_outcomes("r1", 4, outs[6:])
    dying = Ledger(ledger_table, client=ddb)
    calls = {"n": 0}
    real = dying._recount_shard

    def die_on_second(run_id: str, shard: int) -> tuple[int, int]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("sweeper killed mid-repair")
        return real(run_id, shard)

    dying._recount_shard = die_on_second  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="mid-repair"):
        dying.repair_step("r1")
    fence = ledger.repair_state("r1")
    assert fence is not None and fence.epoch % 2 == 1 and fence.shards_counted == 1
    # WHEN the next repair runs, in steps of one shard (a budget of 0 s: one shard per step)
    steps = 0
    while not (state := ledger.repair_step("r1", budget_s=0)).done:
        steps += 1
    # THEN it took up the fenced repair where it stopped, and the counts are exact
    assert steps == 2 and (state.succeeded, state.failed) == (12, 0)
    assert ledger.repair_state("r1") is None
    assert ledger.check_completion("r1") is True


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


def test_the_repair_removes_markers_left_by_a_writer_that_died(ddb: Any, ledger_table: str) -> None:
    # GIVEN a writer that counted a batch and died before its next update (its marker stays)
    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(1))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [3])
    Ledger(ledger_table, client=ddb).record_outcomes("r1", K, [outcome(0)])
    assert sum(len(m) for m in counter_markers(ddb, ledger_table).values()) == 1
    ledger.finish_split("r1")
    # WHEN the sweeper repairs THEN the marker is gone and the count is exact
    assert ledger.repair_counters("r1") == (1, 0)
    assert sum(len(m) for m in counter_markers(ddb, ledger_table).values()) == 0


def test_a_writer_removes_its_marker_with_its_next_update_one_write_per_batch(ddb: Any, ledger_table: str) -> None:
    # GIVEN one process recording 4 batches (fewer than it stays on one counter)
    client = _UpdateLog(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(5))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [40])
    for b in range(4):
        ledger.record_outcomes("r1", K, [outcome(b * 10 + i) for i in range(10)])
        # THEN after each batch the counter holds exactly one marker: this batch's
        markers = {k: m for k, m in counter_markers(ddb, ledger_table).items() if m}
        assert len(markers) == 1 and len(next(iter(markers.values()))) == 1
    # AND each batch was one counter write (no separate removal), all on one counter
    counter_writes = [u for u in client.updates if u["Key"]["sk"]["S"] == "COUNT"]
    assert len(counter_writes) == 4
    assert len({u["Key"]["pk"]["S"] for u in counter_writes}) == 1
    assert all("REMOVE" in u["UpdateExpression"] for u in counter_writes[1:])
    assert ledger.progress("r1").succeeded == 40


def test_a_writer_moves_to_another_counter_and_takes_its_marker_away(ddb: Any, ledger_table: str) -> None:
    # GIVEN one process recording more batches than it stays on one counter
    from microprocess.ledger.table import HOME_BATCHES

    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(7))
    ledger.create_run("r1", JOB)
    n = HOME_BATCHES * 6
    split(ledger, "r1", [n])
    for b in range(n):
        ledger.record_outcomes("r1", K, [outcome(b)])
    # THEN it used several counters, and only the last one holds a marker (its last batch's)
    items = ddb.scan(TableName=ledger_table)["Items"]
    used = [it for it in items if it["sk"]["S"] == "COUNT" and int(it.get("done", {"N": "0"})["N"])]
    assert len(used) >= 3
    markers = counter_markers(ddb, ledger_table)
    assert sum(len(m) for m in markers.values()) == 1
    assert ledger.progress("r1").succeeded == n


def test_markers_over_an_hour_old_go_with_the_next_update_that_sees_them(
    ddb: Any, ledger_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import microprocess.ledger.table as table_module

    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(1))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [30])
    # GIVEN markers left two hours ago by writers that died, on every counter
    now = table_module.time.time()
    old = [table_module.marker_name(now - 7200) for _ in range(3)]
    young = table_module.marker_name(now - 60)  # a live writer's: must stay
    for j in range(K):
        ddb.update_item(
            TableName=ledger_table,
            Key={"pk": {"S": f"RUN#r1#C{j}"}, "sk": {"S": "COUNT"}},
            UpdateExpression="SET #a = :one, #b = :one, #c = :one, #y = :one",
            ExpressionAttributeNames={"#a": old[0], "#b": old[1], "#c": old[2], "#y": young},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    # WHEN a writer records two batches (the second update removes what the first saw)
    ledger.record_outcomes("r1", K, [outcome(0)])
    ledger.record_outcomes("r1", K, [outcome(1)])
    # THEN the counter it used has lost the old markers, kept the young one, and counts 2
    markers = counter_markers(ddb, ledger_table)
    cleaned = [m for m in markers.values() if not set(old) & set(m)]
    assert len(cleaned) == 1 and young in cleaned[0]
    assert ledger.progress("r1").succeeded == 2


def test_a_crowded_counter_gets_its_marker_removed_at_once(ddb: Any, ledger_table: str) -> None:
    # GIVEN counters already near a write unit's 1 KB (many writers' markers on them)
    import microprocess.ledger.table as table_module

    client = _UpdateLog(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(1))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [30])
    now = table_module.time.time()
    crowd = [table_module.marker_name(now) for _ in range(40)]
    for j in range(K):
        ddb.update_item(
            TableName=ledger_table,
            Key={"pk": {"S": f"RUN#r1#C{j}"}, "sk": {"S": "COUNT"}},
            UpdateExpression="SET " + ", ".join(f"#m{i} = :one" for i in range(len(crowd))),
            ExpressionAttributeNames={f"#m{i}": m for i, m in enumerate(crowd)},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    # WHEN a batch is counted THEN its marker is removed by a second update, not left behind
    ledger.record_outcomes("r1", K, [outcome(0)])
    counter_writes = [u for u in client.updates if u["Key"]["sk"]["S"] == "COUNT"]
    assert [u["UpdateExpression"].split()[0] for u in counter_writes] == ["SET", "REMOVE"]
    assert all(set(m) == set(crowd) for m in counter_markers(ddb, ledger_table).values())
    assert ledger.progress("r1").succeeded == 1


def test_a_failed_marker_removal_is_said_and_kept_and_the_batch_still_counts(
    ddb: Any, ledger_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    from botocore.exceptions import ClientError

    from microprocess.ledger.table import HOME_BATCHES

    class RemovalFails(_UpdateLog):
        fail = True

        def update_item(self, **kw: Any) -> Any:
            if kw["UpdateExpression"].startswith("REMOVE") and self.fail:
                self.updates.append(kw)
                raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"}}, "UpdateItem")
            return super().update_item(**kw)

    client = RemovalFails(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(2))
    ledger.create_run("r1", JOB)
    n = HOME_BATCHES + 2
    split_more = HOME_BATCHES
    split(ledger, "r1", [n + split_more])
    # WHEN the process moves to another counter and the removal on the old one fails
    for b in range(n):
        ledger.record_outcomes("r1", K, [outcome(b)])
    # THEN every batch is counted, the failure is logged, and the marker is still owed
    assert ledger.progress("r1").succeeded == n
    assert any("not removed yet" in r.getMessage() for r in caplog.records)
    owed = [names for (run, _), names in ledger._markers.items() if run == "r1"]
    assert sum(len(names) for names in owed) == 2  # the old counter's and the new one's
    # AND once DynamoDB answers again, the next move removes the old counter's marker
    client.fail = False
    for b in range(split_more):
        ledger.record_outcomes("r1", K, [outcome(n + b)])
    assert sum(len(m) for m in counter_markers(ddb, ledger_table).values()) == 1  # the last batch's only
    assert ledger.progress("r1").succeeded == n + split_more


def test_an_email_claim_whose_sender_died_is_taken_over_after_its_lease(ledger: Ledger) -> None:
    # GIVEN a run whose email was claimed by a finalize that died before sending it (no record)
    ledger.create_run("r1", JOB)
    assert ledger.claim_email("r1", lease_s=300)
    # WHEN another finalize asks within the lease THEN it is refused (the first may still be sending)
    assert not ledger.claim_email("r1", lease_s=300)
    # WHEN the lease has run out THEN the email is claimed again: at least once, never lost
    assert ledger.claim_email("r1", lease_s=0)
    # AND once recorded as sent, no one claims it again, lease or not
    assert ledger.record_email_sent("r1", "msg-1")
    assert not ledger.claim_email("r1", lease_s=0)
    assert ledger.email_sent("r1")


def test_a_writer_leaves_a_counter_without_room_instead_of_trying_it_again(ddb: Any, ledger_table: str) -> None:
    # GIVEN a run whose split is done: every counter has a small room (its share of 48)
    from botocore.exceptions import ClientError

    class Refusals(_UpdateLog):
        refused = 0

        def update_item(self, **kw: Any) -> Any:
            try:
                return super().update_item(**kw)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                    self.refused += 1
                raise

    client = Refusals(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(4))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [48])
    ledger.finish_split("r1")
    # WHEN one writer records the 48 tasks one by one
    claims = [ledger.record_outcomes("r1", K, [outcome(i)]).claimed_reduce for i in range(48)]
    # THEN the last one claims, and the writer was refused once at most: its first update tries
    # the form without targets (the split was still running when it last looked). Each update's
    # answer tells it the room left, so it leaves a counter before a batch would be refused there
    # (a refused update is billed a write unit)
    assert claims[-1] is True and not any(claims[:-1])
    assert client.refused <= 1, client.refused
    assert ledger.progress("r1").succeeded == 48


def test_writers_sharing_counters_are_each_refused_by_a_counter_once_at_most(ddb: Any, ledger_table: str) -> None:
    # GIVEN a finished split of 400 tasks and three writers (three processes) recording batches
    # of 5 in turn: one writer fills a counter the others still think has room
    from botocore.exceptions import ClientError

    class Refusals(_UpdateLog):
        def __init__(self, inner: Any) -> None:
            super().__init__(inner)
            self.refused: list[str] = []

        def update_item(self, **kw: Any) -> Any:
            try:
                return super().update_item(**kw)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ConditionalCheckFailedException" and "room >=" in kw.get(
                    "ConditionExpression", ""
                ):
                    self.refused.append(kw["Key"]["pk"]["S"])
                raise

    clients = [Refusals(ddb) for _ in range(3)]
    writers = [Ledger(ledger_table, client=c, rng=random.Random(10 + i)) for i, c in enumerate(clients)]
    writers[0].create_run("r1", JOB)
    split(writers[0], "r1", [400])
    writers[0].finish_split("r1")
    for b in range(80):
        writers[b % 3].record_outcomes("r1", K, [outcome(b * 5 + i) for i in range(5)])
    # THEN every task is counted once and the reduce is claimable, and no writer was refused
    # twice by the same counter (it remembers the counters it saw short for the run)
    assert writers[0].progress("r1").succeeded == 400
    for c in clients:
        assert len(c.refused) == len(set(c.refused)), c.refused


# ----------------------------------------------------------------------------- task records in one call


class _CallLog:
    """A client that records the write calls it passes on (and can refuse INSERT statements)."""

    def __init__(self, ddb: Any, refuse: set[str] | None = None) -> None:
        self._ddb = ddb
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse or set()  # task record sort keys whose INSERT is answered "throttled"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddb, name)

    def put_item(self, **kw: Any) -> Any:
        self.calls.append(("PutItem", kw))
        return self._ddb.put_item(**kw)

    def get_item(self, **kw: Any) -> Any:
        self.calls.append(("GetItem", kw))
        return self._ddb.get_item(**kw)

    def batch_execute_statement(self, **kw: Any) -> Any:
        self.calls.append(("BatchExecuteStatement", kw))
        refused = [s for s in kw["Statements"] if s["Parameters"][1]["S"] in self.refuse]
        kept = [s for s in kw["Statements"] if s not in refused]
        answers = iter(self._ddb.batch_execute_statement(Statements=kept)["Responses"] if kept else [])
        throttled = {"Error": {"Code": "ThrottlingError", "Message": "slow down"}}
        return {"Responses": [throttled if s in refused else next(answers) for s in kw["Statements"]]}

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    def task_ops(self) -> list[str]:
        """The calls on task records (not the run's epoch read or its counters)."""
        return [
            op for op, kw in self.calls if op == "BatchExecuteStatement" or "T#" in str(kw.get("Key") or kw.get("Item"))
        ]


def _finished_run(ledger: Ledger, n: int) -> None:
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [n])
    ledger.finish_split("r1")
    if isinstance(ledger.client, _CallLog):
        ledger.client.calls.clear()


def test_a_batchs_successes_are_written_in_one_call_and_counted_once(ddb: Any, ledger_table: str) -> None:
    client = _CallLog(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    _finished_run(ledger, 40)
    # WHEN a batch of 10 successes is recorded THEN its records go in one BatchExecuteStatement
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(10)])
    assert sorted(res.newly_recorded) == sorted(outcome(i).task_id for i in range(10))
    assert client.task_ops() == ["BatchExecuteStatement"]
    assert "PutItem" not in client.ops()
    ((_, call),) = [c for c in client.calls if c[0] == "BatchExecuteStatement"]
    assert all(s["Statement"].startswith('INSERT INTO "ledger" VALUE {') for s in call["Statements"])
    assert all("SUCCEEDED" not in s["Statement"] for s in call["Statements"])  # values are parameters only
    # AND a second delivery of the same batch (plus 2 new tasks) finds the records: only the new ones count
    client.calls.clear()
    again = ledger.record_outcomes("r1", K, [outcome(i) for i in range(12)])
    assert sorted(again.duplicates) == sorted(outcome(i).task_id for i in range(10))
    assert sorted(again.newly_recorded) == [outcome(10).task_id, outcome(11).task_id]
    # (each duplicate's token is read: it might have been this call's own record, retried by the SDK)
    assert client.task_ops() == ["BatchExecuteStatement"] + ["GetItem"] * 10
    assert ledger.progress("r1").succeeded == 12


def test_more_than_25_successes_take_more_calls_and_failures_and_big_records_go_alone(
    ddb: Any, ledger_table: str
) -> None:
    client = _CallLog(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    _finished_run(ledger, 40)
    big = TaskOutcome(outcome(30).task_id, outcome(30).shard, TaskState.SUCCEEDED, 1, None, result={"blob": "x" * 5000})
    batch = [outcome(i) for i in range(27)] + [outcome(27, TaskState.FAILED), big]
    res = ledger.record_outcomes("r1", K, batch)
    assert len(res.newly_recorded) == 29
    inserts = [kw for op, kw in client.calls if op == "BatchExecuteStatement"]
    assert [len(kw["Statements"]) for kw in inserts] == [25, 2]
    puts = [kw["Item"]["sk"]["S"] for op, kw in client.calls if op == "PutItem"]
    # the failure's F# item, then its record; the big success alone
    assert sorted(puts) == sorted([f"F#{outcome(27).task_id}", f"T#{outcome(27).task_id}", f"T#{big.task_id}"])
    p = ledger.progress("r1")
    assert (p.succeeded, p.failed) == (28, 1)


def test_a_statement_refused_for_another_reason_is_written_alone_and_said(
    ddb: Any, ledger_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN DynamoDB answers one INSERT of a batch "throttled" (a per-statement error)
    refused = f"T#{outcome(4).task_id}"
    client = _CallLog(ddb, refuse={refused})
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    _finished_run(ledger, 10)
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(10)])
    # THEN that record is written by a conditional put, the warning names it, all 10 count once
    assert len(res.newly_recorded) == 10
    assert [kw["Item"]["sk"]["S"] for op, kw in client.calls if op == "PutItem"] == [refused]
    assert any(refused in r.getMessage() and "alone" in r.getMessage() for r in caplog.records)
    assert ledger.progress("r1").succeeded == 10
    assert res.claimed_reduce


def test_a_batch_the_sdk_sent_twice_after_it_was_applied_counts_once(ddb: Any, ledger_table: str) -> None:
    # GIVEN every write is applied, then retried by the SDK (a 500 or a timeout after DynamoDB carried it out)
    from microprocess.chaos.faults import FaultConfig, FaultInjector

    injector = FaultInjector(FaultConfig(applied_then_error=1.0))
    injector.install_ambiguous_writes(ddb)
    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(3))
    _finished_run(ledger, 10)
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(10)])
    # THEN the retried INSERTs find their own records (by the write token) and all 10 count once
    assert injector.fired["applied_then_error at BatchExecuteStatement"] == 1  # the fault fired on the batch
    assert len(res.newly_recorded) == 10 and not res.duplicates
    assert ledger.progress("r1").succeeded == 10
    assert res.claimed_reduce


def test_a_store_without_partiql_gets_every_record_by_a_conditional_put(ddb: Any, ledger_table: str) -> None:
    # GIVEN a DynamoDB-compatible store that refuses BatchExecuteStatement as a whole
    from botocore.exceptions import ClientError

    class NoPartiQL(_CallLog):
        def batch_execute_statement(self, **kw: Any) -> Any:
            self.calls.append(("BatchExecuteStatement", kw))
            error = {"Error": {"Code": "UnknownOperationException", "Message": "no"}}
            raise ClientError(error, "BatchExecuteStatement")  # type: ignore[arg-type]

    client = NoPartiQL(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    _finished_run(ledger, 10)
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(10)])
    # THEN each record goes by a conditional put and all count once
    assert client.task_ops().count("PutItem") == 10
    assert len(res.newly_recorded) == 10 and ledger.progress("r1").succeeded == 10
