"""A service that asks to slow down (429 or 503 with `Retry-After`) has not failed the task: within
the job's `throttle_budget_s` the push is not an attempt (the task is re-sent after the
`Retry-After`); past it, such answers count again, so a run still ends (ARCHITECTURE invariant 11)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from microprocess.ledger import TaskState
from microprocess.pipeline.attempts import PRIOR_ATTEMPTS_ATTRIBUTE
from microprocess.pipeline.resend import MAX_DELAY_S, THROTTLED_SINCE_ATTRIBUTE
from tests.functions_harness import JOB, Behaviour, Stack, job_with

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms


def one_task(
    st: Stack, *, receive_count: int, since: float | None = None, jobs: Any = None, run_id: str = "r1"
) -> dict[str, Any]:
    """The task of a one-item run as the event source delivers it on its `receive_count`-th receive;
    `since`: the copy carries since when its pushes have been throttled."""
    kw = {"jobs": jobs} if jobs is not None else {}
    st.splitter(**kw).handle({"job": JOB.name, "run_id": run_id, "items": [{"company_id": "C1"}]}, ENOUGH_TIME)
    [record] = st.receive(st.task_queue)
    record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    if since is not None:
        record["messageAttributes"][THROTTLED_SINCE_ATTRIBUTE] = {"stringValue": f"{since:.3f}", "dataType": "String"}
    return record


def attribute(sent: dict[str, Any], name: str) -> str:
    return str(sent["MessageAttributes"][name]["StringValue"])


@pytest.mark.parametrize("status", [429, 503])
def test_a_throttled_push_on_the_last_attempt_is_not_counted(stack: Stack, status: int) -> None:
    # GIVEN a task on its last attempt that the service answers `status` with Retry-After: 3
    stack.service.behaviours["C1"] = Behaviour(status=status, retry_after="3")
    record = one_task(stack, receive_count=JOB.max_attempts)
    before = time.time()
    # WHEN the forwarder handles it
    assert stack.forwarder().handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN it is not FAILED: a copy comes back after the Retry-After (+ up to 1 s), carrying the
    # attempts that counted and since when it is throttled
    assert stack.ledger.progress("r1").failed == 0
    [copy] = stack.sqs.sent
    assert copy["MessageBody"] == record["body"] and 3 <= copy["DelaySeconds"] <= 4
    assert attribute(copy, PRIOR_ATTEMPTS_ATTRIBUTE) == str(JOB.max_attempts - 1)
    assert before <= float(attribute(copy, THROTTLED_SINCE_ATTRIBUTE)) <= time.time()
    assert stack.metric("TasksThrottled") == 1
    # WHEN the service takes it on the copy's first receive THEN it is pushed as the same attempt and SUCCEEDS
    stack.service.behaviours.clear()
    [again] = stack.receive(stack.task_queue)
    assert stack.forwarder().handle({"Records": [again]}) == {"batchItemFailures": []}
    assert stack.service.task_calls()[-1]["payload"]["attempt"] == JOB.max_attempts
    assert stack.ledger.progress("r1").succeeded == 1


def test_the_throttled_since_mark_is_kept_from_the_first_throttled_answer(stack: Stack) -> None:
    stack.service.behaviours["C1"] = Behaviour(status=429, retry_after="1")
    since = time.time() - 60
    record = one_task(stack, receive_count=1, since=since)
    assert stack.forwarder().handle({"Records": [record]}) == {"batchItemFailures": []}
    [copy] = stack.sqs.sent
    assert float(attribute(copy, THROTTLED_SINCE_ATTRIBUTE)) == pytest.approx(since, abs=0.01)


def test_past_the_budget_a_throttled_push_counts_and_the_last_one_fails_the_task(stack: Stack) -> None:
    stack.service.behaviours["C1"] = Behaviour(status=429, retry_after="1")
    record = one_task(stack, receive_count=JOB.max_attempts, since=time.time() - JOB.throttle_budget_s - 1)
    assert stack.forwarder().handle({"Records": [record]}) == {"batchItemFailures": []}
    [failed] = list(stack.ledger.iter_failed("r1"))
    assert failed.state is TaskState.FAILED and "HTTP 429" in str(failed.error) and stack.sqs.sent == []


def test_a_budget_of_zero_counts_every_throttled_push(stack: Stack) -> None:
    job, registry = job_with(throttle_budget_s=0)
    stack.service.behaviours["C1"] = Behaviour(status=429, retry_after="1")
    record = one_task(stack, receive_count=job.max_attempts, jobs=registry)
    assert stack.forwarder(jobs=registry).handle({"Records": [record]}) == {"batchItemFailures": []}
    assert stack.ledger.progress("r1").failed == 1 and stack.sqs.sent == []


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(503, None), (500, "3"), (429, str(MAX_DELAY_S + 100))],
    ids=["503-without-retry-after", "500", "retry-after-beyond-sqs-delay"],
)
def test_other_retryable_answers_count(stack: Stack, status: int, retry_after: str | None) -> None:
    # A 503 without Retry-After or a 500 is the service failing; a Retry-After longer than SQS can
    # delay a message is honoured by the counted backoff (the message's visibility)
    stack.service.behaviours["C1"] = Behaviour(status=status, retry_after=retry_after)
    record = one_task(stack, receive_count=1)
    result = stack.forwarder().handle({"Records": [record]})
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    assert stack.sqs.sent == [] and len(stack.sqs.visibility) == 1
