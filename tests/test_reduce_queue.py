"""Reduce parts and finalizes travel on their own queue (REDUCE_QUEUE_URL), consumed by a
forwarder with a long timeout; the task queue's forwarder keeps a short one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from microprocess.chaos.faults import FaultConfig, FaultInjector
from microprocess.ledger import RunStatus
from microprocess.pipeline.deadletter import DeadLetterHandler
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind
from microprocess.pipeline.forwarder import Forwarder
from microprocess.pipeline.push import HttpPusher
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.settings import RuntimeSettings
from microprocess.pipeline.sweeper import Sweeper
from tests.functions_harness import JOB, REGISTRY, Behaviour, Stack, job_with, sqs_record
from tests.test_functions import envelope_for

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms


def start(st: Stack, n: int, run_id: str = "r1") -> dict[str, Any]:
    items = [{"company_id": f"C{i:07d}"} for i in range(n)]
    return st.splitter(two_queues=True).handle({"job": JOB.name, "run_id": run_id, "items": items}, ENOUGH_TIME)


def kinds(st: Stack, queue_url: str) -> list[TaskKind]:
    out: list[TaskKind] = []
    while recs := st.receive(queue_url):
        out += [TaskEnvelope.parse(r["body"]).kind for r in recs]
    return out


def test_reduce_queue_url_defaults_to_empty_meaning_the_task_queue() -> None:
    assert RuntimeSettings(ledger_table="t").reduce_queue_url == ""
    env = {"LEDGER_TABLE": "t", "TASK_QUEUE_URL": "https://q/1/tasks", "REDUCE_QUEUE_URL": "https://q/1/reduces"}
    assert RuntimeSettings.from_env(env).reduce_queue_url == "https://q/1/reduces"


def test_tasks_go_to_the_task_queue_and_reduce_tasks_to_the_reduce_queue(stack: Stack) -> None:
    # GIVEN a run of 6 tasks split with a reduce queue configured
    start(stack, 6)
    assert stack.depth(stack.reduce_queue) == 0
    # WHEN the task forwarder drains the task queue
    stack.drive(stack.forwarder(two_queues=True).handle, stack.task_queue)
    # THEN the reduce was claimed and its parts wait on the reduce queue only
    assert stack.ledger.require_run("r1").status is RunStatus.REDUCING
    assert stack.depth(stack.task_queue) == 0 and stack.depth(stack.reduce_queue) == JOB.shard_count
    # WHEN the reduce forwarder (same code, other queue) drains the reduce queue
    stack.drive(stack.forwarder(two_queues=True).handle, stack.reduce_queue)
    # THEN every part and the finalize were pushed once and the run SUCCEEDED; nothing went to the task queue
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.SUCCEEDED and run.report_uri == "s3://reports/reports/credit-scores/r1/"
    parts = [c for c in stack.service.calls if c["payload"]["kind"] == "reduce-part"]
    finals = [c for c in stack.service.calls if c["payload"]["kind"] == "finalize"]
    assert sorted(c["payload"]["shard"] for c in parts) == list(range(JOB.shard_count)) and len(finals) == 1
    assert stack.depth(stack.task_queue) == 0 and stack.depth(stack.reduce_queue) == 0


def test_the_last_reduce_part_sends_the_finalize_to_the_reduce_queue(stack: Stack) -> None:
    start(stack, 0)  # an empty run claims its reduce at once
    assert kinds(stack, stack.task_queue) == []
    parts = []
    while recs := stack.receive(stack.reduce_queue):
        parts += recs
    assert [TaskEnvelope.parse(r["body"]).kind for r in parts] == [TaskKind.REDUCE_PART] * JOB.shard_count
    assert stack.forwarder(two_queues=True).handle({"Records": parts}) == {"batchItemFailures": []}
    assert kinds(stack, stack.task_queue) == []
    assert kinds(stack, stack.reduce_queue) == [TaskKind.FINALIZE]


def test_backoff_of_a_reduce_part_targets_the_reduce_queue(stack: Stack) -> None:
    start(stack, 0)
    [part, *_] = stack.receive(stack.reduce_queue)
    assert part["eventSourceARN"].endswith(":reduces")
    stack.service.stop()  # connection refused: re-sent (not an attempt), then, without the grace, backed off
    _, no_grace = job_with(unreachable_grace_s=0)
    try:
        resent = stack.forwarder(two_queues=True).handle({"Records": [part]})
        res = stack.forwarder(two_queues=True, jobs=no_grace).handle({"Records": [part]})
    finally:
        stack.service.start()
    assert resent == {"batchItemFailures": []}
    assert [m["QueueUrl"] for m in stack.sqs.sent] == [stack.reduce_queue]
    assert res == {"batchItemFailures": [{"itemIdentifier": part["messageId"]}]}
    assert stack.sqs.visibility_queues == [stack.reduce_queue] and 1 <= stack.sqs.visibility[0] <= 2


def test_backoff_of_a_task_targets_the_task_queue(stack: Stack) -> None:
    stack.service.behaviours["C0000000"] = Behaviour(status=503)
    start(stack, 1)
    [rec] = stack.receive(stack.task_queue)
    res = stack.forwarder(two_queues=True).handle({"Records": [rec]})
    assert res == {"batchItemFailures": [{"itemIdentifier": rec["messageId"]}]}
    assert stack.sqs.visibility_queues == [stack.task_queue]


def test_a_deferred_task_is_made_visible_on_its_own_queue(stack: Stack) -> None:
    stack.ledger.create_run("r1", JOB)
    stack.ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=1)
    account, name = stack.task_queue.rstrip("/").split("/")[-2:]
    early = sqs_record(
        envelope_for("r1", "0-000000005", {"company_id": "C0000005"}),
        message_id="early",
        receiptHandle="h",
        eventSourceARN=f"arn:aws:sqs:us-east-1:{account}:{name}",
    )
    res = stack.forwarder(two_queues=True).handle({"Records": [early]})
    assert res == {"batchItemFailures": []}  # re-sent, delayed, to the queue it came from
    assert [m["QueueUrl"] for m in stack.sqs.sent] == [stack.task_queue] and stack.sqs.visibility == []


@pytest.mark.parametrize(
    ("arn", "queue"),
    [
        ("arn:aws:sqs:eu-west-1:123456789012:Microprocess-ReduceQueue", "reduce"),
        ("arn:aws:sqs:eu-west-1:123456789012:Microprocess-TaskQueue", "task"),
        ("arn:aws:sqs:eu-west-1:999999999999:Microprocess-ReduceQueue", "task"),  # another account: unknown
        ("arn:aws:sqs:eu-west-1:123456789012:Microprocess-ReduceQueue-2", "task"),  # a longer name: unknown
        ("", "task"),
        ("not an arn", "task"),
    ],
)
def test_queue_of_a_record_comes_from_its_event_source_arn(stack: Stack, arn: str, queue: str) -> None:
    task = "https://sqs.eu-west-1.amazonaws.com/123456789012/Microprocess-TaskQueue"
    reduce = "https://sqs.eu-west-1.amazonaws.com/123456789012/Microprocess-ReduceQueue"
    fwd = Forwarder(
        jobs=REGISTRY,
        ledger=stack.ledger,
        pusher=HttpPusher(stack.service.url, lambda: "s"),
        sqs=stack.sqs,
        s3=stack.s3,
        task_queue_url=task,
        dead_letter_queue_url=stack.dlq,
        sender=stack.sender,
        reduce_sender=QueueSender(client=stack.sqs, queue_url=reduce),
    )
    assert fwd.queue_url_of({"eventSourceARN": arn}) == (reduce if queue == "reduce" else task)


def test_without_a_reduce_queue_everything_stays_on_the_task_queue(stack: Stack) -> None:
    fwd = stack.forwarder()
    assert fwd.reduce_queue_url == stack.task_queue and fwd.reduce_sender is stack.sender
    stack.splitter().handle({"job": JOB.name, "run_id": "r1", "items": []}, ENOUGH_TIME)
    assert kinds(stack, stack.reduce_queue) == []
    assert kinds(stack, stack.task_queue) == [TaskKind.REDUCE_PART] * JOB.shard_count


def test_dead_letter_sends_a_claimed_reduce_to_the_reduce_queue(stack: Stack) -> None:
    start(stack, 1)
    [rec] = stack.receive(stack.task_queue)
    handler = DeadLetterHandler(
        jobs=REGISTRY, ledger=stack.ledger, s3=stack.s3, bucket="reports", sender=stack.reduce_sender
    )
    dead = sqs_record(rec["body"], receive_count=JOB.max_attempts + 2)
    assert handler.handle({"Records": [dead]}) == {"batchItemFailures": []}
    assert stack.ledger.require_run("r1").status is RunStatus.REDUCING
    assert kinds(stack, stack.task_queue) == []
    assert kinds(stack, stack.reduce_queue) == [TaskKind.REDUCE_PART] * JOB.shard_count


def test_sweeper_reenqueues_a_lost_reduce_on_the_reduce_queue(stack: Stack) -> None:
    start(stack, 0)
    assert len(kinds(stack, stack.reduce_queue)) == JOB.shard_count  # received: pretend they were lost
    later = datetime.now(UTC) + timedelta(seconds=120)
    sweeper = Sweeper(
        jobs=REGISTRY,
        ledger=stack.ledger,
        sender=stack.reduce_sender,
        restart_splitter=lambda _: None,
        stuck_after_s=1,
        reduce_timeout_s=1,
        now=lambda: later,
    )
    assert sweeper.sweep().reduces_requeued == ["r1"]
    assert stack.depth(stack.task_queue) == 0 and stack.depth(stack.reduce_queue) >= JOB.shard_count


def test_chaos_duplicates_go_back_to_the_queue_they_came_from(stack: Stack) -> None:
    start(stack, 0)
    parts = []
    while recs := stack.receive(stack.reduce_queue):
        parts += recs
    faults = FaultInjector(FaultConfig(duplicate_rate=1.0))
    stack.forwarder(two_queues=True, faults=faults).handle({"Records": parts})
    assert kinds(stack, stack.task_queue) == []
    # the copies are on the reduce queue, next to the finalize the last part sent
    assert stack.depth(stack.reduce_queue) >= JOB.shard_count
