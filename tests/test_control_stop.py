"""Stop early: the tolerance decision, and a hopeless run stopped at once through the real forwarder,
reduced (the report of what was done, the not-attempted tasks listed) and ended FAILED."""

from __future__ import annotations

import math
from typing import Any

import pytest

from microprocess.control.lookup import not_attempted
from microprocess.control.stop import RECORD_MARGIN_S, settle_s, stop_if_hopeless
from microprocess.control.tolerance import cannot_succeed, exceeds_tolerance
from microprocess.ledger import CURSOR_DONE, RunNotActive, RunStatus, TaskOutcome, TaskState
from microprocess.pipeline.admission import RUN_CACHE_TTL_S
from microprocess.pipeline.envelope import shard_of
from tests.functions_harness import Behaviour, Stack, job_with


def companies(n: int) -> list[dict[str, Any]]:
    return [{"company_id": f"C{i:07d}"} for i in range(n)]


@pytest.mark.parametrize(
    ("failed", "expected", "split_done", "pct", "upper", "hopeless"),
    [
        (0, 100, True, 0.0, None, False),  # nothing failed
        (1, 100, True, 1.0, None, False),  # exactly at the tolerance is tolerated
        (2, 100, True, 1.0, None, True),  # above it, with the total final
        (2501, 250_000, True, 1.0, None, True),  # 1.0004%: shows as 1.0%, still above
        (2500, 250_000, True, 1.0, None, False),
        (50, 100, False, 1.0, None, False),  # the split may still add tasks: undecidable
        (1, 10, False, 0.0, None, True),  # 0% tolerated: one failure decides, whatever the total
        (3, 10, False, 1.0, 200, True),  # above 1% of the largest total the run can reach
        (2, 10, False, 1.0, 200, False),
        (5, 1, False, 1.0, 0, True),  # a bound below what is already expected counts as expected
    ],
)
def test_cannot_succeed(
    failed: int, expected: int, split_done: bool, pct: float, upper: int | None, hopeless: bool
) -> None:
    verdict = cannot_succeed(failed, expected, split_done=split_done, tolerated_failure_pct=pct, upper_bound=upper)
    assert verdict is hopeless


def test_exceeds_tolerance_of_an_empty_run_only_with_failures() -> None:
    assert exceeds_tolerance(0, 0, 0.0) is False
    assert exceeds_tolerance(1, 0, 50.0) is True


def outcome(i: int, state: TaskState, shard_count: int) -> TaskOutcome:
    task_id = f"0-{i:09d}"
    return TaskOutcome(task_id, shard_of(task_id, shard_count), state, 1, f"C{i:07d}", error="HTTP 400")


def test_a_hopeless_run_ends_failed_at_once_and_its_other_messages_are_acknowledged_without_pushes(
    stack: Stack,
) -> None:
    # GIVEN a split run of 40 companies whose job tolerates 5%; the service rejects every one
    job, registry = job_with(tolerated_failure_pct=5.0, stop_early=True)
    for i in range(40):
        stack.service.behaviours[f"C{i:07d}"] = Behaviour(status=400)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(40)}, jobs=registry)
    # WHEN the forwarder takes the run's messages
    stack.drive(stack.forwarder(jobs=registry).handle, stack.task_queue)
    # THEN the first batch with failures (moto delivers in any order) stopped the run and claimed
    # its reduce at once; the reduce (on the same queue in this harness) built the report of what
    # was done and ended the run FAILED, above the tolerance
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.FAILED and run.report_uri
    assert run.error and "of 40 tasks failed" in run.error and "above the tolerated 5.0%" in run.error
    # (why it stopped stays first in the run's error, the final count after it)
    assert run.error.startswith("stopped early: 10 of 40 tasks failed") and "; at its end, 10 of 40" in run.error
    assert [c["payload"]["kind"] for c in stack.service.calls if c["payload"]["kind"] != "task"][-1] == "finalize"
    # AND only that first batch was pushed: the other 30 messages were acknowledged without a call
    assert len(stack.service.task_calls()) == 10
    assert stack.depth(stack.task_queue) == 0 and stack.depth(stack.dlq) == 0
    # AND the not-attempted tasks are exactly the 30 without a record
    pushed = {c["payload"]["task_id"] for c in stack.service.task_calls()}
    assert set(not_attempted(stack.ledger, "r1")) == {f"0-{i:09d}" for i in range(40)} - pushed
    assert len(pushed) == 10
    assert stack.metric("RunsStoppedEarly") == 1
    # AND its reduce parts were sent to settle first: no batch admitted before the stop can record
    # a task after the report lists it as not attempted (delivered at once by this harness)
    assert [delay for _queue, delay in stack.sqs.batch_delays] == [settle_s(job)] * job.shard_count
    assert settle_s(job) == math.ceil(RUN_CACHE_TTL_S + 2 * job.task_timeout_s + RECORD_MARGIN_S)


def test_a_batch_mixing_refusals_and_successes_that_crosses_the_tolerance_stops_the_run(stack: Stack) -> None:
    from microprocess.pipeline.envelope import TaskEnvelope

    # GIVEN a split run of 40 companies whose job tolerates 5% (2 failures); the service refuses 3
    job, registry = job_with(tolerated_failure_pct=5.0, stop_early=True)
    for i in (1, 4, 7):
        stack.service.behaviours[f"C{i:07d}"] = Behaviour(status=400)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(40)}, jobs=registry)
    records: list[dict[str, Any]] = []
    while len(records) < 40:
        records += stack.receive(stack.task_queue)
    first = {f"C{i:07d}" for i in range(10)}
    batch = [r for r in records if TaskEnvelope.parse(r["body"]).item["company_id"] in first]
    rest = [r for r in records if r not in batch]
    forwarder = stack.forwarder(jobs=registry)
    # WHEN one batch holds the 3 refusals beside 7 successes
    assert forwarder.handle({"Records": batch}) == {"batchItemFailures": []}
    # THEN that batch stopped the run (3 of 40 is above 5% whatever the others do)
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.REDUCING and (run.error or "").startswith("stopped early: 3 of 40 tasks failed")
    assert stack.metric("RunsStoppedEarly") == 1
    # AND the run's other messages are acknowledged without a push
    assert forwarder.handle({"Records": rest}) == {"batchItemFailures": []}
    assert len(stack.service.task_calls()) == 10


def test_without_stop_early_a_hopeless_run_pushes_every_task_and_fails_at_its_end(stack: Stack) -> None:
    job, registry = job_with(tolerated_failure_pct=5.0, stop_early=False)
    for i in range(5):
        stack.service.behaviours[f"C{i:07d}"] = Behaviour(status=400)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(40)}, jobs=registry)
    stack.drive(stack.forwarder(jobs=registry).handle, stack.task_queue)
    assert len(stack.service.task_calls()) == 40
    run = stack.ledger.require_run("r1")  # its reduce ran (same queue here) and judged it
    assert run.status is RunStatus.FAILED and run.report_uri
    assert run.error and not run.error.startswith("stopped early")


def test_failures_within_what_the_split_may_still_add_do_not_stop_a_splitting_run(stack: Stack) -> None:
    # GIVEN a splitting run (one page of 10 accounted) with 5% tolerated, and 3 failures
    job, _ = job_with(tolerated_failure_pct=5.0, stop_early=True)
    stack.ledger.create_run("r1", job, segments=1)
    stack.ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=10)
    outs = [outcome(i, TaskState.FAILED, job.shard_count) for i in range(3)]
    stack.ledger.record_outcomes("r1", job.counter_count, outs)
    # WHEN checked THEN it goes on: the next pages may bring it under the tolerance
    assert stop_if_hopeless(stack.ledger, "r1", job) is False
    assert stack.ledger.require_run("r1").status is RunStatus.SPLITTING
    # WHEN the split finishes with 10 tasks in all THEN the splitter's finish stops it (30% > 5%)
    stack.ledger.account_page("r1", segment="0", cursor_from="p1", cursor_to=CURSOR_DONE, count=0)
    stack.splitter(jobs=job_with(tolerated_failure_pct=5.0, stop_early=True)[1])._finish(job, "r1")
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.REDUCING and "stopped early: 3 of 10" in (run.error or "")


def test_with_nothing_tolerated_one_failure_stops_a_splitting_run_and_its_splitter(stack: Stack) -> None:
    job, _ = job_with(tolerated_failure_pct=0.0, stop_early=True)
    stack.ledger.create_run("r1", job, segments=1)
    stack.ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=10)
    stack.ledger.record_outcomes("r1", job.counter_count, [outcome(0, TaskState.FAILED, job.shard_count)])
    assert stop_if_hopeless(stack.ledger, "r1", job) is True
    assert stop_if_hopeless(stack.ledger, "r1", job) is False  # once
    with pytest.raises(RunNotActive):
        stack.ledger.account_page("r1", segment="0", cursor_from="p1", cursor_to="p2", count=10)


def test_a_dead_lettered_failure_can_stop_the_run(stack: Stack) -> None:
    from microprocess.pipeline.deadletter import DeadLetterHandler
    from microprocess.pipeline.envelope import TaskEnvelope
    from tests.functions_harness import sqs_record

    job, registry = job_with(tolerated_failure_pct=0.0, stop_early=True)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(5)}, jobs=registry)
    body = TaskEnvelope(
        job=job.name, run_id="r1", task_id="0-000000001", shard=shard_of("0-000000001", job.shard_count), item={}
    ).to_json()
    handler = DeadLetterHandler(jobs=registry, ledger=stack.ledger, s3=stack.s3, bucket="reports", sender=stack.sender)
    handler.handle({"Records": [sqs_record(body, receive_count=5)]})
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.REDUCING and (run.error or "").startswith("stopped early")
