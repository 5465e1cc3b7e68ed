"""The `microprocess` CLI against in-process AWS (moto): every command, and the bad inputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.cli import deployment as cli_deployment
from microprocess.cli.progress import RateMeter
from microprocess.ledger import CURSOR_DONE, Ledger, RunStatus, TaskOutcome, TaskState
from microprocess.local.state import LocalState, write_state
from microprocess.local.workspace import WORKDIR_ENV
from microprocess.pipeline.envelope import shard_of
from tests.declared import CREDIT_SCORES

JOB = CREDIT_SCORES
REGION = "us-east-1"
RUN_ID = re.compile(r"^credit-scores-\d{8}T\d{6}Z-[0-9a-f]{4}$")


class FakeLambda:
    """Records invocations; `on_invoke` plays the splitter (moto would need Docker to run it)."""

    def __init__(self) -> None:
        self.invocations: list[dict[str, Any]] = []
        self.on_invoke: Any = None
        self.status_code = 202

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        payload = json.loads(kwargs["Payload"])
        self.invocations.append({**kwargs, "Payload": payload})
        if self.on_invoke:
            self.on_invoke(payload)
        return {"StatusCode": self.status_code}


@pytest.fixture
def fake_lambda() -> FakeLambda:
    return FakeLambda()


@pytest.fixture
def deployment(ddb: Any, ledger_table: str, fake_lambda: FakeLambda, monkeypatch: pytest.MonkeyPatch) -> cli.Deployment:
    sqs = boto3.client("sqs", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="reports")
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    queue = sqs.create_queue(QueueName="tasks")["QueueUrl"]
    clients = {"dynamodb": ddb, "sqs": sqs, "s3": s3, "lambda": fake_lambda}
    dep = cli.Deployment(
        name="test",
        outputs={
            "LedgerTable": ledger_table,
            "SplitterFunctionName": "splitter-fn",
            "JobQueueUrls": json.dumps({JOB.name: queue}),
            "DeadLetterQueueUrl": dlq,
            "ReportsBucket": "reports",
        },
        client=lambda service: clients[service],
    )
    monkeypatch.setattr(cli_deployment, "connect", lambda target: dep)  # commands connect through it
    return dep


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def outcome(i: int, state: TaskState = TaskState.SUCCEEDED) -> TaskOutcome:
    task_id = f"0-{i:09d}"
    return TaskOutcome(
        task_id=task_id,
        shard=shard_of(task_id, JOB.shard_count),
        state=state,
        attempts=1 if state is TaskState.SUCCEEDED else JOB.max_attempts,
        item_id=f"C{i:07d}",
        result={"score": 700} if state is TaskState.SUCCEEDED else None,
        error="HTTP 400: bad company" if state is TaskState.FAILED else None,
        item={"company_id": f"C{i:07d}"} if state is TaskState.FAILED else None,
    )


def play_run(
    ledger: Ledger, run_id: str, *, ok: int = 3, failed: int = 0, finish: bool = True, report_uri: str | None = None
) -> None:
    """Drive a run through the ledger the way the splitter, forwarder and reduce do."""
    ledger.create_run(run_id, JOB, segments=1)
    ledger.account_page(run_id, segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=ok + failed)
    ledger.finish_split(run_id)
    if not finish:
        return
    outs = [outcome(i) for i in range(ok)] + [outcome(ok + i, TaskState.FAILED) for i in range(failed)]
    assert ledger.record_outcomes(run_id, JOB.counter_count, outs).claimed_reduce
    ledger.finish_run(
        run_id,
        tolerated_failure_pct=JOB.tolerated_failure_pct,
        report_uri=report_uri or f"s3://reports/reports/{JOB.name}/{run_id}/",
    )


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(cli.app, list(args), catch_exceptions=False)


# ----------------------------------------------------------------------------- run


def test_run_invokes_the_splitter_asynchronously_with_a_fresh_run_id(
    runner: CliRunner, deployment: cli.Deployment, fake_lambda: FakeLambda
) -> None:
    # WHEN a run is started with --json
    result = invoke(runner, "run", "credit-scores", "--json")
    # THEN it prints the run id, which has the manual-start shape
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout.strip())["run_id"]
    assert RUN_ID.match(run_id)
    # AND the splitter was invoked asynchronously with the schedule's payload shape
    (call,) = fake_lambda.invocations
    assert call["FunctionName"] == "splitter-fn" and call["InvocationType"] == "Event"
    assert call["Payload"] == {"job": "credit-scores", "run_id": run_id, "source": "manual"}


def test_run_wait_follows_the_run_to_its_end(
    runner: CliRunner, deployment: cli.Deployment, fake_lambda: FakeLambda, ledger: Ledger
) -> None:
    fake_lambda.on_invoke = lambda p: play_run(ledger, p["run_id"], ok=5)
    result = invoke(runner, "run", "credit-scores", "--wait", "--json", "--timeout", "30")
    assert result.exit_code == 0, result.output
    first, final = (json.loads(line) for line in result.stdout.strip().splitlines())
    assert final["run_id"] == first["run_id"]
    assert final["status"] == "SUCCEEDED" and final["succeeded"] == 5 and final["pending"] == 0


def test_run_wait_exits_non_zero_when_the_run_fails(
    runner: CliRunner, deployment: cli.Deployment, fake_lambda: FakeLambda, ledger: Ledger
) -> None:
    # GIVEN a run whose failures exceed the tolerated 1%
    fake_lambda.on_invoke = lambda p: play_run(ledger, p["run_id"], ok=3, failed=2)
    result = invoke(runner, "run", "credit-scores", "--wait", "--json")
    assert result.exit_code == cli.EXIT_FAILED
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["status"] == "FAILED" and final["failed"] == 2


def test_run_wait_times_out_with_its_own_exit_code(
    runner: CliRunner, deployment: cli.Deployment, fake_lambda: FakeLambda, ledger: Ledger
) -> None:
    fake_lambda.on_invoke = lambda p: play_run(ledger, p["run_id"], finish=False)
    result = invoke(runner, "run", "credit-scores", "--wait", "--timeout", "1")
    assert result.exit_code == cli.EXIT_TIMEOUT
    assert "still RUNNING" in result.stderr and "microprocess status" in result.stderr


def test_run_of_an_unknown_job_lists_the_declared_jobs(
    runner: CliRunner, deployment: cli.Deployment, fake_lambda: FakeLambda
) -> None:
    result = invoke(runner, "run", "credit-score")
    assert result.exit_code == cli.EXIT_USAGE
    assert "unknown job 'credit-score'" in result.stderr and "credit-scores" in result.stderr
    assert fake_lambda.invocations == []


def test_a_refused_start_is_reported(runner: CliRunner, deployment: cli.Deployment, fake_lambda: FakeLambda) -> None:
    fake_lambda.status_code = 500
    result = invoke(runner, "run", "credit-scores")
    assert result.exit_code == cli.EXIT_FAILED and "did not accept" in result.stderr


# ----------------------------------------------------------------------------- status, runs


def test_status_json_has_exactly_the_documented_keys(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger
) -> None:
    play_run(ledger, "r-1", ok=4)
    result = invoke(runner, "status", "r-1", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    # the keys the README's CLI table promises, in its order (not the CLI's own list)
    assert list(data) == [
        "run_id",
        "job",
        "status",
        "expected",
        "succeeded",
        "failed",
        "pending",
        "split_done",
        "started_at",
        "finished_at",
        "report_uri",
    ]
    expected = ledger.progress("r-1").as_dict()
    expected.pop("error")
    assert data == expected


def test_the_readme_documents_the_same_status_keys() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    keys = "run_id, job, status, expected, succeeded, failed, pending, split_done, started_at, finished_at, report_uri"
    # The CLI table (generated from the command's help) and the prose both name the keys, literally.
    [row] = [line for line in readme.splitlines() if line.startswith("| `microprocess status RUN")]
    assert keys in row, row
    assert keys in " ".join(readme.replace("`", "").split()), "the README's status --json paragraph lost the keys"


def test_status_table_shows_the_run(runner: CliRunner, deployment: cli.Deployment, ledger: Ledger) -> None:
    play_run(ledger, "r-1", ok=2, finish=False)
    result = invoke(runner, "status", "r-1")
    assert result.exit_code == 0
    assert "RUNNING" in result.stdout and "pending" in result.stdout


def test_status_of_an_unknown_run_says_so(runner: CliRunner, deployment: cli.Deployment) -> None:
    result = invoke(runner, "status", "no-such-run")
    assert result.exit_code == cli.EXIT_FAILED
    assert "unknown run" in result.stderr and "no-such-run" in result.stderr


def test_runs_lists_every_job_newest_first_and_agrees_with_the_ledger(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger
) -> None:
    play_run(ledger, "r-old", ok=2)
    play_run(ledger, "r-new", ok=1, finish=False)
    result = invoke(runner, "runs", "--json")
    assert result.exit_code == 0
    listed = json.loads(result.stdout)
    assert [r["run_id"] for r in listed] == ["r-new", "r-old"]
    for r in listed:
        truth = ledger.progress(r["run_id"]).as_dict()
        truth.pop("error")
        assert r == truth
    table = invoke(runner, "runs", "--job", "credit-scores")
    assert table.exit_code == 0 and "r-new" in table.stdout and "SUCCEEDED" in table.stdout


def test_runs_never_wraps_a_long_run_id_at_80_columns(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger
) -> None:
    # GIVEN a run id as manual starts make them (job, time, random suffix)
    run_id = "credit-scores-20261201T054647Z-3e52"
    play_run(ledger, run_id, ok=2)
    # WHEN runs prints its table on an 80-column terminal
    result = runner.invoke(cli.app, ["runs"], env={"COLUMNS": "80"})
    # THEN the run id stands whole on its row, with its status
    row = next(line for line in result.stdout.splitlines() if run_id in line)
    assert "SUCCEEDED" in row


def test_runs_of_an_unknown_job_lists_the_declared_jobs(runner: CliRunner, deployment: cli.Deployment) -> None:
    result = invoke(runner, "runs", "--job", "nope")
    assert result.exit_code == cli.EXIT_USAGE and "declared jobs" in result.stderr


def test_runs_without_runs_says_so(runner: CliRunner, deployment: cli.Deployment) -> None:
    result = invoke(runner, "runs")
    assert result.exit_code == 0 and "no runs" in result.stdout


# ----------------------------------------------------------------------------- cancel, retry


def test_cancel_stops_a_running_run_once(runner: CliRunner, deployment: cli.Deployment, ledger: Ledger) -> None:
    play_run(ledger, "r-1", ok=3, finish=False)
    result = invoke(runner, "cancel", "r-1")
    assert result.exit_code == 0 and "cancelled" in result.stdout
    assert ledger.require_run("r-1").status is RunStatus.CANCELLED
    # a second cancel (or a cancel of a finished run) is refused with the status
    again = invoke(runner, "cancel", "r-1")
    assert again.exit_code == cli.EXIT_FAILED and "already ended (CANCELLED)" in again.stderr


def test_cancel_that_loses_the_race_to_the_reduce_says_it_is_too_late(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger
) -> None:
    # GIVEN a run whose last task just claimed the reduce
    play_run(ledger, "r-1", ok=2, finish=False)
    assert ledger.record_outcomes("r-1", JOB.counter_count, [outcome(0), outcome(1)]).claimed_reduce
    # WHEN it is cancelled, THEN the message says it is reducing (not that it "ended")
    result = invoke(runner, "cancel", "r-1")
    assert result.exit_code == cli.EXIT_FAILED and "already reducing" in result.stderr and "ended" not in result.stderr


def test_cancel_of_an_unknown_run_says_so(runner: CliRunner, deployment: cli.Deployment) -> None:
    result = invoke(runner, "cancel", "ghost")
    assert result.exit_code == cli.EXIT_FAILED and "unknown run" in result.stderr


def test_retry_failed_starts_a_run_over_the_failures(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger, fake_lambda: FakeLambda
) -> None:
    play_run(ledger, "r-1", ok=200, failed=1)  # 0.5%: tolerated, so the run SUCCEEDED
    result = invoke(runner, "retry-failed", "r-1", "--json")
    assert result.exit_code == 0, result.output
    started = json.loads(result.stdout)
    assert started["retry_of"] == "r-1" and started["failed"] == 1 and RUN_ID.match(started["run_id"])
    (call,) = fake_lambda.invocations
    assert call["InvocationType"] == "Event"
    assert call["Payload"] == {
        "job": "credit-scores",
        "run_id": started["run_id"],
        "retry_of": "r-1",
        "source": "manual",
    }


def test_retry_failed_refuses_a_run_without_failures_or_still_running(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger, fake_lambda: FakeLambda
) -> None:
    play_run(ledger, "r-clean", ok=2)
    clean = invoke(runner, "retry-failed", "r-clean")
    assert clean.exit_code == 0 and "nothing to retry" in clean.stdout
    play_run(ledger, "r-busy", ok=2, finish=False)
    busy = invoke(runner, "retry-failed", "r-busy")
    assert busy.exit_code == cli.EXIT_FAILED and "still RUNNING" in busy.stderr
    missing = invoke(runner, "retry-failed", "r-missing")
    assert missing.exit_code == cli.EXIT_FAILED and "unknown run" in missing.stderr
    assert fake_lambda.invocations == []


# ----------------------------------------------------------------------------- report


def test_report_downloads_the_report_files_and_the_parts_only_when_asked(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger, tmp_path: Path
) -> None:
    s3 = deployment.client("s3")
    prefix = "reports/credit-scores/r-1/"
    for key, body in {"report.csv": "company_id,score\nC1,700\n", "summary.json": "{}", "parts/p-000.csv": "x"}.items():
        s3.put_object(Bucket="reports", Key=prefix + key, Body=body.encode())
    s3.put_object(Bucket="reports", Key="reports/credit-scores/r-10/report.csv", Body=b"other run")
    play_run(ledger, "r-1", ok=1, report_uri=f"s3://reports/{prefix}")
    result = invoke(runner, "report", "r-1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "r-1"

    def files() -> list[str]:
        return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())

    assert files() == ["report.csv", "summary.json"] and "parts/" not in result.stdout
    assert cli.count_report_rows(run_dir / "report.csv") == 1
    with_parts = invoke(runner, "report", "r-1", "--out", str(tmp_path), "--parts")
    assert with_parts.exit_code == 0 and files() == ["parts/p-000.csv", "report.csv", "summary.json"]


def test_report_uri_naming_one_file_downloads_its_folder(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger, tmp_path: Path
) -> None:
    s3 = deployment.client("s3")
    for key in ("report.csv", "report.html"):
        s3.put_object(Bucket="reports", Key=f"reports/credit-scores/r-1/{key}", Body=b"a\n")
    play_run(ledger, "r-1", ok=1, report_uri="s3://reports/reports/credit-scores/r-1/report.csv")
    result = invoke(runner, "report", "r-1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "r-1").iterdir()) == ["report.csv", "report.html"]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://someone-elses-bucket/reports/credit-scores/r-1/",  # another bucket
        "s3://reports/claims/credit-scores/r-1/",  # the platform bucket, another prefix
        "s3://reports/reports/credit-scores/r-10/",  # another run's report
        "s3://reports/reports/invoice-reminders/r-1/",  # another job's
    ],
)
def test_a_report_uri_outside_the_runs_report_folder_is_not_downloaded(
    runner: CliRunner, deployment: cli.Deployment, ledger: Ledger, tmp_path: Path, uri: str
) -> None:
    # GIVEN a run whose service's finalize answer named a report_uri outside the run's own folder
    s3 = deployment.client("s3")
    s3.put_object(Bucket="reports", Key="claims/credit-scores/r-1/secret.json", Body=b"{}")
    s3.put_object(Bucket="reports", Key="reports/credit-scores/r-10/report.csv", Body=b"other run")
    play_run(ledger, "r-1", ok=1, report_uri=uri)
    # WHEN its report is asked for
    result = invoke(runner, "report", "r-1", "--out", str(tmp_path))
    # THEN nothing is downloaded, and the error names the run's own report folder
    assert result.exit_code == cli.EXIT_FAILED, result.output
    assert "outside the platform's report folder" in result.stderr
    assert "s3://reports/reports/credit-scores/r-1/" in result.stderr
    assert not (tmp_path / "r-1").exists()


def test_report_of_an_unfinished_run_says_so(runner: CliRunner, deployment: cli.Deployment, ledger: Ledger) -> None:
    play_run(ledger, "r-1", finish=False)
    result = invoke(runner, "report", "r-1")
    assert result.exit_code == cli.EXIT_FAILED and "no report yet" in result.stderr


# ----------------------------------------------------------------------------- no stack


@pytest.fixture
def empty_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "work"))
    return tmp_path / "work"


@pytest.mark.parametrize(
    "args", [["run", "credit-scores"], ["status", "r-1"], ["runs"], ["cancel", "r-1"], ["report", "r-1"]]
)
def test_without_a_local_stack_every_command_says_to_start_one(
    runner: CliRunner, empty_workdir: Path, args: list[str]
) -> None:
    result = invoke(runner, *args)
    assert result.exit_code == cli.EXIT_NO_STACK
    assert "microprocess local up" in result.stderr


def test_a_stale_local_json_is_not_a_running_stack(runner: CliRunner, empty_workdir: Path) -> None:
    # GIVEN a local.json whose emulator process has exited
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_state(
        empty_workdir / "local.json",
        LocalState(endpoint_url="http://127.0.0.1:9", pids={"ministack": dead.pid}, outputs={"LedgerTable": "t"}),
    )
    result = invoke(runner, "status", "r-1")
    assert result.exit_code == cli.EXIT_NO_STACK
    assert "not running any more" in result.stderr and "microprocess local up" in result.stderr
    # AND `local down` clears it without touching any process
    down = invoke(runner, "local", "down")
    assert down.exit_code == 0 and not (empty_workdir / "local.json").exists()


def test_local_down_and_status_without_a_stack(runner: CliRunner, empty_workdir: Path) -> None:
    down = invoke(runner, "local", "down")
    assert down.exit_code == 0 and "no local stack is running" in down.stdout
    status = invoke(runner, "local", "status")
    assert status.exit_code == cli.EXIT_NO_STACK and "microprocess local up" in status.stderr


def test_local_up_refuses_a_missing_chaos_file(runner: CliRunner, empty_workdir: Path) -> None:
    result = invoke(runner, "local", "up", "--chaos", str(empty_workdir / "missing.json"), "--detach")
    assert result.exit_code == cli.EXIT_USAGE
    assert not (empty_workdir / "local.json").exists()


def test_aws_target_without_credentials_says_so(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = invoke(runner, "status", "r-1", "--target", "aws")
    assert result.exit_code == cli.EXIT_NO_STACK and "no AWS credentials" in result.stderr


def test_aws_target_reads_the_cloud_stack_outputs(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cfn = boto3.client("cloudformation", region_name=REGION)
    template = {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"LedgerTable": {"Value": "ledger-x"}, "SplitterFunctionName": {"Value": "split-x"}},
    }
    cfn.create_stack(StackName=cli.CLOUD_STACK, TemplateBody=json.dumps(template))
    dep = cli.connect(cli.Target.aws)
    assert dep.outputs == {"LedgerTable": "ledger-x", "SplitterFunctionName": "split-x"}


def test_aws_target_without_the_stack_says_to_deploy_it(runner: CliRunner, aws: None) -> None:
    result = invoke(runner, "status", "r-1", "--target", "aws")
    assert result.exit_code == cli.EXIT_NO_STACK and "not deployed" in result.stderr


# ----------------------------------------------------------------------------- progress


def test_rate_meter_reports_completions_per_second_over_its_window() -> None:
    meter = RateMeter(window_s=5)
    assert meter.add(0.0, 0) is None
    assert meter.add(1.0, 100) == pytest.approx(100)
    assert meter.add(2.0, 300) == pytest.approx(150)
    meter.add(10.0, 1100)
    assert meter.add(11.0, 1200) == pytest.approx(100)  # old samples left the window


def test_run_with_items_uploads_a_manifest_and_names_it_in_the_start(
    deployment: cli.Deployment, fake_lambda: FakeLambda, runner: CliRunner, tmp_path: Path
) -> None:
    # GIVEN a local JSONL file of items
    items = tmp_path / "invoices.jsonl"
    items.write_text('{"invoice_id": "I-1"}\n{"invoice_id": "I-2"}\n')
    # WHEN a run is started with --items and two --param
    result = invoke(
        runner, "run", JOB.name, "--items", str(items), "--param", "region=eu", "--param", "dry=1", "--json"
    )
    # THEN the file is in the platform bucket under manifests/, and the start event names it and the params
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.output.splitlines()[-1])["run_id"]
    start = fake_lambda.invocations[-1]["Payload"]
    assert start["items_uri"] == f"s3://reports/manifests/{run_id}.jsonl" and start["items_format"] == "jsonl"
    assert start["params"] == {"region": "eu", "dry": "1"}
    body = deployment.client("s3").get_object(Bucket="reports", Key=f"manifests/{run_id}.jsonl")["Body"].read()
    assert body == items.read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "novalue"], "must be key=value"),
        (["--source-uri", "http://x/y.jsonl"], "must be s3://bucket/key"),
        (["--source-uri", "s3://bucket/items.txt"], "name a .jsonl"),
    ],
)
def test_run_refuses_bad_inputs_with_the_fix(
    deployment: cli.Deployment, fake_lambda: FakeLambda, runner: CliRunner, args: list[str], message: str
) -> None:
    result = invoke(runner, "run", JOB.name, *args)
    assert result.exit_code == cli.EXIT_USAGE and message in result.output and not fake_lambda.invocations


def test_run_with_source_uri_reads_that_manifest(
    deployment: cli.Deployment, fake_lambda: FakeLambda, runner: CliRunner
) -> None:
    # GIVEN a manifest under the platform's manifests/ prefix, which every splitter may read
    result = invoke(runner, "run", JOB.name, "--source-uri", "s3://reports/manifests/daily/unpaid.csv")
    assert result.exit_code == 0, result.output
    start = fake_lambda.invocations[-1]["Payload"]
    assert start["source_uri"] == "s3://reports/manifests/daily/unpaid.csv" and start["items_format"] == "csv"


def test_run_refuses_a_source_uri_its_splitter_may_not_read_before_the_run_starts(
    deployment: cli.Deployment, fake_lambda: FakeLambda, runner: CliRunner
) -> None:
    # GIVEN a manifest in a bucket the job's splitter has no permission on (credit-scores reads a table)
    result = invoke(runner, "run", JOB.name, "--source-uri", "s3://team-bucket/daily/unpaid.csv")
    # THEN nothing starts (no stuck run), and the message names what the job may read and the fix
    assert result.exit_code == cli.EXIT_USAGE and not fake_lambda.invocations
    assert "outside what the job 'credit-scores' may read" in result.output
    assert "s3://reports/manifests/*" in result.output and "--items FILE" in result.output
