"""End to end through ONE real local stack: ministack, the deployed CDK local stage, the real
Lambda handlers in its executor, real signed HTTP to both service roles, driven by the CLI.

The queue service starts with a fault file that makes two companies bad requests (HTTP 400,
permanent failures), so the first run SUCCEEDED with two FAILED tasks (0.67% < the tolerated
1%), which `retry-failed` later finishes with the faults off.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.ledger import Ledger, RunStatus
from microprocess.local import LocalStack, LocalState, UpOptions, Workspace, captured_emails
from microprocess.local.processes import descendants, is_running, port_open
from microprocess.local.workspace import WORKDIR_ENV, project_root
from tests.declared import CREDIT_SCORES

pytestmark = pytest.mark.e2e

COMPANIES = 300
BAD_REQUEST_IDS = ["C0000007", "C0000150"]
RUN_TIMEOUT_S = "120"


@pytest.fixture(scope="module")
def workspace() -> Iterator[Workspace]:
    ws = Workspace.discover(project_root() / ".microprocess" / f"e2e-{os.getpid()}")
    yield ws
    shutil.rmtree(ws.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(workspace: Workspace) -> Iterator[LocalStack]:
    workspace.create()
    chaos = workspace.workdir / "chaos.json"
    chaos.write_text(json.dumps({"bad_request_ids": BAD_REQUEST_IDS}))
    stack = LocalStack(workspace, echo=lambda line: None)
    stack.up(UpOptions(items=COMPANIES, chaos=chaos, seed=7))
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def state(stack: LocalStack) -> LocalState:
    assert stack.state is not None
    return stack.state


@pytest.fixture
def runner(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # The CLI finds this stack's local.json through the work folder, as a user's shell would.
    monkeypatch.setenv(WORKDIR_ENV, str(workspace.workdir))
    return CliRunner()


@pytest.fixture(scope="module")
def ledger(state: LocalState) -> Ledger:
    return Ledger(state.outputs["LedgerTable"], client=state.client("dynamodb"))


def cli_json(runner: CliRunner, *args: str, code: int = 0) -> list[Any]:
    result = runner.invoke(cli.app, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return [json.loads(line) for line in result.stdout.strip().splitlines() if line.strip()]


def emails_of(state: LocalState, run_id: str) -> list[dict[str, Any]]:
    return [m for m in captured_emails(state.endpoint_url, state.ca_bundle) if run_id in (m.get("Subject") or "")]


def queue_attributes(state: LocalState) -> dict[str, str]:
    sqs = state.client("sqs")
    return sqs.get_queue_attributes(
        QueueUrl=json.loads(state.outputs["JobQueueUrls"])["credit-scores"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]


def queue_empty(state: LocalState) -> bool:
    attrs = queue_attributes(state)
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0


def deployed_forwarder_concurrency(state: LocalState) -> int:
    """The forwarder's event-source concurrency cap as deployed on this laptop (the largest of its mappings)."""
    lam = state.client("lambda")
    forwarder = state.outputs["ForwarderFunctionName"]
    mappings = lam.list_event_source_mappings(FunctionName=forwarder)["EventSourceMappings"]
    caps = [int((m.get("ScalingConfig") or {}).get("MaximumConcurrency") or 0) for m in mappings]
    assert caps and all(caps), f"every forwarder event source should have a concurrency cap: {mappings}"
    return max(caps)


def chaos_requests(state: LocalState) -> int:
    with urllib.request.urlopen(f"{state.services['scores']}/_chaos/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["requests"])


@pytest.fixture(scope="module")
def first_run(stack: LocalStack, state: LocalState) -> dict[str, Any]:
    runner = CliRunner()
    os.environ[WORKDIR_ENV] = str(stack.ws.workdir)
    try:
        started, final = cli_json(runner, "run", "credit-scores", "--wait", "--json", "--timeout", RUN_TIMEOUT_S)
    finally:
        os.environ.pop(WORKDIR_ENV, None)
    assert started["run_id"] == final["run_id"]
    return final


def test_a_run_succeeds_with_one_report_row_per_company_and_one_email(
    first_run: dict[str, Any], state: LocalState, runner: CliRunner, tmp_path: Path
) -> None:
    # THEN the run SUCCEEDED, with exactly the two bad requests failed (within the 1% tolerance)
    assert first_run["status"] == "SUCCEEDED"
    assert first_run["expected"] == COMPANIES
    assert (first_run["succeeded"], first_run["failed"], first_run["pending"]) == (COMPANIES - 2, 2, 0)
    assert first_run["report_uri"].startswith(f"s3://{state.outputs['ReportsBucket']}/")
    # AND the report has one row per company
    result = runner.invoke(cli.app, ["report", first_run["run_id"], "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report_csv = tmp_path / first_run["run_id"] / "report.csv"
    assert cli.count_report_rows(report_csv) == COMPANIES
    rows = report_csv.read_text().splitlines()
    assert sum(1 for r in rows if any(bad in r for bad in BAD_REQUEST_IDS)) == 2
    # AND exactly one email was sent for the run
    (email,) = emails_of(state, first_run["run_id"])
    assert "SUCCEEDED" in email["Subject"] and list(CREDIT_SCORES.recipients) == email["To"]


def test_the_service_reduce_role_reads_its_own_jobs_runs_and_is_refused_another_jobs(
    first_run: dict[str, Any], state: LocalState
) -> None:
    # GIVEN a session of the scores-queue task role (the one `local up` runs the queue process with)
    sts = state.client("sts")
    role_arn = json.loads(state.outputs["ServiceRoleArns"])["scores-queue"]
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="e2e-check")["Credentials"]
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=state.endpoint_url,
        region_name=state.region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        verify=state.ca_bundle,
    )
    table = state.outputs["LedgerTable"]
    # THEN it reads its own job's run (credit-scores: reduced by its service)
    own = ddb.get_item(TableName=table, Key={"pk": {"S": f"RUN#{first_run['run_id']}"}, "sk": {"S": "RUN"}})
    assert own["Item"]["job"]["S"] == "credit-scores"
    # AND is refused another job's run, as on AWS (the local gateway sets dynamodb:LeadingKeys)
    with pytest.raises(ClientError) as refused:
        ddb.get_item(TableName=table, Key={"pk": {"S": "RUN#invoice-reminders-20261201T080000Z"}, "sk": {"S": "RUN"}})
    assert refused.value.response["Error"]["Code"].startswith("AccessDenied"), refused.value.response


def test_status_and_runs_agree_with_the_ledger(first_run: dict[str, Any], runner: CliRunner, ledger: Ledger) -> None:
    run_id = first_run["run_id"]
    truth = ledger.progress(run_id).as_dict()
    truth.pop("error")
    (status,) = cli_json(runner, "status", run_id, "--json")
    assert status == truth
    (listed,) = cli_json(runner, "runs", "--json")
    assert truth in listed
    (by_job,) = cli_json(runner, "runs", "--job", "credit-scores", "--json")
    assert by_job == listed


@pytest.fixture
def slow_queue_service(stack: LocalStack) -> Iterator[None]:
    """The queue service with every task call waiting 2 s; afterwards, the module's faults again,
    so that a module fixture set up after this test (xdist may order it so) sees the stack it expects."""
    slow = stack.ws.workdir / "slow.json"
    slow.write_text(json.dumps({"rate_timeout": 1.0, "timeout_s": 2}))
    stack.restart_service("scores", chaos=slow)
    yield
    stack.restart_service("scores", chaos=stack.ws.workdir / "chaos.json")


@pytest.mark.usefixtures("slow_queue_service")
def test_cancel_stops_calling_the_service(
    stack: LocalStack, state: LocalState, runner: CliRunner, ledger: Ledger
) -> None:
    # GIVEN a slow queue service (every task call waits 2 s), so that the run is still going when cancelled
    (started,) = cli_json(runner, "run", "credit-scores", "--json")
    run_id = started["run_id"]
    deadline = time.monotonic() + 30
    while ledger.get_run(run_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ledger.get_run(run_id) is not None, f"run {run_id} did not start within 30 s: see the splitter's log"
    # WHEN it is cancelled
    result = runner.invoke(cli.app, ["cancel", run_id], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    calls_at_cancel = chaos_requests(state)
    # THEN its remaining messages are acknowledged without calls: the queue drains quickly
    deadline = time.monotonic() + 60
    while not queue_empty(state) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert queue_empty(state), queue_attributes(state)
    final = ledger.progress(run_id)
    assert final.status is RunStatus.CANCELLED
    assert final.succeeded + final.failed < COMPANIES
    # AND the service got no calls beyond the batches in flight when it was cancelled, plus at most one
    # batch per concurrent forwarder admitted on a run status read up to 2 s before the cancel. The
    # bound is the deployed (laptop) concurrency's, not the declared 50 x 10 = 500, which would exceed
    # the whole run and so could never fail.
    concurrency = deployed_forwarder_concurrency(state)
    after_cancel_bound = 2 * concurrency * CREDIT_SCORES.batch_size
    assert calls_at_cancel + after_cancel_bound < COMPANIES, (
        f"a bound of {after_cancel_bound} calls after the cancel cannot fail in a run of {COMPANIES}: "
        "raise COMPANIES or lower the local forwarder concurrency"
    )
    assert chaos_requests(state) - calls_at_cancel <= after_cancel_bound
    assert chaos_requests(state) < COMPANIES
    # AND a second cancel says the run has already ended
    again = runner.invoke(cli.app, ["cancel", run_id], catch_exceptions=False)
    assert again.exit_code == cli.EXIT_FAILED and "already ended" in again.stderr


def test_retry_failed_finishes_the_failed_tasks(
    first_run: dict[str, Any], stack: LocalStack, state: LocalState, runner: CliRunner, ledger: Ledger
) -> None:
    # GIVEN the faults are off again
    stack.restart_service("scores", chaos=None)
    # WHEN the failures of the first run are retried
    started, final = cli_json(
        runner, "retry-failed", first_run["run_id"], "--wait", "--json", "--timeout", RUN_TIMEOUT_S
    )
    # THEN a new run over exactly those two tasks succeeds
    assert started["retry_of"] == first_run["run_id"] and started["failed"] == 2
    assert final["run_id"] == started["run_id"]
    assert (final["status"], final["expected"], final["succeeded"], final["failed"]) == ("SUCCEEDED", 2, 2, 0)
    assert ledger.require_run(final["run_id"]).source_run == first_run["run_id"]
    assert len(emails_of(state, final["run_id"])) == 1


def test_local_down_leaves_no_process_behind(stack: LocalStack, state: LocalState, runner: CliRunner) -> None:
    pids = dict(state.pids) | {name: h.pid for name, h in stack.handles.items()}
    workers = descendants(pids["ministack"])
    assert workers, "the emulator should have Lambda worker processes by now"
    ports = [int(url.rsplit(":", 1)[1]) for url in [state.endpoint_url, *state.services.values()]]
    assert all(port_open(p) for p in ports)
    # WHEN the stack is stopped with the CLI
    result = runner.invoke(cli.app, ["local", "down"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    # THEN every process it started, and every Lambda worker, is gone; the ports are closed
    assert not [p for p in [*pids.values(), *workers] if is_running(p)]
    assert not [p for p in ports if port_open(p)]
    assert not stack.ws.state_file.exists()
    # AND the CLI now says there is no stack
    status = runner.invoke(cli.app, ["status", "anything"], catch_exceptions=False)
    assert status.exit_code == cli.EXIT_NO_STACK and "microprocess local up" in status.stderr
