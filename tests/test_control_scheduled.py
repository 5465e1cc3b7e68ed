"""The adaptive controller on its schedule: the deployed function's wiring, on moto (Lambda event
source mappings, SQS, the ledger table); CloudWatch answers as AWS does (moto computes no p90)."""

from __future__ import annotations

import importlib
import io
import json
import zipfile
from typing import Any

import boto3
import pytest

from infra.contract import JOB_QUEUES, LEDGER_TABLE
from microprocess.control.scheduled import (
    FORWARDER_FUNCTION_NAME,
    AdaptiveSetupError,
    ControllerState,
    adaptive_jobs,
    tick_from_environment,
)
from microprocess.declarations import load_declarations
from tests.declared import CREDIT_SCORES, INVOICE_REMINDERS
from tests.test_control_adaptive import FakeCloudWatch

REGION = "us-east-1"
ADAPTIVE = CREDIT_SCORES.model_copy(update={"adaptive": True})
STATIC = INVOICE_REMINDERS  # adaptive = false (the default)


class Aws:
    """moto's Lambda, SQS and DynamoDB with the forwarder's two mappings (caps 10 and 7)."""

    def __init__(self, ddb: Any, ledger_table: str) -> None:
        self.ddb, self.table = ddb, ledger_table
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.lam = boto3.client("lambda", region_name=REGION)
        role = boto3.client("iam", region_name=REGION).create_role(RoleName="fwd", AssumeRolePolicyDocument="{}")
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as z:
            z.writestr("handler.py", "def handler(event, context):\n    return {}\n")
        self.lam.create_function(
            FunctionName="forwarder-fn",
            Runtime="python3.11",
            Role=role["Role"]["Arn"],
            Handler="handler.handler",
            Code={"ZipFile": code.getvalue()},
        )
        self.queues: dict[str, str] = {}
        self.arns: dict[str, str] = {}
        for job, cap in ((ADAPTIVE.name, 10), (STATIC.name, 7)):
            url = self.sqs.create_queue(QueueName=f"{job}-tasks")["QueueUrl"]
            arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.lam.create_event_source_mapping(
                EventSourceArn=arn, FunctionName="forwarder-fn", BatchSize=10, ScalingConfig={"MaximumConcurrency": cap}
            )
            self.queues[job], self.arns[job] = url, arn
        self.cloudwatch = FakeCloudWatch({})
        self.calls: list[str] = []

    def client(self, service: str) -> Any:
        self.calls.append(service)
        return {"dynamodb": self.ddb, "sqs": self.sqs, "lambda": self.lam, "cloudwatch": self.cloudwatch}[service]

    def environ(self) -> dict[str, str]:
        return {
            FORWARDER_FUNCTION_NAME: "forwarder-fn",
            JOB_QUEUES: json.dumps(self.queues),
            LEDGER_TABLE: self.table,
        }

    def cap(self, job: str) -> int:
        (mapping,) = self.lam.list_event_source_mappings(FunctionName="forwarder-fn", EventSourceArn=self.arns[job])[
            "EventSourceMappings"
        ]
        return int(mapping["ScalingConfig"]["MaximumConcurrency"])


@pytest.fixture
def aws(ddb: Any, ledger_table: str) -> Aws:
    return Aws(ddb, ledger_table)


def test_one_invocation_moves_only_the_adaptive_jobs_mapping_and_remembers_its_decision(aws: Aws) -> None:
    # GIVEN the adaptive job's last minute: 855 of 900 pushes answered 429/503 (mostly all-429 batches,
    # p90 30 ms: no push time known yet, so a cut by decrease_factor at most), and a static job
    aws.cloudwatch.values = {"pushes": [900.0], "throttled": [855.0], "p90": [30.0]}
    emitted: list[tuple[str, float, str]] = []
    # WHEN the scheduled function runs once
    decisions = tick_from_environment(
        [ADAPTIVE, STATIC], aws.client, lambda name, value, job, **_: emitted.append((name, value, job)), aws.environ()
    )
    # THEN the adaptive job's cap is halved on its own mapping, the static job's is untouched
    assert list(decisions) == [ADAPTIVE.name]
    assert (decisions[ADAPTIVE.name]["action"], decisions[ADAPTIVE.name]["concurrency"]) == ("decrease", 5)
    assert (aws.cap(ADAPTIVE.name), aws.cap(STATIC.name)) == (5, 7)
    # AND it read only the adaptive job's metrics, of the last minute
    (request,) = aws.cloudwatch.requests
    dims = request["MetricDataQueries"][0]["MetricStat"]["Metric"]["Dimensions"]
    assert {"Name": "job", "Value": ADAPTIVE.name} in dims
    assert (request["EndTime"] - request["StartTime"]).total_seconds() == 60
    # AND the decision is kept in the ledger table, on the job's own item, and emitted as metrics
    item = aws.ddb.get_item(TableName=aws.table, Key=ControllerState.key(ADAPTIVE.name))["Item"]
    assert (item["concurrency"]["N"], item["action"]["S"]) == ("5", "decrease")
    assert ("EffectiveConcurrency", 5, ADAPTIVE.name) in emitted
    assert ("ConcurrencyDecreased", 1, ADAPTIVE.name) in emitted


def test_the_healthy_baseline_survives_from_one_invocation_to_the_next(aws: Aws) -> None:
    # GIVEN three healthy minutes at p90 100 ms, each a separate invocation (nothing kept in memory)
    aws.cloudwatch.values = {"pushes": [500.0], "throttled": [0.0], "p90": [100.0]}
    for _ in range(3):
        tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())
    assert ControllerState(aws.ddb, aws.table).baseline_ms(ADAPTIVE.name) == pytest.approx(100.0)
    capped = aws.cap(ADAPTIVE.name)
    # WHEN the next minute's p90 climbs to 250 ms, with no 429/503 at all
    aws.cloudwatch.values = {"pushes": [500.0], "throttled": [0.0], "p90": [250.0]}
    decision = tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())[ADAPTIVE.name]
    # THEN it backs off: only the remembered baseline can tell 250 ms from healthy
    assert decision["action"] == "decrease" and "healthy 100 ms" in decision["reason"]
    assert aws.cap(ADAPTIVE.name) == capped // 2


def test_the_capacity_estimate_survives_so_the_next_healthy_minute_probes_gently(aws: Aws) -> None:
    # GIVEN a healthy minute at p90 500 ms (cap 10 -> 20: doubled, no capacity known yet), then a
    # throttled one: 12,000 of 24,000 pushes taken in 60 s = 200/s x 0.5 s = 100 pushes in flight =
    # 10 batches of 10 (and the cap's accepted share: 20 x 12,000 / 24,000 = 10)
    aws.cloudwatch.values = {"pushes": [6000.0], "throttled": [0.0], "p90": [500.0]}
    assert tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())[ADAPTIVE.name]["concurrency"] == 20
    aws.cloudwatch.values = {"pushes": [24000.0], "throttled": [12000.0], "p90": [500.0]}
    throttled = tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())[ADAPTIVE.name]
    assert (throttled["action"], throttled["concurrency"], throttled["capacity"]) == ("decrease", 10, 10.0)
    assert ControllerState(aws.ddb, aws.table).remembered(ADAPTIVE.name) == (500.0, 10.0)
    # WHEN the next two minutes, each another invocation, are healthy
    aws.cloudwatch.values = {"pushes": [6000.0], "throttled": [0.0], "p90": [500.0]}
    hold = tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())[ADAPTIVE.name]
    probe = tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())[ADAPTIVE.name]
    # THEN the first holds at the capacity (the least wait, 2 healthy minutes) and the second probes
    # one batch above the remembered capacity, not the declared step of 2
    assert (hold["action"], hold["concurrency"]) == ("hold", 10)
    assert (probe["action"], probe["concurrency"]) == ("increase", 11) and aws.cap(ADAPTIVE.name) == 11


def test_the_probe_backoff_survives_between_invocations(aws: Aws) -> None:
    # GIVEN a capacity of 10 known (as above), and a probe at 11 that is throttled within a batch of it:
    # 12,600 taken in 60 s = 210/s x 0.5 s = 105 pushes = 10.5 batches
    aws.cloudwatch.values = {"pushes": [6000.0], "throttled": [0.0], "p90": [500.0]}
    tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())
    aws.cloudwatch.values = {"pushes": [24000.0], "throttled": [12000.0], "p90": [500.0]}
    tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())
    aws.cloudwatch.values = {"pushes": [6000.0], "throttled": [0.0], "p90": [500.0]}
    tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())
    assert tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())[ADAPTIVE.name]["concurrency"] == 11
    aws.cloudwatch.values = {"pushes": [13200.0], "throttled": [600.0], "p90": [500.0]}
    back = tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())[ADAPTIVE.name]
    assert (back["concurrency"], back["probe_wait"]) == (10, 4)
    # WHEN the next four minutes, each its own invocation, are healthy
    aws.cloudwatch.values = {"pushes": [6000.0], "throttled": [0.0], "p90": [500.0]}
    minutes = [tick_from_environment([ADAPTIVE], aws.client, environ=aws.environ())[ADAPTIVE.name] for _ in range(4)]
    # THEN the first three hold (the streak remembered in the ledger), the fourth probes
    assert [(m["action"], m["concurrency"], m["streak"]) for m in minutes[:3]] == [
        ("hold", 10, 1),
        ("hold", 10, 2),
        ("hold", 10, 3),
    ]
    assert (minutes[3]["action"], minutes[3]["concurrency"]) == ("increase", 11)
    assert ControllerState(aws.ddb, aws.table).memory(ADAPTIVE.name)["probe_wait"] == 4


def test_no_adaptive_job_makes_no_call(aws: Aws) -> None:
    assert tick_from_environment([STATIC], aws.client, environ={}) == {}
    assert aws.calls == []


def test_a_missing_setting_or_mapping_is_named_with_the_fix(aws: Aws) -> None:
    with pytest.raises(AdaptiveSetupError, match=r"FORWARDER_FUNCTION_NAME.*deploy it again"):
        tick_from_environment([ADAPTIVE], aws.client, environ={JOB_QUEUES: "{}", LEDGER_TABLE: aws.table})
    # A job whose queue the stack does not know: that job fails loudly, its cap unchanged.
    env = {**aws.environ(), JOB_QUEUES: json.dumps({STATIC.name: aws.queues[STATIC.name]})}
    aws.cloudwatch.values = {"pushes": [900.0], "throttled": [90.0]}
    with pytest.raises(RuntimeError, match=r"credit-scores: the stack has no task queue for job 'credit-scores'"):
        tick_from_environment([ADAPTIVE], aws.client, environ=env)
    assert aws.cap(ADAPTIVE.name) == 10


def test_the_handler_runs_the_declared_adaptive_jobs(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    from microprocess.pipeline import runtime

    # GIVEN the function as deployed: its environment, the declarations, the runtime's clients
    for key, value in aws.environ().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Microprocess")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "microprocess")
    monkeypatch.setattr(runtime, "client", aws.client)
    handler = importlib.import_module("functions.adaptive.handler")

    class Declared:
        jobs = [ADAPTIVE, STATIC]
        services: list[Any] = []

    monkeypatch.setattr(handler, "get_declarations", lambda: Declared)
    aws.cloudwatch.values = {"pushes": [900.0], "throttled": [855.0], "p90": [30.0]}
    from tests.test_handlers import FakeContext

    # WHEN the schedule invokes it THEN the adaptive job's cap is halved
    result = handler.lambda_handler({"source": "aws.events", "detail-type": "Scheduled Event"}, FakeContext())
    assert result[ADAPTIVE.name]["concurrency"] == 5 and aws.cap(ADAPTIVE.name) == 5


def test_the_field_is_read_from_the_declaration_file_and_off_by_default(tmp_path: Any) -> None:
    from tests.declared import ROOT

    text = (ROOT / "microprocess.toml").read_text()
    assert not adaptive_jobs(load_declarations(ROOT / "microprocess.toml").jobs)
    marked = text.replace("[jobs.invoice-reminders]\n", "[jobs.invoice-reminders]\nadaptive = true\n")
    (tmp_path / "microprocess.toml").write_text(marked)
    assert [j.name for j in adaptive_jobs(load_declarations(tmp_path / "microprocess.toml").jobs)] == [
        "invoice-reminders"
    ]
