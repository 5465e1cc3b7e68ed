"""Pause and resume through the real forwarder and splitter on moto: no push while paused, no
attempt burnt, nothing to the DLQ, nothing lost; other runs go on; a paused split stops."""

from __future__ import annotations

from typing import Any

import pytest

from microprocess.control.pause import PauseError, RunResumer, pause, paused_from
from microprocess.ledger import RunStatus, TaskState
from microprocess.pipeline.attempts import PRIOR_ATTEMPTS_ATTRIBUTE
from microprocess.pipeline.forwarder import Forwarder
from tests.functions_harness import JOB, Behaviour, Stack, job_with


def companies(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"company_id": f"C{i:07d}"} for i in range(offset, offset + n)]


def resumer(st: Stack, restarts: list[dict[str, Any]] | None = None) -> RunResumer:
    return RunResumer(
        ledger=st.ledger,
        sqs=st.sqs,
        job_queue_url=lambda job: st.task_queue,
        reduce_queue_url=st.task_queue,  # the harness's forwarder sends reduces to the task queue too
        restart_splitter=(restarts if restarts is not None else []).append,
        settle_s=0,
    )


def one_round(st: Stack, fwd: Forwarder, records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One event-source delivery: handle a batch, delete what succeeded, make the rest visible."""
    records = st.receive(st.task_queue) if records is None else records
    failed = {f["itemIdentifier"] for f in fwd.handle({"Records": records})["batchItemFailures"]}
    for r in records:
        if r["messageId"] in failed:
            st.sqs.inner.change_message_visibility(
                QueueUrl=st.task_queue, ReceiptHandle=r["receiptHandle"], VisibilityTimeout=0
            )
        else:
            st.sqs.delete_message(QueueUrl=st.task_queue, ReceiptHandle=r["receiptHandle"])
    return records


def test_a_paused_run_is_parked_without_pushes_while_another_run_finishes_then_resumes_to_the_end(
    stack: Stack,
) -> None:
    # GIVEN two split runs of the same job on the same queue
    stack.split({"job": JOB.name, "run_id": "paused", "items": companies(30)})
    stack.split({"job": JOB.name, "run_id": "other", "items": companies(20, offset=100)})
    # WHEN one is paused and the forwarder drains the queue
    assert pause(stack.ledger, "paused") is RunStatus.RUNNING
    assert stack.ledger.progress("paused").status is RunStatus.PAUSED
    fwd = stack.forwarder()
    stack.drive(fwd.handle, stack.task_queue)
    # THEN the other run finished; the paused one had no push, its 30 messages are parked (each
    # received once), nothing went to the DLQ and nothing is left to be received again
    assert stack.ledger.require_run("other").status is RunStatus.SUCCEEDED
    assert not [c for c in stack.service.task_calls() if c["payload"]["run_id"] == "paused"]
    assert resumer(stack).parked_count("paused", JOB.shard_count) == 30
    assert stack.depth(stack.task_queue) == 0 and stack.depth(stack.dlq) == 0
    # WHEN it is resumed
    result = resumer(stack).resume("paused", JOB)
    # THEN it runs again from where it was, and every task is pushed once and counted
    assert (result.status, result.requeued) == (RunStatus.RUNNING, 30)
    assert resumer(stack).parked_count("paused", JOB.shard_count) == 0
    stack.drive(fwd.handle, stack.task_queue)
    run = stack.ledger.progress("paused")
    assert (run.status, run.succeeded, run.failed) == (RunStatus.SUCCEEDED, 30, 0)
    calls = [c for c in stack.service.task_calls() if c["payload"]["run_id"] == "paused"]
    assert len(calls) == 30 and {c["payload"]["attempt"] for c in calls} == {1}


def test_a_pause_burns_no_attempt_the_resumed_message_carries_the_attempts_made_before(stack: Stack) -> None:
    # GIVEN a task that the service keeps answering 503 (the job allows 3 attempts)
    stack.service.behaviours["C0000000"] = Behaviour(status=503)
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(1)})
    fwd = stack.forwarder()
    one_round(stack, fwd)  # attempt 1: retried
    # WHEN the run is paused and its message comes back
    pause(stack.ledger, "r1")
    parked = one_round(stack, fwd)
    assert parked and stack.depth(stack.task_queue) == 0  # parked at once: not received again
    resumer(stack).resume("r1", JOB)
    # THEN the re-sent message carries the one attempt made before the pause
    (record,) = stack.receive(stack.task_queue)
    assert record["messageAttributes"][PRIOR_ATTEMPTS_ATTRIBUTE]["stringValue"] == "1"
    # AND the task gets exactly its 3 declared attempts in all, then FAILED with 3 attempts
    one_round(stack, fwd, [record])
    stack.drive(fwd.handle, stack.task_queue)
    attempts = [c["payload"]["attempt"] for c in stack.service.task_calls()]
    assert attempts == [1, 2, 3]
    (task,) = [t for k in range(JOB.shard_count) for t in stack.ledger.iter_results("r1", k)]
    assert (task.state, task.attempts) == (TaskState.FAILED, 3)
    assert stack.depth(stack.dlq) == 0


def test_a_run_paused_while_splitting_stops_its_splitter_and_resume_restarts_it(stack: Stack) -> None:
    # GIVEN a split in pages of 10 that hands over to a continuation after its first page
    job, registry = job_with(source={"kind": "dynamodb", "table": "companies", "segments": 1, "page_size": 10})
    clock = iter([900_000] + [0] * 100)
    event = {"job": job.name, "run_id": "r1", "items": companies(50)}
    first = stack.splitter(jobs=registry).handle(event, lambda: next(clock))
    assert first["continued"] and stack.ledger.require_run("r1").expected == 10
    # WHEN the run is paused and the continuation runs
    assert pause(stack.ledger, "r1") is RunStatus.SPLITTING
    (continuation,) = stack.continuations
    stack.continuations.clear()
    stack.splitter(jobs=registry).handle(continuation, lambda: 900_000)
    # THEN the split did not go on
    assert stack.ledger.require_run("r1").expected == 10
    assert stack.ledger.require_run("r1").status is RunStatus.PAUSED
    # WHEN resumed THEN the splitter is restarted, and the run finishes with all 50 tasks
    restarts: list[dict[str, Any]] = []
    result = resumer(stack, restarts).resume("r1", job)
    assert result.status is RunStatus.SPLITTING and result.splitter_restarted
    stack.split({**event, **restarts[0]}, jobs=registry)
    stack.drive(stack.forwarder(jobs=registry).handle, stack.task_queue)
    run = stack.ledger.progress("r1")
    assert (run.status, run.expected, run.succeeded) == (RunStatus.SUCCEEDED, 50, 50)


def test_resume_runs_the_completion_check_of_a_run_whose_last_tasks_finished_while_paused(stack: Stack) -> None:
    # GIVEN a run whose every task is recorded while it is paused (pushes in flight at the pause)
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(5)})
    records = stack.receive(stack.task_queue)
    fwd = stack.forwarder()
    admitted = [fwd._admit(r) for r in records]  # read RUNNING before the pause
    pause(stack.ledger, "r1")
    for w, r in zip(admitted, records, strict=True):
        assert w is not None
        w.result = fwd._push(w)
        stack.sqs.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=r["receiptHandle"])
    fwd._settle_tasks([w for w in admitted if w is not None])
    assert stack.ledger.require_run("r1").status is RunStatus.PAUSED  # the claim was refused
    # WHEN resumed THEN the reduce is claimed and the run ends
    result = resumer(stack).resume("r1", JOB)
    assert result.reduce_claimed
    stack.drive(fwd.handle, stack.task_queue)
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED


def test_pause_and_resume_refuse_what_does_not_apply(stack: Stack) -> None:
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(2)})
    pause(stack.ledger, "r1")
    assert paused_from(stack.ledger, "r1") is RunStatus.RUNNING
    with pytest.raises(PauseError, match="already paused; continue it with `microprocess resume r1`"):
        pause(stack.ledger, "r1")
    resumer(stack).resume("r1", JOB)
    assert paused_from(stack.ledger, "r1") is None
    stack.drive(stack.forwarder().handle, stack.task_queue)
    with pytest.raises(PauseError, match=r"has ended \(SUCCEEDED\)"):
        pause(stack.ledger, "r1")
    with pytest.raises(PauseError, match="not paused; nothing to resume"):
        resumer(stack).resume("r1", JOB)


def test_a_paused_run_can_be_cancelled_and_its_parked_messages_are_dropped(stack: Stack) -> None:
    from microprocess.control.pause import cancel_paused

    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(12)})
    pause(stack.ledger, "r1")
    stack.drive(stack.forwarder().handle, stack.task_queue)
    assert resumer(stack).parked_count("r1", JOB.shard_count) == 12
    assert cancel_paused(stack.ledger, "r1") is True
    assert stack.ledger.require_run("r1").status is RunStatus.CANCELLED
    assert resumer(stack).parked_count("r1", JOB.shard_count) == 0
    assert cancel_paused(stack.ledger, "r1") is False
    assert not stack.service.task_calls()


def test_a_resume_that_crashed_after_re_sending_is_run_again_without_double_counting(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import microprocess.control.pause as pause_module

    # GIVEN a paused run with 15 parked messages, and a resume that dies after re-sending the first
    # shard's messages, before deleting their parked records
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(15)})
    pause(stack.ledger, "r1")
    fwd = stack.forwarder()
    stack.drive(fwd.handle, stack.task_queue)
    real_batch_write = pause_module.batch_write

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed before the parked records were deleted")

    monkeypatch.setattr(pause_module, "batch_write", crash)
    with pytest.raises(RuntimeError):
        resumer(stack).resume("r1", JOB)
    assert 0 < stack.depth(stack.task_queue) < 15
    assert resumer(stack).parked_count("r1", JOB.shard_count) == 15
    # WHEN it is run again
    monkeypatch.setattr(pause_module, "batch_write", real_batch_write)
    again = resumer(stack).resume("r1", JOB)
    # THEN every parked message is re-sent (some a second time), and every task is counted once
    assert again.requeued == 15
    stack.drive(fwd.handle, stack.task_queue)
    run = stack.ledger.progress("r1")
    assert (run.status, run.succeeded, run.failed) == (RunStatus.SUCCEEDED, 15, 0)
    assert stack.metric("DuplicatesAbsorbed") > 0


def test_a_paused_run_checks_a_message_before_parking_it_and_the_malformed_are_quarantined(stack: Stack) -> None:
    import json

    from microprocess.pipeline.deadletter import DeadLetterHandler
    from microprocess.pipeline.envelope import TaskEnvelope, TaskKind, reduce_part_id
    from tests.functions_harness import REGISTRY, sqs_record

    # GIVEN a paused run of 2 tasks
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(2)})
    pause(stack.ledger, "r1")
    good = stack.receive(stack.task_queue)
    # AND messages naming the run that are not its own: a real task id on a shard the run does not
    # have, a task id beyond the run, and a reduce part of a shard the run does not have
    foreign = [
        TaskEnvelope(job=JOB.name, run_id="r1", task_id="0-000000000", shard=JOB.shard_count + 3, item={}),
        TaskEnvelope(job=JOB.name, run_id="r1", task_id="0-000000099", shard=0, item={}),
        TaskEnvelope(
            kind=TaskKind.REDUCE_PART,
            job=JOB.name,
            run_id="r1",
            task_id=reduce_part_id(JOB.shard_count + 3),
            shard=JOB.shard_count + 3,
        ),
    ]
    bad = [sqs_record(env.to_json(), message_id=f"bad-{i}") for i, env in enumerate(foreign)]
    # WHEN the forwarder takes them during the pause
    result = stack.forwarder().handle({"Records": [*good, *bad]})
    assert result == {"batchItemFailures": []}
    stack.settle(stack.task_queue, good, result)  # the run's own acknowledged once parked
    # THEN only the run's own messages are parked; the others go to the DLQ with the reason, as
    # outside a pause
    assert resumer(stack).parked_count("r1", JOB.shard_count) == 2
    dead = stack.receive(stack.dlq)
    reasons = sorted(m["messageAttributes"]["microprocess-reason"]["stringValue"] for m in dead)
    assert len(reasons) == 3 and all("malformed message" in r for r in reasons), reasons
    assert sum(f"run 'r1' has shards 0..{JOB.shard_count - 1}" in r for r in reasons) == 2, reasons
    assert sum("is not part of run 'r1'" in r for r in reasons) == 1, reasons
    # AND the dead-letter function quarantines them without touching the run (no task FAILED, the
    # run not failed by a reduce part that is not its own)
    handler = DeadLetterHandler(jobs=REGISTRY, ledger=stack.ledger, s3=stack.s3, bucket="reports", sender=stack.sender)
    assert handler.handle({"Records": dead}) == {"batchItemFailures": []}
    keys = [o["Key"] for o in stack.s3.list_objects_v2(Bucket="reports", Prefix="quarantine/")["Contents"]]
    assert len(keys) == 3
    docs = [json.loads(stack.s3.get_object(Bucket="reports", Key=k)["Body"].read()) for k in keys]
    assert all("malformed message" in d["reason"] for d in docs)
    prog = stack.ledger.progress("r1")
    assert (prog.status, prog.succeeded, prog.failed) == (RunStatus.PAUSED, 0, 0)
    # AND resumed, the run ends with its 2 tasks
    resumer(stack).resume("r1", JOB)
    stack.drive(stack.forwarder().handle, stack.task_queue)
    prog = stack.ledger.progress("r1")
    assert (prog.status, prog.succeeded, prog.failed) == (RunStatus.SUCCEEDED, 2, 0)


def test_outside_a_pause_a_reduce_part_of_a_shard_the_run_does_not_have_is_dead_lettered(stack: Stack) -> None:
    from microprocess.pipeline.envelope import TaskEnvelope, TaskKind, reduce_part_id
    from tests.functions_harness import sqs_record

    # GIVEN a run whose reduce is claimed (an empty run), and a reduce part of shard 7 of its 4
    stack.split({"job": JOB.name, "run_id": "r1", "items": []})
    assert stack.ledger.require_run("r1").status is RunStatus.REDUCING
    shard = JOB.shard_count + 3
    env = TaskEnvelope(kind=TaskKind.REDUCE_PART, job=JOB.name, run_id="r1", task_id=reduce_part_id(shard), shard=shard)
    # WHEN the forwarder takes it THEN it is dead-lettered with the reason, never pushed
    assert stack.forwarder().handle({"Records": [sqs_record(env.to_json())]}) == {"batchItemFailures": []}
    [dead] = stack.receive(stack.dlq)
    assert f"has shards 0..{JOB.shard_count - 1}" in dead["messageAttributes"]["microprocess-reason"]["stringValue"]
    assert not [c for c in stack.service.calls if c["payload"].get("shard") == shard]


def test_a_warm_forwarder_that_read_paused_does_not_push_a_run_cancelled_since(stack: Stack) -> None:
    from microprocess.control.pause import cancel_paused

    # GIVEN a paused run whose forwarder has just read it paused (and parked one message)
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(6)})
    pause(stack.ledger, "r1")
    fwd = stack.forwarder(run_cache_ttl_s=3600)  # the cache keeps "paused" for the whole test
    records = stack.receive(stack.task_queue)
    one_round(stack, fwd, records[:1])
    # WHEN the paused run is cancelled and the rest of its messages arrive
    assert cancel_paused(stack.ledger, "r1") is True
    one_round(stack, fwd, records[1:])
    # THEN the pause gate's fresh read sees the cancel before anything is pushed or parked
    assert not stack.service.task_calls()
    assert resumer(stack).parked_count("r1", JOB.shard_count) == 0
    assert stack.depth(stack.dlq) == 0
