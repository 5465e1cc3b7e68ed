"""A push refused with 401 may be a rotation the service has not taken up yet: it is re-sent
later without counting as an attempt, for up to `SIGNATURE_REFUSED_GRACE_S`, and only then
FAILED (docs/push-contract.md §4). The same holds for reduce-part and finalize pushes, whose
failure would fail the whole run."""

from __future__ import annotations

import time
from typing import Any

from microprocess.ledger import RunStatus, TaskState
from microprocess.pipeline.attempts import PRIOR_ATTEMPTS_ATTRIBUTE
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind
from microprocess.pipeline.forwarder import Forwarder
from microprocess.pipeline.push import HttpPusher
from microprocess.pipeline.resend import (
    SIGNATURE_REFUSED_DELAY_S,
    SIGNATURE_REFUSED_GRACE_S,
    SIGNATURE_REFUSED_SINCE_ATTRIBUTE,
)
from tests.functions_harness import JOB, SECRET, Stack

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms


def refused(fwd: Forwarder, st: Stack, secret: str = "not-the-service-secret") -> Forwarder:
    """Sign the forwarder's pushes with `secret` (the service knows only its own: 401)."""
    pusher = HttpPusher(st.service.url, lambda: secret)
    fwd.pusher_for = lambda _service: pusher
    return fwd


def one_task(st: Stack, *, receive_count: int, since: float | None = None) -> dict[str, Any]:
    st.splitter().handle({"job": JOB.name, "run_id": "r1", "items": [{"company_id": "C1"}]}, ENOUGH_TIME)
    [record] = st.receive(st.task_queue)
    record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    if since is not None:
        mark = {"stringValue": f"{since:.3f}", "dataType": "String"}
        record["messageAttributes"][SIGNATURE_REFUSED_SINCE_ATTRIBUTE] = mark
    return record


def attribute(sent: dict[str, Any], name: str) -> str:
    return str(sent["MessageAttributes"][name]["StringValue"])


def test_a_401_on_the_last_attempt_is_re_sent_later_uncounted_not_failed(stack: Stack) -> None:
    # GIVEN a task on its last attempt whose service refuses the forwarder's signature (it has not
    # taken up the rotated secret yet)
    record = one_task(stack, receive_count=JOB.max_attempts)
    before = time.time()
    # WHEN the forwarder handles it
    assert refused(stack.forwarder(), stack).handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN nothing is recorded: a delayed copy carries the attempts that counted and since when it is refused
    assert stack.ledger.progress("r1").failed == 0
    [copy] = stack.sqs.sent
    assert copy["MessageBody"] == record["body"]
    assert SIGNATURE_REFUSED_DELAY_S // 2 <= copy["DelaySeconds"] <= SIGNATURE_REFUSED_DELAY_S
    assert attribute(copy, PRIOR_ATTEMPTS_ATTRIBUTE) == str(JOB.max_attempts - 1)
    assert before <= float(attribute(copy, SIGNATURE_REFUSED_SINCE_ATTRIBUTE)) <= time.time()
    assert stack.metric("TasksSignatureRefused") == 1
    # WHEN the service has taken up the secret by the time the copy arrives
    [again] = stack.receive(stack.task_queue)
    assert stack.forwarder().handle({"Records": [again]}) == {"batchItemFailures": []}
    # THEN it is pushed as the same attempt and SUCCEEDED
    [call] = stack.service.task_calls()
    assert call["payload"]["attempt"] == JOB.max_attempts
    assert (stack.ledger.progress("r1").succeeded, stack.ledger.progress("r1").failed) == (1, 0)


def test_a_401_past_the_grace_is_failed_with_its_error(stack: Stack) -> None:
    # GIVEN a task refused for longer than the grace (a wrong secret, not a rotation)
    record = one_task(stack, receive_count=1, since=time.time() - SIGNATURE_REFUSED_GRACE_S - 1)
    # WHEN refused once more
    assert refused(stack.forwarder(), stack).handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN it is FAILED with the 401 (the run can end), not re-sent
    [failed] = list(stack.ledger.iter_failed("r1"))
    assert failed.state is TaskState.FAILED and str(failed.error).startswith("HTTP 401")
    assert stack.sqs.sent == []


def test_a_401_on_a_reduce_push_does_not_fail_the_run(stack: Stack) -> None:
    # GIVEN a run whose tasks all succeeded: its reduce parts are queued
    stack.splitter().handle({"job": JOB.name, "run_id": "r1", "items": [{"company_id": "C1"}]}, ENOUGH_TIME)
    [task] = stack.receive(stack.task_queue)
    done = stack.forwarder().handle({"Records": [task]})
    assert done == {"batchItemFailures": []}
    stack.settle(stack.task_queue, [task], done)
    parts = stack.receive(stack.task_queue)
    assert parts and all(TaskEnvelope.parse(p["body"]).kind is TaskKind.REDUCE_PART for p in parts)
    for part in parts:  # each on its last attempt
        part["attributes"]["ApproximateReceiveCount"] = str(JOB.max_attempts)
    # WHEN the service refuses the reduce-part pushes' signature (a rotation under way)
    result = refused(stack.forwarder(), stack).handle({"Records": parts})
    assert result == {"batchItemFailures": []}
    stack.settle(stack.task_queue, parts, result)  # the originals acknowledged, as the event source does
    # THEN the run is not FAILED: each part is re-sent for later, marked
    assert stack.ledger.require_run("r1").status is RunStatus.REDUCING
    assert len(stack.sqs.sent) == len(parts)
    assert all(SIGNATURE_REFUSED_SINCE_ATTRIBUTE in s["MessageAttributes"] for s in stack.sqs.sent)
    # AND once the secret is taken up, the run ends SUCCEEDED
    stack.drive(stack.forwarder().handle, stack.task_queue)
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED
    assert SECRET  # the service's own secret signs the final pushes
