"""The built-in reduce through the real forwarder on moto: for a platform-reduce job the
reducer function runs reduce parts and the finalize in-process (no HTTP), then pushes the
job's completion callback to the service like a task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from microprocess.declarations import JobDeclaration, JobRegistry
from microprocess.ledger import RunStatus
from microprocess.pipeline.deadletter import DeadLetterHandler
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind
from microprocess.pipeline.forwarder import Forwarder
from microprocess.reduce import PlatformReducer, ReportLayout
from tests.functions_harness import Behaviour, Stack, job_with, sqs_record

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms
SENDER = "reports@example.com"
RECIPIENT = "team@example.com"


@pytest.fixture
def platform(stack: Stack) -> Iterator[tuple[JobDeclaration, JobRegistry]]:
    boto3.client("ses", region_name="us-east-1").verify_email_identity(EmailAddress=SENDER)
    yield job_with(
        reduce="platform",
        reduce_part_path=None,
        reduce_finalize_path=None,
        completion_path="/runs/done",
        histogram_field="score",
        tolerated_failure_pct=50.0,
        recipients=(RECIPIENT,),
    )


def reducer_forwarder(
    st: Stack, jobs: JobRegistry, *, with_reducer: bool = True, reducer_cls: type[PlatformReducer] = PlatformReducer
) -> Forwarder:
    reducer = (
        reducer_cls(
            ledger=st.ledger,
            s3=st.s3,
            ses=boto3.client("ses", region_name="us-east-1"),
            bucket=st.bucket,
            completion_sender=st.reduce_sender,
            email_sender=SENDER,
        )
        if with_reducer
        else None
    )
    return st.forwarder(jobs=jobs, two_queues=True, reducer=reducer)


def run_tasks(st: Stack, job: JobDeclaration, jobs: JobRegistry, n: int, run_id: str = "r1") -> None:
    items = [{"company_id": f"C{i:07d}"} for i in range(n)]
    st.splitter(jobs=jobs, two_queues=True).handle({"job": job.name, "run_id": run_id, "items": items}, ENOUGH_TIME)
    st.drive(st.forwarder(jobs=jobs, two_queues=True).handle, st.task_queue)
    assert st.ledger.require_run(run_id).status is RunStatus.REDUCING


def not_attempted_lines(st: Stack, layout: ReportLayout) -> list[str]:
    """The lines of a run's not_attempted.csv (`task_id,<item id field>`)."""
    return st.s3.get_object(Bucket=st.bucket, Key=layout.not_attempted_csv)["Body"].read().decode().split()


def mail() -> list[Any]:
    return list(ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages)


def completion_calls(st: Stack) -> list[dict[str, Any]]:
    return [c for c in st.service.calls if c["path"] == "/runs/done"]


def test_a_platform_run_is_reduced_in_process_and_the_service_gets_one_completion(
    stack: Stack, platform: tuple[JobDeclaration, JobRegistry]
) -> None:
    # GIVEN a platform-reduce run of 12 tasks, 2 of them refused by the service (422)
    job, jobs = platform
    stack.service.behaviours = {"C0000003": Behaviour(status=422), "C0000007": Behaviour(status=422)}
    run_tasks(stack, job, jobs, 12)
    # WHEN the reducer function drains the reduce queue
    stack.drive(reducer_forwarder(stack, jobs).handle, stack.reduce_queue)
    # THEN no reduce went over HTTP, the run SUCCEEDED (2/12 within 50 %) with its report
    assert [c for c in stack.service.calls if c["payload"].get("kind") in ("reduce-part", "finalize")] == []
    run = stack.ledger.require_run("r1")
    layout = ReportLayout(stack.bucket, job.name, "r1")
    assert run.status is RunStatus.SUCCEEDED and run.report_uri == layout.uri
    report = stack.s3.get_object(Bucket=stack.bucket, Key=layout.report_csv)["Body"].read().decode().splitlines()
    # (the result echoes company_id: as a result field named like a task column it is result.company_id)
    assert report[0] == "task_id,company_id,state,attempts,error,result.company_id,score" and len(report) == 13
    assert sum(",FAILED," in line for line in report) == 2
    # AND one email, and one signed completion callback with the run's outcome, keyed <run>:completion
    assert len(mail()) == 1
    [call] = completion_calls(stack)
    assert call["key"] == "r1:completion" and stack.service.bad_signatures == 0
    assert call["payload"] == {
        "run_id": "r1",
        "task_id": "completion",
        "kind": "completion",
        "job": job.name,
        "status": "SUCCEEDED",
        "expected": 12,
        "succeeded": 10,
        "failed": 2,
        "report_uri": layout.uri,
    }
    assert stack.metric("RunsSucceeded") == 1 and stack.metric("CompletionsDelivered") == 1


def test_a_failing_completion_is_retried_then_given_up_and_never_changes_the_run(
    stack: Stack, platform: tuple[JobDeclaration, JobRegistry]
) -> None:
    # GIVEN a service whose completion endpoint answers 503
    job, jobs = platform
    stack.service.completion_status = 503
    run_tasks(stack, job, jobs, 4)
    # WHEN the reduce queue is drained
    stack.drive(reducer_forwarder(stack, jobs).handle, stack.reduce_queue)
    # THEN the callback was tried max_attempts times, then given up; the run stays SUCCEEDED
    assert len(completion_calls(stack)) == job.max_attempts
    assert stack.metric("CompletionsFailed") == 1
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED


def test_a_dead_lettered_completion_never_changes_the_run(
    stack: Stack, platform: tuple[JobDeclaration, JobRegistry]
) -> None:
    job, jobs = platform
    run_tasks(stack, job, jobs, 3)
    stack.drive(reducer_forwarder(stack, jobs).handle, stack.reduce_queue)
    body = TaskEnvelope(
        kind=TaskKind.COMPLETION, job=job.name, run_id="r1", task_id="completion", shard=0, item={"run_id": "r1"}
    ).to_json()
    handler = DeadLetterHandler(jobs=jobs, ledger=stack.ledger, s3=stack.s3, bucket=stack.bucket, sender=stack.sender)
    assert handler.handle({"Records": [sqs_record(body, receive_count=5)]}) == {"batchItemFailures": []}
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED


def test_a_finalize_delivered_three_times_mails_and_calls_back_once(
    stack: Stack, platform: tuple[JobDeclaration, JobRegistry]
) -> None:
    # GIVEN a run whose reduce parts are done and whose finalize waits on the reduce queue
    job, jobs = platform
    run_tasks(stack, job, jobs, 6)
    fwd = reducer_forwarder(stack, jobs)
    parts = []
    while records := stack.receive(stack.reduce_queue):
        parts += records
    assert fwd.handle({"Records": parts}) == {"batchItemFailures": []}
    [finalize] = stack.receive(stack.reduce_queue)
    assert TaskEnvelope.parse(finalize["body"]).kind is TaskKind.FINALIZE
    # WHEN the finalize arrives three times. (Delivered one after another here: moto's DynamoDB
    # and S3 are not atomic under threads, so two conditional writes at once can both pass, which
    # DynamoDB never allows; concurrent duplicates run on the real local stack in `make chaos`.)
    for message_id in ("first", "twin", "late"):
        assert fwd.handle({"Records": [{**finalize, "messageId": message_id}]}) == {"batchItemFailures": []}
    # THEN one email and one completion envelope
    queued = []
    while records := stack.receive(stack.reduce_queue):
        queued += [TaskEnvelope.parse(r["body"]) for r in records]
    assert [e.kind for e in queued] == [TaskKind.COMPLETION] and len(mail()) == 1
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED and stack.metric("RunsSucceeded") == 1


def test_without_a_reducer_a_platform_finalize_fails_the_run_after_its_attempts(
    stack: Stack, platform: tuple[JobDeclaration, JobRegistry]
) -> None:
    # GIVEN a reducer function wired without the built-in reduce (a deployment mistake)
    job, jobs = platform
    run_tasks(stack, job, jobs, 2)
    # WHEN it drains the reduce queue
    stack.drive(reducer_forwarder(stack, jobs, with_reducer=False).handle, stack.reduce_queue)
    # THEN the run ends FAILED, naming the cause, instead of waiting forever
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.FAILED and "has no reducer" in (run.error or "")


def test_a_completion_envelope_carries_its_body_and_is_keyed_run_colon_completion() -> None:
    from microprocess.pipeline.envelope import MalformedEnvelope
    from microprocess.pipeline.fanin import completion_envelope
    from tests.functions_harness import JOB

    env = TaskEnvelope.parse(completion_envelope(JOB, "r9", {"run_id": "r9", "status": "FAILED"}))
    assert env.kind is TaskKind.COMPLETION and env.idempotency_key == "r9:completion"
    assert env.item == {"run_id": "r9", "status": "FAILED"}
    bodiless = '{"kind": "completion", "job": "j", "run_id": "r9", "task_id": "completion", "shard": 0}'
    with pytest.raises(MalformedEnvelope, match="completion message carries its callback body as 'item'"):
        TaskEnvelope.parse(bodiless)


def test_a_run_stopped_early_is_reported_with_its_not_attempted_tasks_and_mailed_once(stack: Stack) -> None:
    # GIVEN a platform-reduce job tolerating 5% whose service rejects every item, stop_early on
    boto3.client("ses", region_name="us-east-1").verify_email_identity(EmailAddress=SENDER)
    job, jobs = job_with(
        reduce="platform",
        reduce_part_path=None,
        reduce_finalize_path=None,
        tolerated_failure_pct=5.0,
        stop_early=True,
        recipients=(RECIPIENT,),
    )
    for i in range(40):
        stack.service.behaviours[f"C{i:07d}"] = Behaviour(status=400)
    items = [{"company_id": f"C{i:07d}"} for i in range(40)]
    stack.splitter(jobs=jobs, two_queues=True).handle({"job": job.name, "run_id": "r1", "items": items}, ENOUGH_TIME)
    # WHEN the task forwarder meets the first failures, and the reducer then drains the reduce queue
    stack.drive(stack.forwarder(jobs=jobs, two_queues=True).handle, stack.task_queue)
    assert stack.ledger.require_run("r1").status is RunStatus.REDUCING
    stack.drive(reducer_forwarder(stack, jobs).handle, stack.reduce_queue)
    # THEN the run ended FAILED with a report: a row per attempted task, and the rest listed as not attempted
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.FAILED and run.report_uri
    pushed = {c["payload"]["task_id"] for c in stack.service.task_calls()}
    layout = ReportLayout(stack.bucket, job.name, "r1")
    listed = [line.split(",")[0] for line in not_attempted_lines(stack, layout)]
    assert listed[0] == "task_id" and set(listed[1:]) == {f"0-{i:09d}" for i in range(40)} - pushed
    assert len(listed) - 1 == 40 - len(pushed) > 0
    report = stack.s3.get_object(Bucket=stack.bucket, Key=layout.report_csv)["Body"].read().decode().splitlines()
    assert len(report) - 1 == len(pushed)
    # AND one email
    assert len(mail()) == 1


def test_a_run_whose_source_cannot_be_read_ends_failed_and_sends_its_notices_once(
    stack: Stack, platform: tuple[JobDeclaration, JobRegistry]
) -> None:
    # GIVEN a platform-reduce job with recipients and a completion callback, started on a manifest
    # that does not exist
    job, jobs = platform
    uri = f"s3://{stack.bucket}/inputs/missing.jsonl"
    event = {"job": job.name, "run_id": "r1", "items_uri": uri}
    # WHEN the splitter meets the missing source, and is delivered the start event again
    res = stack.splitter(jobs=jobs, two_queues=True).handle(event, ENOUGH_TIME)
    stack.splitter(jobs=jobs, two_queues=True).handle(event, ENOUGH_TIME)
    # AND the reducer function drains the reduce queue (twice: a finalize delivered again changes nothing)
    stack.drive(reducer_forwarder(stack, jobs).handle, stack.reduce_queue)
    stack.drive(reducer_forwarder(stack, jobs).handle, stack.reduce_queue)
    # THEN the run ended FAILED with the reason and the fix, and a report of its 0 tasks
    run = stack.ledger.require_run("r1")
    assert res["status"] in ("FAILED", "REDUCING")
    assert run.status is RunStatus.FAILED and run.report_uri
    assert uri in (run.error or "") and "does not exist" in (run.error or "") and "Fix:" in (run.error or "")
    layout = ReportLayout(stack.bucket, job.name, "r1")
    report = stack.s3.get_object(Bucket=stack.bucket, Key=layout.report_csv)["Body"].read().decode().splitlines()
    assert len(report) <= 1  # a header at most: the run has no task
    # AND one email saying FAILED with the reason, and one completion callback saying FAILED
    [message] = mail()
    assert "FAILED" in message.subject and "does not exist" in message.body
    [call] = completion_calls(stack)
    assert call["payload"]["status"] == "FAILED" and call["payload"]["expected"] == 0
    assert stack.metric("RunsFailed") == 1


def test_a_stopped_run_reports_every_task_once_late_completions_included(stack: Stack) -> None:
    # GIVEN a platform-reduce job tolerating 5% whose service rejects every item, stop_early on:
    # the first batch with failures stops the run of 40 tasks
    boto3.client("ses", region_name="us-east-1").verify_email_identity(EmailAddress=SENDER)
    job, jobs = job_with(
        reduce="platform", reduce_part_path=None, reduce_finalize_path=None, tolerated_failure_pct=5.0, stop_early=True
    )
    for i in range(40):
        stack.service.behaviours[f"C{i:07d}"] = Behaviour(status=400)
    items = [{"company_id": f"C{i:07d}"} for i in range(40)]
    stack.splitter(jobs=jobs, two_queues=True).handle({"job": job.name, "run_id": "r1", "items": items}, ENOUGH_TIME)
    stack.drive(stack.forwarder(jobs=jobs, two_queues=True).handle, stack.task_queue)
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.REDUCING and (run.error or "").startswith("stopped early")
    pushed = {c["payload"]["task_id"] for c in stack.service.task_calls()}
    late = sorted({f"0-{i:09d}" for i in range(40)} - pushed)[:3]
    # WHEN batches still in flight at the stop record 3 more tasks after the reduce parts were
    # built, just before the finalize (2 succeeded, 1 failed)
    from microprocess.ledger import TaskOutcome, TaskState
    from microprocess.pipeline.envelope import shard_of

    class LateCompletions(PlatformReducer):
        def finalize(self, job: JobDeclaration, run_id: str) -> dict[str, Any]:
            outcomes = [
                TaskOutcome(
                    t,
                    shard_of(t, run.shard_count),
                    TaskState.FAILED if n == 2 else TaskState.SUCCEEDED,
                    1,
                    None,
                    result=None if n == 2 else {"score": 1},
                    error="HTTP 400" if n == 2 else None,
                )
                for n, t in enumerate(late)
            ]
            stack.ledger.record_outcomes(run_id, run.counter_count, outcomes)
            return super().finalize(job, run_id)

    stack.drive(reducer_forwarder(stack, jobs, reducer_cls=LateCompletions).handle, stack.reduce_queue)
    # THEN the report has one row per recorded task, the late ones included, and every other
    # task is listed not attempted: rows + not-attempted rows = expected, no task in both
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.FAILED
    layout = ReportLayout(stack.bucket, job.name, "r1")
    rows = stack.s3.get_object(Bucket=stack.bucket, Key=layout.report_csv)["Body"].read().decode().splitlines()[1:]
    reported = {line.split(",", 1)[0] for line in rows}
    listed = [line.split(",")[0] for line in not_attempted_lines(stack, layout)]
    assert listed[0] == "task_id"
    not_attempted = set(listed[1:])
    assert reported == pushed | set(late) and len(rows) == len(reported)
    assert not reported & not_attempted and len(rows) + len(listed) - 1 == 40 == run.expected
    assert run.summary["rows"] == len(rows) and run.summary["not_attempted"] == 40 - len(rows)
