"""A service that sheds load ("not now" for every job: 503 with a long `Retry-After`, or its declared
header) pauses every job's pushes to it until then, without failing or counting a task."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from microprocess.control.pause import PRIOR_ATTEMPTS_ATTRIBUTE
from microprocess.declarations import JobRegistry, ServiceDeclaration, declare
from microprocess.pipeline.push import HttpPusher
from microprocess.pipeline.shedding import ServiceWaits, ShedGate
from tests.functions_harness import JOB, Behaviour, Stack
from tests.test_forwarder_throttled import ENOUGH_TIME, attribute, one_task

OTHER = declare(**{**JOB.model_dump(), "name": "other-job"})
JOBS = JobRegistry([JOB, OTHER])


class Services:
    def __contains__(self, name: object) -> bool:
        return name == JOB.service

    def get(self, name: str) -> ServiceDeclaration:
        return ServiceDeclaration(name=name, local_app="m:app", shed_after_s=60)


def task_of(st: Stack, job: str, run_id: str) -> dict[str, Any]:
    """The one task of a new one-item run of `job` as the event source delivers it."""
    st.splitter(jobs=JOBS).handle({"job": job, "run_id": run_id, "items": [{"company_id": "C1"}]}, ENOUGH_TIME)
    return next(r for r in st.receive(st.task_queue) if f'"{run_id}"' in r["body"])


def gate(st: Stack) -> ShedGate:
    return ShedGate(ServiceWaits(st.ddb, "ledger", ttl_s=0), Services())


def test_a_503_with_a_long_retry_after_pauses_every_job_on_the_service_without_counting(stack: Stack) -> None:
    # GIVEN a task on its last attempt that the service answers 503 Retry-After: 120 (>= shed_after_s 60)
    stack.service.behaviours["C1"] = Behaviour(status=503, retry_after="120")
    record = one_task(stack, receive_count=JOB.max_attempts, jobs=JOBS)
    forwarder = stack.forwarder(jobs=JOBS, shed_gate=gate(stack))
    # WHEN the forwarder handles it
    assert forwarder.handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN it is neither FAILED nor counted: a copy arrives after the wait (SQS's longest delay
    # at most), carrying the attempts that counted
    assert stack.ledger.progress("r1").failed == 0
    [copy] = stack.sqs.sent
    assert 120 <= copy["DelaySeconds"] <= 122
    assert attribute(copy, PRIOR_ATTEMPTS_ATTRIBUTE) == str(JOB.max_attempts - 1)
    assert stack.metric("TasksShed") == 1
    # AND the adaptive controller is told "shed", not "throttled": the service asked to wait, not for less
    assert (stack.metric("ServiceShed"), stack.metric("ServiceThrottled")) == (1, 0)
    # AND the wait is recorded for the whole service
    until = ServiceWaits(stack.ddb, "ledger").until(JOB.service)
    assert until is not None and 110 < until - time.time() <= 120
    # WHEN another job's task to the same service arrives THEN it is not pushed but held for the wait
    stack.service.behaviours.clear()
    calls = len(stack.service.task_calls())
    other = task_of(stack, OTHER.name, "r2")
    other_job = stack.forwarder(jobs=JOBS, shed_gate=gate(stack))
    assert other_job.handle({"Records": [other]}) == {"batchItemFailures": []}
    assert len(stack.service.task_calls()) == calls
    held = stack.sqs.sent[-1]
    assert 100 < held["DelaySeconds"] <= 122 and held["MessageBody"] == other["body"]
    assert stack.ledger.progress("r2").failed == 0


def test_a_short_retry_after_only_slows_the_task_and_pushes_resume_when_the_wait_ends(stack: Stack) -> None:
    # GIVEN a 429 with Retry-After: 3 (below shed_after_s): an ordinary throttle, no service-wide wait
    stack.service.behaviours["C1"] = Behaviour(status=429, retry_after="3")
    record = one_task(stack, receive_count=1, jobs=JOBS)
    assert stack.forwarder(jobs=JOBS, shed_gate=gate(stack)).handle({"Records": [record]}) == {"batchItemFailures": []}
    assert ServiceWaits(stack.ddb, "ledger").until(JOB.service) is None
    assert stack.metric("TasksShed") == 0 and stack.metric("TasksThrottled") == 1
    assert (stack.metric("ServiceShed"), stack.metric("ServiceThrottled")) == (0, 1)  # throttling, for the AIMD
    # GIVEN a wait that has just ended WHEN a task arrives THEN it is pushed at once
    clock = [time.time()]
    waits = ServiceWaits(stack.ddb, "ledger", ttl_s=0, clock=lambda: clock[0])
    waits.ask_to_wait(JOB.service, 5, "test")
    clock[0] += 6
    stack.service.behaviours.clear()
    again = task_of(stack, JOB.name, "r3")
    forwarder = stack.forwarder(jobs=JOBS, shed_gate=ShedGate(waits, Services()))
    assert forwarder.handle({"Records": [again]}) == {"batchItemFailures": []}
    assert stack.service.task_calls()


def test_past_the_throttle_budget_a_shed_answer_counts(stack: Stack) -> None:
    stack.service.behaviours["C1"] = Behaviour(status=503, retry_after="120")
    record = one_task(stack, receive_count=JOB.max_attempts, jobs=JOBS, since=time.time() - JOB.throttle_budget_s - 1)
    assert stack.forwarder(jobs=JOBS, shed_gate=gate(stack)).handle({"Records": [record]}) == {"batchItemFailures": []}
    assert stack.ledger.progress("r1").failed == 1


class _Shedding(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("X-Shed-Until", "90")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def shedding_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Shedding)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_the_declared_header_is_read_by_the_pusher(shedding_server: str) -> None:
    pusher = HttpPusher(shedding_server, lambda: "s" * 64, shed_header="X-Shed-Until")
    result = pusher.push("/t", {"a": 1}, idempotency_key="r:t", timeout=5)
    assert result.status == 200 and result.shed_after_s == 90.0
    plain = HttpPusher(shedding_server, lambda: "s" * 64)
    assert plain.push("/t", {"a": 1}, idempotency_key="r:t", timeout=5).shed_after_s is None
