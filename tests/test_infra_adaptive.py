"""The adaptive concurrency function in the synthesized cloud stage: present only when a job opts
in, on a one-minute schedule, with least-privilege IAM (checked with cdk-nag on)."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest

from infra import MicroprocessPlatform, StageSettings
from infra.lambda_function import powertools_layer_arn
from infra.nag import add_cloud_checks
from microprocess.control.scheduled import FORWARDER_FUNCTION_NAME, STATE_PK_PREFIX
from microprocess.control.share import SERVICE_PK_PREFIX
from tests.test_infra_synth import ROOT, render

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

TEAM = ROOT / "examples" / "team_cdk_app"


def synth(adaptive: tuple[str, ...], capacity: int | None = None) -> dict[str, Any]:
    """The team example's jobs (one external service), with `adaptive = true` on the named jobs
    (and the service declared at `capacity` pushes at once)."""
    folder = Path(tempfile.mkdtemp(prefix="adaptive-"))
    text = (TEAM / "jobs.toml").read_text()
    if capacity is not None:
        text = text.replace(
            "[services.billing]\n", f"[services.billing]\ncapacity = {{ concurrent_pushes = {capacity} }}\n"
        )
    for job in adaptive:
        text = text.replace(f"[jobs.{job}]\n", f"[jobs.{job}]\nadaptive = true\n")
    (folder / "jobs.toml").write_text(text)
    flags = json.loads((TEAM / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=str(folder / "out"), context=flags)
    stack = cdk.Stack(app, "Adaptive", env=cdk.Environment(account="111111111111", region="eu-west-1"))
    MicroprocessPlatform(
        stack,
        "Jobs",
        settings=StageSettings(
            repo_root=ROOT, ses_sender="reports@example.com", layer_arns=(powertools_layer_arn("eu-west-1"),)
        ),
        declarations=folder / "jobs.toml",
        service_urls={"billing": "https://billing.example.com"},
    )
    add_cloud_checks(app, stack)  # an unacknowledged finding fails the synth
    app.synth()
    return dict(json.loads((folder / "out" / "Adaptive.template.json").read_text()))


@functools.cache
def with_adaptive() -> dict[str, Any]:
    return synth(("statement-pdfs",))


def of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def adaptive_function(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (k, v["Properties"])
        for k, v in of_type(template, "AWS::Lambda::Function").items()
        if v["Properties"]["Handler"] == "functions.adaptive.handler.lambda_handler"
    ]
    return found


def statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for policy in of_type(template, "AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"]["Roles"]:
            out += policy["Properties"]["PolicyDocument"]["Statement"]
    return out


def test_without_an_adaptive_job_there_is_no_function_and_no_schedule() -> None:
    template = synth(())
    handlers = {v["Properties"]["Handler"] for v in of_type(template, "AWS::Lambda::Function").values()}
    assert "functions.adaptive.handler.lambda_handler" not in handlers
    assert not [r for r in of_type(template, "AWS::Events::Rule").values() if "adaptive" in json.dumps(r).lower()]


def test_an_adaptive_job_gets_a_function_run_every_minute() -> None:
    template = with_adaptive()
    logical_id, fn = adaptive_function(template)
    forwarder = next(
        k
        for k, v in of_type(template, "AWS::Lambda::Function").items()
        if v["Properties"]["Handler"] == "functions.forwarder.handler.lambda_handler"
    )
    assert fn["Environment"]["Variables"][FORWARDER_FUNCTION_NAME] == {"Ref": forwarder}
    (rule,) = [
        r["Properties"]
        for r in of_type(template, "AWS::Events::Rule").values()
        if any(t["Arn"] == {"Fn::GetAtt": [logical_id, "Arn"]} for t in r["Properties"]["Targets"])
    ]
    assert rule["ScheduleExpression"] == "rate(1 minute)" and rule["State"] == "ENABLED"


def test_the_adaptive_function_may_only_read_metrics_and_move_the_adaptive_jobs_mapping() -> None:
    # GIVEN statement-pdfs adaptive, dunning-letters not
    template = with_adaptive()
    _, fn = adaptive_function(template)
    role = fn["Role"]["Fn::GetAtt"][0]
    mappings = {
        v["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]: k
        for k, v in of_type(template, "AWS::Lambda::EventSourceMapping").items()
    }
    found: dict[str, set[str]] = {}
    conditions: dict[str, Any] = {}
    for st in statements(template, role):
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        targets = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for action in actions:
            found.setdefault(action, set()).update(render(t) for t in targets)
            if "Condition" in st:
                conditions[action] = st["Condition"]
    log_group = fn["LoggingConfig"]["LogGroup"]["Ref"]
    pdfs_queue = next(q for q in mappings if q.startswith("StatementPdfsTaskQueue"))
    mapping = mappings[pdfs_queue]
    ledger = next(k for k in of_type(template, "AWS::DynamoDB::Table") if k.startswith("Ledger"))
    # THEN exactly these actions, on exactly these resources
    assert {a: sorted(r) for a, r in found.items()} == {
        "cloudwatch:GetMetricData": ["*"],
        "lambda:ListEventSourceMappings": ["*"],
        "lambda:UpdateEventSourceMapping": [
            f"arn:<AWS::Partition>:lambda:eu-west-1:111111111111:event-source-mapping:<{mapping}>"
        ],
        "sqs:GetQueueAttributes": [f"<{pdfs_queue}.Arn>"],
        "dynamodb:GetItem": [f"<{ledger}.Arn>"],
        "dynamodb:PutItem": [f"<{ledger}.Arn>"],
        "dynamodb:Query": [f"<{ledger}.Arn>"],
        "logs:CreateLogStream": [f"<{log_group}.Arn>"],
        "logs:PutLogEvents": [f"<{log_group}.Arn>"],
        "xray:PutTelemetryRecords": ["*"],
        "xray:PutTraceSegments": ["*"],
    }
    # AND its ledger access is limited to its own state items, a job's and a shared service's
    # (no run, counter or task record)
    for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"):
        assert conditions[action] == {
            "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{STATE_PK_PREFIX}*", f"{SERVICE_PK_PREFIX}*"]}
        }
    # AND the static job's mapping is not among what it may update
    dunning = mappings[next(q for q in mappings if q.startswith("DunningLettersTaskQueue"))]
    assert not any(dunning in r for r in found["lambda:UpdateEventSourceMapping"])


def test_a_service_with_a_declared_capacity_gets_the_controller_over_all_its_jobs_mappings() -> None:
    # GIVEN no adaptive job, but the service both jobs push to declares its capacity
    template = synth((), capacity=40)
    _, fn = adaptive_function(template)
    role = fn["Role"]["Fn::GetAtt"][0]
    updatable = {
        render(t)
        for st in statements(template, role)
        if "lambda:UpdateEventSourceMapping" in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
        for t in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])
    }
    # THEN the controller may move both jobs' mappings (it splits the capacity between them)
    assert len(of_type(template, "AWS::Lambda::EventSourceMapping")) >= 2
    queues = [k for k in of_type(template, "AWS::SQS::Queue") if "TaskQueue" in k and "Dead" not in k]
    mappings = of_type(template, "AWS::Lambda::EventSourceMapping")
    job_mappings = [k for k, v in mappings.items() if v["Properties"]["EventSourceArn"]["Fn::GetAtt"][0] in queues]
    assert len(job_mappings) == 2
    assert all(any(m in r for r in updatable) for m in job_mappings)
    # AND the dashboard shows the service's load: each job's cap (its share), its pushes, the tasks held
    dashboards = json.dumps(of_type(template, "AWS::CloudWatch::Dashboard"))
    for title in ("service billing: each job's cap", "service billing: pushes per job", "asked to wait"):
        assert title in dashboards
    assert "ServiceShareCap" in dashboards and "TasksShed" in dashboards
