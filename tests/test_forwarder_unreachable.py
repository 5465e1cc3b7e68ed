"""A push that never reached its service (it could not connect: a restart, a deploy) burns no
attempt: the task is re-sent with a growing delay for up to the job's `unreachable_grace_s`,
then counts again, so a service that stays down still ends the run (docs/push-contract.md §5)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from microprocess.ledger import TaskState
from microprocess.pipeline.attempts import PRIOR_ATTEMPTS_ATTRIBUTE
from microprocess.pipeline.envelope import TaskEnvelope
from microprocess.pipeline.forwarder import Forwarder
from microprocess.pipeline.push import HttpPusher, PushOutcome
from microprocess.pipeline.resend import UNREACHABLE_MAX_DELAY_S, UNREACHABLE_SINCE_ATTRIBUTE
from tests.functions_harness import JOB, SECRET, Stack, job_with

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def dead_url() -> str:
    return closed_port_url()


def down(fwd: Forwarder, url: str) -> Forwarder:
    """Point the forwarder at `url` (the job's service, unreachable there)."""
    pusher = HttpPusher(url, lambda: SECRET)
    fwd.pusher_for = lambda _service: pusher
    return fwd


def one_task(
    st: Stack, *, receive_count: int, since: float | None = None, prior: int = 0, run_id: str = "r1"
) -> dict[str, Any]:
    """The first task of a new run as the event source delivers it on its `receive_count`-th receive;
    `since` and `prior`: a copy re-sent after an unreachable push, `prior` attempts counted before."""
    st.splitter().handle({"job": JOB.name, "run_id": run_id, "items": [{"company_id": "C1"}]}, ENOUGH_TIME)
    [record] = st.receive(st.task_queue)
    record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    if since is not None:
        record["messageAttributes"][UNREACHABLE_SINCE_ATTRIBUTE] = {"stringValue": f"{since:.3f}", "dataType": "String"}
    if prior:
        record["messageAttributes"][PRIOR_ATTEMPTS_ATTRIBUTE] = {"stringValue": str(prior), "dataType": "Number"}
    return record


def attribute(sent: dict[str, Any], name: str) -> str:
    return str(sent["MessageAttributes"][name]["StringValue"])


def test_a_refused_connection_is_not_an_attempt_even_at_the_last_one(stack: Stack, dead_url: str) -> None:
    # GIVEN a task on its last attempt (3 of 3) whose service refuses connections (restarting)
    record = one_task(stack, receive_count=JOB.max_attempts)
    before = time.time()
    # WHEN the forwarder handles it
    assert down(stack.forwarder(), dead_url).handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN nothing is recorded: the original is acknowledged and a copy re-sent, delayed, that
    # carries the attempts that counted (2) and since when the service has been unreachable
    progress = stack.ledger.progress("r1")
    assert (progress.succeeded, progress.failed) == (0, 0)
    [copy] = stack.sqs.sent
    assert copy["QueueUrl"] == stack.task_queue and copy["MessageBody"] == record["body"]
    assert 1 <= copy["DelaySeconds"] <= UNREACHABLE_MAX_DELAY_S
    assert attribute(copy, PRIOR_ATTEMPTS_ATTRIBUTE) == str(JOB.max_attempts - 1)
    assert before <= float(attribute(copy, UNREACHABLE_SINCE_ATTRIBUTE)) <= time.time()
    assert stack.sqs.visibility == [] and stack.metric("TasksUnreachable") == 1
    # WHEN the service is back and the copy arrives (its first receive)
    [again] = stack.receive(stack.task_queue)
    assert again["attributes"]["ApproximateReceiveCount"] == "1"
    assert stack.forwarder().handle({"Records": [again]}) == {"batchItemFailures": []}
    # THEN it is pushed as attempt 3 (the refused push did not count) and SUCCEEDED
    [call] = stack.service.task_calls()
    assert call["payload"]["attempt"] == JOB.max_attempts
    progress = stack.ledger.progress("r1")
    assert (progress.succeeded, progress.failed) == (1, 0)


def test_the_wait_grows_with_the_time_unreachable_and_keeps_its_start(stack: Stack, dead_url: str) -> None:
    # GIVEN a copy whose service has been unreachable for 40 s
    since = time.time() - 40
    record = one_task(stack, receive_count=1, since=since)
    # WHEN it is refused again
    assert down(stack.forwarder(), dead_url).handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN it waits about half that (20 s times a jitter in [0.5, 1]), keeping its start
    [copy] = stack.sqs.sent
    assert 10 <= copy["DelaySeconds"] <= 20
    assert float(attribute(copy, UNREACHABLE_SINCE_ATTRIBUTE)) == pytest.approx(since, abs=0.01)
    # AND the wait never exceeds the cap, however long the outage
    for m in stack.receive(stack.task_queue):  # (the copy above)
        stack.sqs.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=m["receiptHandle"])
    stack.sqs.sent.clear()
    late = one_task(stack, receive_count=1, since=time.time() - 800, run_id="r2")
    assert down(stack.forwarder(), dead_url).handle({"Records": [late]}) == {"batchItemFailures": []}
    assert UNREACHABLE_MAX_DELAY_S // 2 <= stack.sqs.sent[0]["DelaySeconds"] <= UNREACHABLE_MAX_DELAY_S


def test_past_the_grace_a_refused_push_counts_and_the_last_one_fails_the_task(stack: Stack, dead_url: str) -> None:
    # GIVEN a task unreachable for longer than its job's grace (every push since refused: each
    # receive is the first of a re-sent copy), on its last attempt
    since = time.time() - JOB.unreachable_grace_s - 1
    record = one_task(stack, receive_count=1, since=since, prior=JOB.max_attempts - 1)
    # WHEN it is refused once more
    assert down(stack.forwarder(), dead_url).handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN it is recorded FAILED with the connection error (the run can end), not re-sent
    [failed] = list(stack.ledger.iter_failed("r1"))
    assert failed.state is TaskState.FAILED and "service unreachable" in str(failed.error)
    assert dead_url.removeprefix("http://") in str(failed.error)
    assert stack.sqs.sent == []


def test_past_the_grace_with_attempts_left_it_backs_off_as_an_attempt(stack: Stack, dead_url: str) -> None:
    record = one_task(stack, receive_count=1, since=time.time() - JOB.unreachable_grace_s - 1)
    result = down(stack.forwarder(), dead_url).handle({"Records": [record]})
    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    assert len(stack.sqs.visibility) == 1 and stack.sqs.sent == []


def test_a_grace_of_zero_counts_every_refused_push(stack: Stack, dead_url: str) -> None:
    job, registry = job_with(unreachable_grace_s=0)
    record = one_task(stack, receive_count=job.max_attempts)
    assert down(stack.forwarder(jobs=registry), dead_url).handle({"Records": [record]}) == {"batchItemFailures": []}
    [failed] = list(stack.ledger.iter_failed("r1"))
    assert "service unreachable" in str(failed.error) and stack.sqs.sent == []


def test_when_the_resend_fails_the_task_is_kept_by_the_ordinary_backoff(stack: Stack, dead_url: str) -> None:
    # GIVEN SQS refusing the re-send (a throttle) for a task with attempts left
    record = one_task(stack, receive_count=1)
    fwd = down(stack.forwarder(), dead_url)

    def refuse(**_kw: Any) -> Any:
        raise RuntimeError("injected: SendMessage throttled")

    stack.sqs.send_message = refuse  # type: ignore[method-assign]
    # THEN the message is kept (listed as failed, backed off): not lost, not recorded
    assert fwd.handle({"Records": [record]}) == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    assert len(stack.sqs.visibility) == 1
    assert stack.ledger.progress("r1").failed == 0


def test_an_answer_from_the_service_still_counts(stack: Stack) -> None:
    # A 503 did reach the service: on the last attempt the task is FAILED, nothing re-sent
    from tests.functions_harness import Behaviour

    stack.service.behaviours["C1"] = Behaviour(status=503)
    record = one_task(stack, receive_count=JOB.max_attempts)
    assert stack.forwarder().handle({"Records": [record]}) == {"batchItemFailures": []}
    [failed] = list(stack.ledger.iter_failed("r1"))
    assert "HTTP 503" in str(failed.error) and stack.sqs.sent == []


# ------------------------------------------------------------------ the pusher's classification


@pytest.fixture
def hangup_server() -> Iterator[str]:
    """Accepts connections and closes them without an answer: the request did reach it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(2)
    srv.close()


def test_the_pusher_tells_a_refused_connection_from_one_cut_after_sending(dead_url: str, hangup_server: str) -> None:
    refused = HttpPusher(dead_url, lambda: SECRET).push("/t", {"a": 1}, idempotency_key="r:t", timeout=2)
    assert (refused.outcome, refused.reached) == (PushOutcome.RETRY, False)
    assert "service unreachable" in (refused.error or "") and "ConnectionRefusedError" in (refused.error or "")
    cut = HttpPusher(hangup_server, lambda: SECRET).push("/t", {"a": 1}, idempotency_key="r:t", timeout=2)
    assert (cut.outcome, cut.reached) == (PushOutcome.RETRY, True)


def test_an_unresolvable_host_is_unreachable() -> None:
    result = HttpPusher("http://no-such-host.invalid", lambda: SECRET).push(
        "/t", {"a": 1}, idempotency_key="r:t", timeout=2
    )
    assert (result.outcome, result.reached) == (PushOutcome.RETRY, False)


def test_a_push_that_cannot_be_signed_is_not_an_attempt(stack: Stack) -> None:
    # The secret could not be read (Secrets Manager down): nothing was sent
    record = one_task(stack, receive_count=JOB.max_attempts)
    fwd = stack.forwarder()

    def no_secret() -> str:
        raise RuntimeError("injected: GetSecretValue failed")

    pusher = HttpPusher(stack.service.url, no_secret)
    fwd.pusher_for = lambda _service: pusher
    assert fwd.handle({"Records": [record]}) == {"batchItemFailures": []}
    assert stack.ledger.progress("r1").failed == 0 and len(stack.sqs.sent) == 1
    assert TaskEnvelope.parse(stack.sqs.sent[0]["MessageBody"]).task_id == TaskEnvelope.parse(record["body"]).task_id


def test_the_grace_belongs_to_an_outage_a_second_outage_gets_its_own(stack: Stack, dead_url: str) -> None:
    # GIVEN a task that met an outage long ago (its copy still carries since when), then reached the
    # service and was kept by an ordinary backoff (a long Retry-After: this copy's second receive),
    # now on its last attempt
    record = one_task(stack, receive_count=JOB.max_attempts, since=time.time() - JOB.unreachable_grace_s - 100)
    before = time.time()
    # WHEN a second outage (another deploy) refuses its push
    assert down(stack.forwarder(), dead_url).handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN this outage gets its own grace: not counted, re-sent with since = now, not FAILED
    assert stack.ledger.progress("r1").failed == 0
    [copy] = stack.sqs.sent
    assert before <= float(attribute(copy, UNREACHABLE_SINCE_ATTRIBUTE)) <= time.time()
    assert attribute(copy, PRIOR_ATTEMPTS_ATTRIBUTE) == str(JOB.max_attempts - 1)


@pytest.fixture
def crash_server() -> Iterator[str]:
    """A service that reads one request and dies while handling it (a poison item, an OOM): the
    connection is cut and the port refuses every connection after."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}"

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        srv.close()  # the process is gone: nothing listens any more
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield url
    t.join(2)
    srv.close()


def test_a_request_that_left_and_was_cut_is_reached_even_when_the_reconnect_is_refused(crash_server: str) -> None:
    result = HttpPusher(crash_server, lambda: SECRET).push("/t", {"a": 1}, idempotency_key="r:t", timeout=2)
    assert (result.outcome, result.reached) == (PushOutcome.RETRY, True)
    assert "after the request was sent" in (result.error or ""), result.error


def test_a_task_that_crashes_its_service_counts_its_attempts(stack: Stack, crash_server: str) -> None:
    # GIVEN a task on its last attempt whose push crashes the service (it read the request, then died)
    record = one_task(stack, receive_count=JOB.max_attempts)
    # WHEN the forwarder handles it
    assert down(stack.forwarder(), crash_server).handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN that push counted: the task is FAILED with the cut connection, not re-sent for free
    [failed] = list(stack.ledger.iter_failed("r1"))
    assert failed.attempts == JOB.max_attempts and "after the request was sent" in str(failed.error)
    assert stack.sqs.sent == [] and stack.metric("TasksUnreachable") == 0


def test_a_keep_alive_connection_closed_by_a_service_that_went_down_is_never_reached() -> None:
    # GIVEN a service that answers one push on a kept-alive connection, then goes down (a deploy):
    # it closes that idle connection and refuses new ones
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    answered = threading.Event()

    def serve_once_then_go_down() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        answered.wait(2)
        srv.close()
        conn.close()

    t = threading.Thread(target=serve_once_then_go_down, daemon=True)
    t.start()
    pusher = HttpPusher(f"http://127.0.0.1:{srv.getsockname()[1]}", lambda: SECRET)
    assert pusher.push("/t", {"a": 1}, idempotency_key="r:t1", timeout=2).status == 200
    answered.set()
    t.join(2)
    time.sleep(0.1)  # the close has arrived
    # WHEN the next push is made THEN no byte of it left: the closed connection was not written to,
    # and the new one was refused, so it is "never reached" (the job's grace applies)
    result = pusher.push("/t", {"a": 1}, idempotency_key="r:t2", timeout=2)
    assert (result.outcome, result.reached) == (PushOutcome.RETRY, False), result.error
