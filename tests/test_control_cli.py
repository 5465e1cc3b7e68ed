"""`microprocess tasks`, `pause`, `resume`, `stop` and `scale` against moto."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import boto3
import pytest
import typer
from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.cli import control
from microprocess.cli import deployment as cli_deployment
from microprocess.control.lookup import write_item_index
from microprocess.ledger import CURSOR_DONE, Ledger, RunStatus, TaskOutcome, TaskState
from microprocess.pipeline.envelope import shard_of
from tests.declared import CREDIT_SCORES

JOB = CREDIT_SCORES
REGION = "us-east-1"


class InvokeRecorder:
    """moto's Lambda for event source mappings; invocations recorded (moto would need Docker to run them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.invocations: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.invocations.append(json.loads(kwargs["Payload"]))
        return {"StatusCode": 202}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    control.register(app)
    app.command("status")(cli.status)
    return app


@pytest.fixture
def deployment(ddb: Any, ledger_table: str, monkeypatch: pytest.MonkeyPatch) -> tuple[cli.Deployment, InvokeRecorder]:
    sqs = boto3.client("sqs", region_name=REGION)
    iam = boto3.client("iam", region_name=REGION)
    lam = InvokeRecorder(boto3.client("lambda", region_name=REGION))
    queue = sqs.create_queue(QueueName="credit-scores-tasks")["QueueUrl"]
    other = sqs.create_queue(QueueName="other-tasks")["QueueUrl"]
    reduce_queue = sqs.create_queue(QueueName="reduces")["QueueUrl"]
    role = iam.create_role(RoleName="fwd", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    lam.create_function(
        FunctionName="forwarder-fn",
        Runtime="python3.11",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": code.getvalue()},
    )
    for url, cap in ((queue, 10), (other, 7)):
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        lam.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="forwarder-fn", BatchSize=10, ScalingConfig={"MaximumConcurrency": cap}
        )
    from tests.test_control_adaptive import FakeCloudWatch

    cloudwatch = FakeCloudWatch({"pushes": [900.0], "throttled": [855.0], "p90": [30.0]})
    clients = {"dynamodb": ddb, "sqs": sqs, "lambda": lam, "cloudwatch": cloudwatch}
    dep = cli.Deployment(
        name="test",
        outputs={
            "LedgerTable": ledger_table,
            "SplitterFunctionName": "splitter-fn",
            "ForwarderFunctionName": "forwarder-fn",
            "JobQueueUrls": json.dumps({JOB.name: queue, "invoice-reminders": other}),
            "ReduceQueueUrl": reduce_queue,
            "DeadLetterQueueUrl": queue,
        },
        client=lambda service: clients[service],
    )
    monkeypatch.setattr(cli_deployment, "connect", lambda target: dep)  # commands connect through it
    return dep, lam


def outcome(i: int, state: TaskState) -> TaskOutcome:
    task_id = f"0-{i:09d}"
    return TaskOutcome(
        task_id,
        shard_of(task_id, JOB.shard_count),
        state,
        1 if state is TaskState.SUCCEEDED else JOB.max_attempts,
        f"C{i:07d}",
        result={"score": 700} if state is TaskState.SUCCEEDED else None,
        error="HTTP 400: unknown company" if state is TaskState.FAILED else None,
    )


def five_tasks(ledger: Ledger, run_id: str = "r1") -> None:
    """A run of 5 companies: 0-1 succeeded, 2 failed, 3-4 not terminal."""
    ledger.create_run(run_id, JOB, segments=1)
    write_item_index(ledger, run_id, [(f"C{i:07d}", f"0-{i:09d}") for i in range(5)])
    ledger.account_page(run_id, segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=5)
    ledger.finish_split(run_id)
    outs = [outcome(0, TaskState.SUCCEEDED), outcome(1, TaskState.SUCCEEDED), outcome(2, TaskState.FAILED)]
    ledger.record_outcomes(run_id, JOB.counter_count, outs)


def invoke(runner: CliRunner, app: typer.Typer, *args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_tasks_finds_one_item_with_its_state_attempts_error_and_timings(
    app: typer.Typer, deployment: Any, ledger: Ledger
) -> None:
    five_tasks(ledger)
    result = invoke(CliRunner(), app, "tasks", "r1", "--item", "C0000002", "--json")
    assert result.exit_code == 0, result.output
    (task,) = json.loads(result.stdout)
    assert task["task_id"] == "0-000000002" and task["state"] == "FAILED"
    assert task["attempts"] == JOB.max_attempts and task["error"] == "HTTP 400: unknown company"
    assert task["finished_at"] and task["seconds_after_start"] is not None
    text = invoke(CliRunner(), app, "tasks", "r1", "--item", "C0000000")
    assert "SUCCEEDED" in text.stdout and '{"score": 700}' in text.stdout


def test_tasks_lists_pending_failed_and_succeeded(app: typer.Typer, deployment: Any, ledger: Ledger) -> None:
    five_tasks(ledger)
    runner = CliRunner()
    pending = json.loads(invoke(runner, app, "tasks", "r1", "--state", "PENDING", "--json").stdout)
    assert [(t["task_id"], t["item_id"], t["state"]) for t in pending] == [
        ("0-000000003", "C0000003", "PENDING"),
        ("0-000000004", "C0000004", "PENDING"),
    ]
    failed = json.loads(invoke(runner, app, "tasks", "r1", "--state", "failed", "--json").stdout)
    assert [t["item_id"] for t in failed] == ["C0000002"]
    ok = json.loads(invoke(runner, app, "tasks", "r1", "--state", "SUCCEEDED", "--json").stdout)
    assert sorted(t["item_id"] for t in ok) == ["C0000000", "C0000001"]
    table = invoke(runner, app, "tasks", "r1", "--state", "FAILED")
    assert "C0000002" in table.stdout and "FAILED" in table.stdout
    assert len(json.loads(invoke(runner, app, "tasks", "r1", "--limit", "1", "--json").stdout)) == 1


def test_tasks_refuses_what_it_cannot_find(app: typer.Typer, deployment: Any, ledger: Ledger) -> None:
    five_tasks(ledger)
    runner = CliRunner()
    missing = invoke(runner, app, "tasks", "r1", "--item", "C9")
    assert missing.exit_code == cli.EXIT_FAILED and "item 'C9' is not in run r1" in missing.stderr
    no_task = invoke(runner, app, "tasks", "r1", "--task", "7-000000000")
    assert no_task.exit_code == cli.EXIT_FAILED and "task ids are <segment>-<seq>" in no_task.stderr
    both = invoke(runner, app, "tasks", "r1", "--item", "a", "--task", "b")
    assert both.exit_code == cli.EXIT_USAGE
    unknown = invoke(runner, app, "tasks", "nope")
    assert unknown.exit_code == cli.EXIT_FAILED and "unknown run" in unknown.stderr


def test_pause_shows_paused_in_status_and_resume_restarts_a_paused_split(
    app: typer.Typer, deployment: Any, ledger: Ledger
) -> None:
    _, lam = deployment
    ledger.create_run("r1", JOB, segments=1)
    runner = CliRunner()
    paused = invoke(runner, app, "pause", "r1", "--json")
    assert json.loads(paused.stdout) == {"run_id": "r1", "status": "PAUSED", "paused_from": "SPLITTING"}
    status = invoke(runner, app, "status", "r1")
    assert "PAUSED" in status.stdout and "resume with `microprocess resume r1`" in status.stdout
    assert "concurrency  10 (declared max 50)" in status.stdout
    again = invoke(runner, app, "pause", "r1")
    assert again.exit_code == cli.EXIT_FAILED and "already paused" in again.stderr
    resumed = json.loads(invoke(runner, app, "resume", "r1", "--json").stdout)
    assert resumed["status"] == "SPLITTING" and resumed["splitter_restarted"] is True
    assert lam.invocations == [{"job": JOB.name, "run_id": "r1", "source": "resume"}]
    assert ledger.require_run("r1").status is RunStatus.SPLITTING


def test_stop_ends_a_run_early_and_enqueues_its_reduce(app: typer.Typer, deployment: Any, ledger: Ledger) -> None:
    dep, _ = deployment
    five_tasks(ledger)
    runner = CliRunner()
    stopped = invoke(runner, app, "stop", "r1", "--json")
    assert json.loads(stopped.stdout) == {"run_id": "r1", "status": "REDUCING", "not_attempted": 2}
    run = ledger.require_run("r1")
    assert run.status is RunStatus.REDUCING and run.reduce_claimed_at
    assert "stopped early by the operator after 3 of 5 tasks" in (run.error or "")
    queued = dep.client("sqs").get_queue_attributes(
        QueueUrl=dep.outputs["ReduceQueueUrl"], AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]["ApproximateNumberOfMessagesDelayed"]
    assert int(queued) == run.shard_count  # delayed until its batches in flight settle (stop.settle_s)
    again = invoke(runner, app, "stop", "r1")
    assert again.exit_code == cli.EXIT_FAILED
    assert "only a splitting, running or paused run can be stopped" in again.stderr


def test_scale_shows_and_changes_the_cap_of_the_jobs_own_mapping(
    app: typer.Typer, deployment: Any, ledger: Ledger
) -> None:
    runner = CliRunner()
    shown = json.loads(invoke(runner, app, "scale", JOB.name, "--json").stdout)
    assert (shown["concurrency"], shown["declared_max_concurrency"]) == (10, JOB.max_concurrency)
    changed = json.loads(invoke(runner, app, "scale", JOB.name, "--concurrency", "25", "--json").stdout)
    assert (changed["previous"], changed["concurrency"]) == (10, 25)
    assert json.loads(invoke(runner, app, "scale", JOB.name, "--json").stdout)["concurrency"] == 25
    # the other job's mapping is untouched
    assert json.loads(invoke(runner, app, "scale", "invoice-reminders", "--json").stdout)["concurrency"] == 7


@pytest.mark.parametrize(
    ("value", "message"),
    [("1", "outside 2..1000"), ("1001", "outside 2..1000"), ("51", "above job 'credit-scores''s declared")],
)
def test_scale_refuses_a_cap_out_of_range_with_the_fix(
    app: typer.Typer, deployment: Any, value: str, message: str
) -> None:
    result = invoke(CliRunner(), app, "scale", JOB.name, "--concurrency", value)
    assert result.exit_code == cli.EXIT_USAGE
    assert message in result.stderr
    if value == "51":
        assert "raise max_concurrency for [jobs.credit-scores] in microprocess.toml" in result.stderr


def reducing_run(ledger: Ledger, run_id: str = "r1", *, parts: int = 0) -> None:
    """A run of 3 tasks, all done, its reduce claimed, `parts` of its reduce parts done."""
    ledger.create_run(run_id, JOB, segments=1)
    ledger.account_page(run_id, segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=3)
    ledger.finish_split(run_id)
    outs = [outcome(i, TaskState.SUCCEEDED) for i in range(3)]
    assert ledger.record_outcomes(run_id, JOB.counter_count, outs).claimed_reduce
    for k in range(parts):
        ledger.record_reduce_part(run_id, k, JOB.shard_count)


def test_status_shows_the_reduce_phase_and_the_reduce_queue(app: typer.Typer, deployment: Any, ledger: Ledger) -> None:
    dep, _ = deployment
    reducing_run(ledger, parts=5)
    dep.client("sqs").send_message(QueueUrl=dep.outputs["ReduceQueueUrl"], MessageBody="{}")
    status = invoke(CliRunner(), app, "status", "r1")
    assert f"reduce       parts 5/{JOB.shard_count}, finalize waiting for the parts, email -" in status.stdout
    assert "reduce queue 1 (+0 in flight)" in status.stdout
    for k in range(5, JOB.shard_count):
        ledger.record_reduce_part("r1", k, JOB.shard_count)
    ledger.claim_email("r1")
    status = invoke(CliRunner(), app, "status", "r1")
    assert f"parts {JOB.shard_count}/{JOB.shard_count}, finalize claimed, email sending" in status.stdout


def test_the_progress_bar_shows_the_reduce_phase_to_the_end(deployment: Any, ledger: Ledger) -> None:
    from rich.console import Console

    from microprocess.cli.progress import watch_run

    dep, _ = deployment
    reducing_run(ledger, parts=JOB.shard_count)
    ledger.finish_run("r1", tolerated_failure_pct=1.0, report_uri="s3://reports/r1/")
    buf = io.StringIO()
    final = watch_run(
        ledger,
        "r1",
        sqs=dep.client("sqs"),
        reduce_queue_url=dep.outputs["ReduceQueueUrl"],
        console=Console(file=buf, width=400),
    )
    assert final.status is RunStatus.SUCCEEDED
    assert f"reduce: parts {JOB.shard_count}/{JOB.shard_count}, finalize claimed, email -" in buf.getvalue()


def test_scale_adaptive_backs_off_when_the_service_throttles(app: typer.Typer, deployment: Any) -> None:
    # GIVEN the job's last minute: 855 of 900 pushes answered 429/503 (mostly all-429 batches: no push
    # time known yet, so a cut by decrease_factor at most), cap 10 in force
    result = invoke(CliRunner(), app, "scale", JOB.name, "--adaptive", "--ticks", "1", "--json")
    # WHEN one decision is made THEN the cap is halved on the job's mapping, and the decision says why
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert (decision["action"], decision["previous"], decision["concurrency"]) == ("decrease", 10, 5)
    assert "855 of 900 pushes answered 429/503" in decision["reason"]
    assert json.loads(invoke(CliRunner(), app, "scale", JOB.name, "--json").stdout)["concurrency"] == 5
    both = invoke(CliRunner(), app, "scale", JOB.name, "--adaptive", "--concurrency", "5")
    assert both.exit_code == cli.EXIT_USAGE


def test_status_shows_a_shedding_service_as_asked_to_wait_until(
    app: typer.Typer, deployment: Any, ledger: Ledger, ledger_table: str, ddb: Any
) -> None:
    from microprocess.pipeline.shedding import ServiceWaits

    reducing_run(ledger)
    ServiceWaits(ddb, ledger_table).ask_to_wait(JOB.service, 120, "HTTP 503 asking to wait 120 s")
    status = invoke(CliRunner(), app, "status", "r1")
    assert f"service {JOB.service}: asked to wait until " in status.stdout
    assert "(HTTP 503 asking to wait 120 s)" in status.stdout


def test_a_shared_services_load_is_shown_with_each_jobs_share(deployment: Any, ledger_table: str, ddb: Any) -> None:
    from types import SimpleNamespace

    from microprocess.cli.service_load import service_lines, service_view
    from microprocess.control.service_controller import ServiceState
    from microprocess.control.share import ServiceLoad
    from microprocess.declarations import JobRegistry, ServiceDeclaration, ServiceRegistry

    dep, _ = deployment
    service = ServiceDeclaration(name=JOB.service, local_app="m:app", capacity={"concurrent_pushes": 30})
    declared = SimpleNamespace(jobs=JobRegistry([JOB]), services=ServiceRegistry([service]))
    load = ServiceLoad(JOB.service, 30, {JOB.name: 3}, {JOB.name: 1.0}, {JOB.name: 12}, {JOB.name: 10})
    ServiceState(ddb, ledger_table).save(
        JOB.service,
        {
            "load": load.as_dict()
            | {
                "caps": {JOB.name: 3},
                "shares": {JOB.name: 1.0},
                "in_flight": {JOB.name: 12},
                "batch_sizes": {JOB.name: 10},
            }
        },
    )
    [line] = service_lines(dep, declared, JOB.service)  # type: ignore[arg-type]
    assert line == (
        f"service {JOB.service}: capacity 30 pushes at once, caps allow 30; "
        f"{JOB.name} 3 batch(es), share 100%, 12 in flight"
    )
    assert service_view(dep, declared, JOB.service)["load"]["allowed_pushes"] == 30  # type: ignore[arg-type]
