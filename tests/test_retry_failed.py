"""`retry-failed`: a new run over exactly the failed tasks of an ended run, through the real
splitter and forwarder (moto + the HTTP stand-in), and through the CLI that starts it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.cli import deployment as cli_deployment
from microprocess.ledger import RunStatus
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind
from microprocess.pipeline.forwarder import Forwarder
from tests.functions_harness import JOB, Behaviour, Stack, job_with, seed_companies

#: A claim-check threshold of 1 KB: the 5 KB item below travels by S3 reference.
CLAIM_CHECK_BYTES = 1000
BIG = {"company_id": "C0000004", "blob": "x" * 5000}
ITEMS: list[dict[str, Any]] = [
    {"company_id": "C0000000"},
    {"company_id": "C0000001"},
    {"company_id": "C0000002"},
    {"company_id": "C0000003"},
    BIG,
    {"company_id": "C0000005"},
    {"company_id": "C0000006"},
]
#: The service refuses these for good (HTTP 400) in the first run: two inline items and the big one.
REFUSED = ("C0000001", "C0000004", "C0000006")


def drain_recording(st: Stack, forwarder: Forwarder) -> list[TaskEnvelope]:
    """Drive the task queue through `forwarder` like the event source; the task envelopes it delivered."""
    seen: list[TaskEnvelope] = []

    def handle(event: dict[str, Any]) -> dict[str, Any]:
        seen.extend(TaskEnvelope.parse(r["body"]) for r in event["Records"])
        return forwarder.handle(event)

    st.drive(handle, st.task_queue)
    return [e for e in seen if e.kind is TaskKind.TASK]


def task_items(st: Stack, run_id: str) -> list[Any]:
    return [c["payload"]["item"] for c in st.service.task_calls() if c["payload"]["run_id"] == run_id]


def test_retry_failed_reruns_every_failed_task_inline_and_by_reference(stack: Stack) -> None:
    # GIVEN a run of 7 items (one sent by S3 reference) of which the service refused 3
    job, registry = job_with(tolerated_failure_pct=50.0)
    settings = stack.settings.model_copy(update={"claim_check_bytes": CLAIM_CHECK_BYTES})
    for company in REFUSED:
        stack.service.behaviours[company] = Behaviour(status=400)
    stack.split({"job": job.name, "run_id": "r1", "items": ITEMS}, jobs=registry, settings=settings)
    drain_recording(stack, stack.forwarder(jobs=registry))
    first = stack.ledger.progress("r1")
    assert (first.status, first.succeeded, first.failed) == (RunStatus.SUCCEEDED, 4, 3)
    # WHEN the service is fixed and the failures are retried (the start event `retry-failed` sends)
    stack.service.behaviours.clear()
    started = stack.split(
        {"job": job.name, "run_id": "r2", "retry_of": "r1", "source": "manual"}, jobs=registry, settings=settings
    )
    delivered = drain_recording(stack, stack.forwarder(jobs=registry))
    # THEN the new run has one task per failed task, no more, no fewer
    assert started["expected"] == 3
    assert sorted(e.item["company_id"] for e in delivered if e.item is not None) == ["C0000001", "C0000006"]
    # AND the big item kept its S3 reference (it is not re-uploaded or inlined) ...
    [by_reference] = [e for e in delivered if e.item is None]
    assert by_reference.item_ref == "s3://reports/claims/credit-scores/r1/0-000000004.json"
    # ... and the service got every failed item whole, the big one fetched from S3
    pushed = task_items(stack, "r2")
    assert sorted(i["company_id"] for i in pushed) == sorted(REFUSED)
    assert BIG in pushed
    # AND the new run succeeded and names the run it retried; the first run is untouched
    second = stack.ledger.progress("r2")
    assert (second.status, second.expected, second.succeeded, second.failed) == (RunStatus.SUCCEEDED, 3, 3, 0)
    assert stack.ledger.require_run("r2").source_run == "r1"
    assert stack.ledger.progress("r1").failed == 3


class SplitterLambda:
    """Stands in for the Lambda service: an asynchronous invoke of the splitter runs the real
    splitter at once, then the event source drains the task queue through the real forwarder."""

    def __init__(self, st: Stack) -> None:
        self.st = st
        self.events: list[dict[str, Any]] = []

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        assert (FunctionName, InvocationType) == ("splitter-fn", "Event")
        event = json.loads(Payload)
        self.events.append(event)
        self.st.split(event)
        self.st.drive(self.st.forwarder().handle, self.st.task_queue)
        return {"StatusCode": 202}


def stack_deployment(stack: Stack, lam: Any, job: str = "credit-scores") -> cli.Deployment:
    """The CLI's deployment over the harness's moto clients, `lam` standing in for Lambda."""
    clients = {"dynamodb": stack.ddb, "sqs": stack.sqs.inner, "s3": stack.s3, "lambda": lam}
    return cli.Deployment(
        name="test",
        outputs={
            "LedgerTable": "ledger",
            "SplitterFunctionName": "splitter-fn",
            "JobQueueUrls": json.dumps({job: stack.task_queue}),
            "DeadLetterQueueUrl": stack.dlq,
            "ReduceQueueUrl": stack.reduce_queue,
            "ReportsBucket": stack.bucket,
        },
        client=lambda service: clients[service],
    )


@pytest.fixture
def deployment(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> SplitterLambda:
    lam = SplitterLambda(stack)
    dep = stack_deployment(stack, lam)
    monkeypatch.setattr(cli_deployment, "connect", lambda target: dep)  # commands connect through it
    return lam


def test_cli_retry_failed_starts_a_run_that_finishes_exactly_the_failed_tasks(
    stack: Stack, deployment: SplitterLambda
) -> None:
    # GIVEN a scheduled-style run of 12 companies that FAILED: the service refused 3 (25% > 1% tolerated)
    seed_companies(stack.ddb, stack.companies, 12)
    refused = ["C0000002", "C0000005", "C0000009"]
    for company in refused:
        stack.service.behaviours[company] = Behaviour(status=400)
    stack.split({"job": JOB.name, "run_id": "r1"})
    stack.drive(stack.forwarder().handle, stack.task_queue)
    assert stack.ledger.progress("r1").status is RunStatus.FAILED
    # WHEN the service is fixed and `microprocess retry-failed r1 --wait --json` runs
    stack.service.behaviours.clear()
    result = CliRunner().invoke(cli.app, ["retry-failed", "r1", "--wait", "--json"], catch_exceptions=False)
    # THEN it started one run over the 3 failures, which the real splitter split into 3 tasks
    assert result.exit_code == 0, result.output
    started, final = (json.loads(line) for line in result.stdout.strip().splitlines())
    assert (started["retry_of"], started["failed"]) == ("r1", 3)
    [event] = deployment.events
    assert event["run_id"] == started["run_id"] == final["run_id"]
    # AND that run pushed exactly the refused companies and SUCCEEDED
    assert sorted(i["company_id"] for i in task_items(stack, started["run_id"])) == refused
    assert (final["status"], final["expected"], final["succeeded"], final["failed"]) == ("SUCCEEDED", 3, 3, 0)
    assert stack.ledger.require_run(started["run_id"]).source_run == "r1"
