"""The thin Lambda entry points, wired from their environment like in AWS (moto + HTTP stand-in)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from microprocess.ledger import RunStatus
from microprocess.local.signals import emf_metrics
from microprocess.pipeline import runtime
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind
from microprocess.pipeline.settings import SettingsError, get_settings
from tests.functions_harness import SECRET, Stack, load_event, seed_companies


@dataclass
class FakeContext:
    function_name: str = "splitter-fn"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:splitter-fn"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 600_000


def _reset_runtime() -> None:
    runtime.reset()


@pytest.fixture
def env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    for key, value in {
        "LEDGER_TABLE": "ledger",
        "TASK_QUEUE_URL": stack.task_queue,
        "JOB_QUEUES": json.dumps({"credit-scores": stack.task_queue}),
        "DEAD_LETTER_QUEUE_URL": stack.dlq,
        "SOURCE_TABLES": json.dumps({"companies": stack.companies}),
        "REPORTS_BUCKET": stack.bucket,
        "QUEUE_SERVICE_URL": stack.service.url,
        "SIGNING_SECRET": SECRET,
        "SPLITTER_FUNCTION_NAME": "splitter-fn",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "Microprocess",
        "POWERTOOLS_SERVICE_NAME": "microprocess",
    }.items():
        monkeypatch.setenv(key, value)
    _reset_runtime()
    yield stack
    _reset_runtime()


class InlineLambda:
    """Stands in for the Lambda client: an asynchronous self-invoke runs the handler at once."""

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        import json

        assert InvocationType == "Event"
        handler("splitter")(json.loads(Payload), FakeContext(FunctionName))
        return {"StatusCode": 202}


@pytest.fixture(autouse=True)
def _inline_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    real = runtime.client

    def client(service: str) -> Any:
        return InlineLambda() if service == "lambda" else real(service)

    monkeypatch.setattr(runtime, "client", client)


def handler(name: str) -> Any:
    return importlib.import_module(f"functions.{name}.handler").lambda_handler


def test_handlers_run_a_job_end_to_end(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN 25 companies and the scheduled event the rule sends
    seed_companies(env.ddb, env.companies, 25)
    # WHEN the splitter handler runs and the forwarder handler drains the queue
    res = handler("splitter")(load_event("scheduled_event.json"), FakeContext())
    # the scan's segments were split by self-invocations (run inline here)
    assert res["run_id"] == "credit-scores-20261201T020000Z" and res["continued"] is True
    run = env.ledger.require_run(res["run_id"])
    assert run.expected == 25 and run.status is RunStatus.RUNNING
    batches: list[int] = []

    def forwarder(ev: dict[str, Any]) -> Any:
        kinds = {TaskEnvelope.parse(r["body"]).kind for r in ev["Records"]}
        batches.extend([len(ev["Records"])] if kinds == {TaskKind.TASK} else [])
        return handler("forwarder")(ev, FakeContext("forwarder-fn"))

    capsys.readouterr()
    env.drive(forwarder, env.task_queue)
    # THEN the run is SUCCEEDED, and the logs are structured JSON with EMF metrics per job
    run = env.ledger.require_run(res["run_id"])
    assert run.status is RunStatus.SUCCEEDED
    out = capsys.readouterr().out
    assert '"TasksSucceeded"' in out and '"job": "credit-scores"' in out.replace('":"', '": "')
    assert '"run_id"' in out
    # AND each forwarder invocation of tasks wrote one EMF document: its pushes, push time and tasks together
    docs = [found[1] for line in out.splitlines() if (found := emf_metrics(line)) and "ServicePushes" in found[1]]
    assert len(docs) == len(batches) and all("TasksSucceeded" in d and "PushBatchMilliseconds" in d for d in docs)
    assert batches == [10, 10, 5] and sum(sum(d["TasksSucceeded"]) for d in docs) == 25


def test_with_a_reduce_queue_the_reducer_handler_finishes_the_run(env: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN functions configured with REDUCE_QUEUE_URL, as the stack deploys them
    monkeypatch.setenv("REDUCE_QUEUE_URL", env.reduce_queue)
    _reset_runtime()
    assert (
        runtime.reduce_sender().queue_url == env.reduce_queue
        and runtime.sender_for("credit-scores").queue_url == env.task_queue
    )
    seed_companies(env.ddb, env.companies, 12)
    res = handler("splitter")(load_event("scheduled_event.json"), FakeContext())
    # WHEN the forwarder handler drains the task queue
    env.drive(lambda ev: handler("forwarder")(ev, FakeContext("forwarder-fn")), env.task_queue)
    # THEN the reduce waits on the reduce queue, and the reducer handler (the same code) ends the run
    assert env.ledger.require_run(res["run_id"]).status is RunStatus.REDUCING
    assert env.depth(env.task_queue) == 0 and env.depth(env.reduce_queue) > 0
    env.drive(lambda ev: handler("reducer")(ev, FakeContext("reducer-fn")), env.reduce_queue)
    assert env.ledger.require_run(res["run_id"]).status is RunStatus.SUCCEEDED
    assert env.depth(env.task_queue) == 0 and env.depth(env.reduce_queue) == 0


def test_without_a_reduce_queue_the_reduce_sender_is_the_task_sender(env: Stack) -> None:
    assert runtime.reduce_sender() is runtime.sender_for("credit-scores")


def test_a_job_without_a_queue_is_refused_with_the_fix(env: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN functions that know only credit-scores' queue (no default task queue)
    monkeypatch.delenv("TASK_QUEUE_URL")
    _reset_runtime()
    # WHEN another job's sender is asked for, THEN the error names the job, the queues known and the fix
    with pytest.raises(SettingsError, match=r"no task queue for job 'invoice-reminders'.*redeploy"):
        runtime.sender_for("invoice-reminders")


def test_dead_letter_and_sweeper_handlers(env: Stack) -> None:
    from microprocess.ledger import CURSOR_DONE
    from microprocess.pipeline.envelope import shard_of
    from tests.functions_harness import JOB, sqs_record

    # GIVEN a run of 2 tasks whose splitter accounted its only page and died before marking the split done
    env.ledger.create_run("r1", JOB, segments=1)
    env.ledger.account_page("r1", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=2)
    # WHEN the sweeper handler runs THEN it finishes the split, and the run waits for its 2 tasks
    report = handler("sweeper")({}, FakeContext("sweeper-fn"))
    assert (report["runs_seen"], report["splits_finished"], report["reduces_claimed"]) == (1, ["r1"], [])
    assert env.ledger.require_run("r1").status is RunStatus.RUNNING
    # WHEN both tasks reach the DLQ beside a message nobody can parse
    tasks = [
        TaskEnvelope(job=JOB.name, run_id="r1", task_id=t, shard=shard_of(t, JOB.shard_count), item={}).to_json()
        for t in ("0-000000000", "0-000000001")
    ]
    records = [sqs_record(body, receive_count=5) for body in tasks] + [sqs_record("nonsense", message_id="x1")]
    assert handler("dead_letter")({"Records": records}, FakeContext("dead-letter-fn")) == {"batchItemFailures": []}
    # THEN both tasks are counted FAILED, which finishes the run (its reduce claimed) ...
    prog = env.ledger.progress("r1")
    assert (prog.status, prog.failed, prog.succeeded) == (RunStatus.REDUCING, 2, 0)
    # ... and what could not be parsed is quarantined in S3
    listed = env.s3.list_objects_v2(Bucket=env.bucket, Prefix="quarantine/").get("Contents", [])
    assert [o["Key"].rsplit("/", 1)[-1] for o in listed] == ["x1.json"]


def test_missing_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_TABLE", raising=False)
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match="LEDGER_TABLE"):
        get_settings()
    get_settings.cache_clear()


def test_the_deployed_forwarder_stops_calling_within_2_s_of_a_cancel(
    env: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from microprocess.pipeline import admission as admission_module
    from tests.test_forwarder_promises import STATUS_REREAD_S, FakeClock, enqueued

    clock = FakeClock()
    monkeypatch.setattr(admission_module, "time", clock)  # the run cache's clock
    forward = handler("forwarder")
    # GIVEN the forwarder handler, wired from its environment, has pushed tasks of a RUNNING run
    records = enqueued(env, 4)
    assert forward({"Records": records[:2]}, FakeContext("forwarder-fn")) == {"batchItemFailures": []}
    assert len(env.service.task_calls()) == 2
    # WHEN the run is cancelled and 2 s pass
    env.ledger.cancel("r1")
    clock.now += STATUS_REREAD_S
    # THEN its next messages are acknowledged without calls
    assert forward({"Records": records[2:]}, FakeContext("forwarder-fn")) == {"batchItemFailures": []}
    assert len(env.service.task_calls()) == 2
