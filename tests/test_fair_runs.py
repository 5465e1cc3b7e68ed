"""Each run is a tenant of its job's SQS fair queue (`microprocess.pipeline.tenants`): every sender of
a run's tasks sets its `MessageGroupId` (the splitter, the forwarder's re-sends, the resume of parked
tasks, a retry run), a `--priority high` run spreads its tasks over `priority_weight` tenants, and a
message received without a group (sent before fair queues) still works."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from microprocess.cli.service_load import Priority
from microprocess.control.pause import RunResumer, pause
from microprocess.ledger import RunStatus
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.start import PRIORITIES, StartEventError, parse_start_event
from microprocess.pipeline.tenants import MAX_GROUP_ID_CHARS, group_id, record_group, tenant_count
from tests.functions_harness import JOB, Behaviour, Stack, job_with

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms


def companies(n: int) -> list[dict[str, Any]]:
    return [{"company_id": f"C{i:07d}"} for i in range(n)]


def queued(st: Stack, queue_url: str | None = None) -> list[dict[str, Any]]:
    """Every message on the queue (received, then made visible again): body, group, envelope."""
    url = queue_url or st.task_queue
    found: list[dict[str, Any]] = []
    while batch := st.sqs.inner.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], VisibilityTimeout=30
    ).get("Messages"):
        found += [
            {
                "group": m["Attributes"].get("MessageGroupId"),
                "env": TaskEnvelope.parse(m["Body"]),
                "handle": m["ReceiptHandle"],
            }
            for m in batch
        ]
    for m in found:
        st.sqs.inner.change_message_visibility(QueueUrl=url, ReceiptHandle=m["handle"], VisibilityTimeout=0)
    return found


def test_a_task_group_id_is_its_run_or_one_of_its_runs_tenants() -> None:
    assert group_id("credit-scores-1", "0-000000001") == "credit-scores-1"
    ids = [f"0-{i:09d}" for i in range(400)]
    tenants = Counter(group_id("credit-scores-1", t, 4) for t in ids)
    # four tenants, each about a quarter of the tasks; the same task always in the same one
    assert sorted(tenants) == [f"credit-scores-1#{k}" for k in range(4)]
    assert min(tenants.values()) > 60
    assert group_id("credit-scores-1", "0-000000007", 4) == group_id("credit-scores-1", "0-000000007", 4)
    # a run id of SQS's 128 characters still gives valid, distinct group ids
    long_a, long_b = "j-" + "a" * 126, "j-" + "a" * 125 + "b"
    for k in (1, 8):
        a, b = group_id(long_a, "0-1", k), group_id(long_b, "0-1", k)
        assert len(a) <= MAX_GROUP_ID_CHARS and len(b) <= MAX_GROUP_ID_CHARS and a != b


def test_the_tenant_count_is_the_rounded_priority_weight_of_a_high_run() -> None:
    assert tenant_count(None, 4.0) == tenant_count("normal", 4.0) == 1
    assert (tenant_count("high", 4.0), tenant_count("high", 2.6), tenant_count("high", 1.0)) == (4, 3, 1)
    assert tenant_count("high", 1000.0) == 64
    # the CLI's choices are the start event's
    assert tuple(p.value for p in Priority) == PRIORITIES


def test_the_start_event_carries_the_priority() -> None:
    assert parse_start_event({"job": "j", "run_id": "j-1", "priority": "high"}).priority == "high"
    assert parse_start_event({"job": "j", "run_id": "j-1"}).priority is None
    with pytest.raises(StartEventError, match="'priority' must be one of"):
        parse_start_event({"job": "j", "run_id": "j-1", "priority": "urgent"})


def test_the_splitter_sends_a_normal_run_as_one_tenant(stack: Stack) -> None:
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(25)})
    sent = queued(stack)
    assert len(sent) == 25 and {m["group"] for m in sent} == {"r1"}
    assert stack.ledger.require_run("r1").tenants == 1


def test_the_splitter_sends_a_high_run_as_priority_weight_tenants(stack: Stack) -> None:
    # GIVEN a job with priority_weight 3 WHEN a run starts with priority high
    job, registry = job_with(priority_weight=3.0)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(60), "priority": "high"}, jobs=registry)
    # THEN its tasks are spread over 3 tenants, each task in the one its id hashes to
    sent = queued(stack)
    assert {m["group"] for m in sent} == {"r1#0", "r1#1", "r1#2"}
    assert all(m["group"] == group_id("r1", m["env"].task_id, 3) for m in sent)
    assert stack.ledger.require_run("r1").tenants == 3


def test_reduce_messages_carry_no_group(stack: Stack) -> None:
    # GIVEN a run whose tasks all succeed WHEN its reduce parts and finalize are enqueued
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(3)})
    fwd = stack.forwarder()
    for r in stack.receive(stack.task_queue):
        fwd.handle({"Records": [r]})
        stack.sqs.inner.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=r["receiptHandle"])
    reduces = queued(stack)
    # THEN each is a tenant of its own (SQS's rule for a message without a group): never behind a backlog
    assert reduces and all(m["env"].kind is not TaskKind.TASK and m["group"] is None for m in reduces)


def test_a_re_sent_task_keeps_its_tenant_and_one_without_stays_without(stack: Stack) -> None:
    # GIVEN a high run's task that the service throttles (429 with Retry-After: a re-send)
    job, registry = job_with(priority_weight=4.0)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(1), "priority": "high"}, jobs=registry)
    stack.service.behaviours["C0000000"] = Behaviour(status=429, retry_after="2")
    [record] = stack.receive(stack.task_queue)
    assert record_group(record) == group_id("r1", "0-000000000", 4)
    # WHEN the forwarder handles it THEN the copy goes in the record's tenant
    stack.forwarder(jobs=registry).handle({"Records": [record]})
    [copy] = stack.sqs.sent
    assert copy["MessageGroupId"] == record_group(record)
    # GIVEN a record that came without a group (sent before fair queues) WHEN re-sent THEN without one
    stack.sqs.sent.clear()
    del record["attributes"]["MessageGroupId"]
    stack.forwarder(jobs=registry).handle({"Records": [record]})
    [copy] = stack.sqs.sent
    assert "MessageGroupId" not in copy


def test_a_task_without_a_group_is_still_pushed(stack: Stack) -> None:
    # GIVEN a task message sent before fair queues (no group) WHEN delivered THEN pushed and counted
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(1)})
    [record] = stack.receive(stack.task_queue)
    del record["attributes"]["MessageGroupId"]
    assert stack.forwarder().handle({"Records": [record]}) == {"batchItemFailures": []}
    assert stack.ledger.progress("r1").succeeded == 1


def test_parked_tasks_are_resumed_into_their_tenants(stack: Stack) -> None:
    # GIVEN a paused high run whose tasks the forwarder parked
    job, registry = job_with(priority_weight=2.0)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(8), "priority": "high"}, jobs=registry)
    pause(stack.ledger, "r1")
    fwd = stack.forwarder(jobs=registry)
    for r in stack.receive(stack.task_queue):
        fwd.handle({"Records": [r]})
        stack.sqs.inner.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=r["receiptHandle"])
    assert not queued(stack)
    # WHEN resumed THEN each task is re-sent in the tenant its id hashes to
    RunResumer(
        ledger=stack.ledger,
        sqs=stack.sqs,
        job_queue_url=lambda _job: stack.task_queue,
        reduce_queue_url=stack.task_queue,
        restart_splitter=lambda _event: None,
        settle_s=0,
    ).resume("r1", job)
    resent = queued(stack)
    assert len(resent) == 8 and {m["group"] for m in resent} == {"r1#0", "r1#1"}
    assert all(m["group"] == group_id("r1", m["env"].task_id, 2) for m in resent)


def test_a_retry_run_is_a_tenant_of_its_own(stack: Stack) -> None:
    # GIVEN a run with failed tasks WHEN retried THEN the retry's tasks are in the new run's tenant
    job, registry = job_with(tolerated_failure_pct=100.0)
    stack.service.behaviours["C0000001"] = Behaviour(status=400)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(3)}, jobs=registry)
    stack.drive(stack.forwarder(jobs=registry).handle, stack.task_queue)
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED
    stack.split({"job": job.name, "run_id": "r2", "retry_of": "r1", "source": "manual"}, jobs=registry)
    tasks = [m for m in queued(stack) if m["env"].kind is TaskKind.TASK]
    assert [m["group"] for m in tasks] == ["r2"]


def test_the_sender_wants_one_group_per_message(stack: Stack) -> None:
    sender = QueueSender(client=stack.sqs, queue_url=stack.task_queue)
    with pytest.raises(ValueError, match="2 group ids for 1 messages"):
        sender.send(["{}"], groups=["a", "b"])


def test_run_priority_high_reaches_the_start_event_and_says_what_it_does() -> None:
    from microprocess.cli import service_load
    from microprocess.cli.runs import start_payload
    from microprocess.declarations import load_declarations
    from tests.test_infra_synth import ROOT

    # GIVEN `run --priority high` WHEN the start event is built THEN it carries the priority (normal: nothing)
    assert start_payload(None, "j", "j-1", priority="high")["priority"] == "high"  # type: ignore[arg-type]
    assert "priority" not in start_payload(None, "j", "j-1", priority="normal")  # type: ignore[arg-type]
    # AND on a service that is not shared the note says it weighs within its job (no "no effect")
    declared = load_declarations(ROOT / "microprocess.toml")  # credit-scores on `scores`, no capacity declared
    note = service_load.mark_priority(None, declared, "credit-scores", "r1", Priority.high)  # type: ignore[arg-type]
    assert note is not None and "about 4 shares of job 'credit-scores'" in note and "no effect" not in note


def test_a_chaos_duplicate_of_a_task_goes_in_its_tenant(stack: Stack) -> None:
    from microprocess.chaos.faults import FaultConfig, FaultInjector

    # GIVEN a high run's tasks and a forwarder that duplicates every delivery (the chaos suite's fault)
    job, registry = job_with(priority_weight=2.0)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(4), "priority": "high"}, jobs=registry)
    records = stack.receive(stack.task_queue)
    fwd = stack.forwarder(jobs=registry, faults=FaultInjector(FaultConfig(duplicate_rate=1.0)))
    fwd.handle({"Records": records})
    for r in records:
        stack.sqs.inner.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=r["receiptHandle"])
    # THEN each copy carries its original's group
    copies = [m for m in queued(stack) if m["env"].kind is TaskKind.TASK]
    assert len(copies) == 4 and all(m["group"] == group_id("r1", m["env"].task_id, 2) for m in copies)
