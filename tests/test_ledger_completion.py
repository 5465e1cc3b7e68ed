"""`microprocess.ledger.completion`: the completion check, reduce once, the verdict and the run's end (moto)."""

from __future__ import annotations

from typing import Any

import pytest

from microprocess.declarations import declare
from microprocess.ledger import (
    CRASH_AFTER_TASK_WRITE,
    CURSOR_DONE,
    Ledger,
    RunStatus,
    TaskOutcome,
    TaskState,
)
from microprocess.pipeline.envelope import shard_of
from tests.interleave import PausedBeforeWrite
from tests.ledger_scenarios import JOB, K, outcome, record, split


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
