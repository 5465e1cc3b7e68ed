"""Finishing a stopped run: `retry-failed --include-not-attempted` retries the failures and the
tasks the run never attempted, read back from the pages it sent; `not_attempted.csv` names each
task's item; a run is shown with its retries and their combined outcome (status, runs, report);
the console's button goes through the same steer function. Through the real splitter, forwarder
and reducer on moto (the HTTP stand-in as the service)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.cli import deployment as cli_deployment
from microprocess.cli import steer
from microprocess.ledger import RunStatus
from microprocess.ledger.retries import combined_progress, retries_of
from microprocess.reduce import ReportLayout
from tests.functions_harness import Behaviour, Stack, job_with
from tests.test_reduce_forwarder import ENOUGH_TIME, reducer_forwarder
from tests.test_retry_failed import stack_deployment

N = 40


def companies(n: int = N) -> list[dict[str, Any]]:
    return [{"company_id": f"C{i:07d}"} for i in range(n)]


def stopped_run(stack: Stack, *, source: str = "inline") -> tuple[Any, Any, set[str]]:
    """A platform-reduce run of 40 companies stopped early: the service refused every item of the
    first batch (over the 5% tolerated), the other tasks were never attempted. Returns the job, its
    registry and the company ids pushed."""
    job, jobs = job_with(
        reduce="platform", reduce_part_path=None, reduce_finalize_path=None, tolerated_failure_pct=5.0, stop_early=True
    )
    for i in range(N):
        stack.service.behaviours[f"C{i:07d}"] = Behaviour(status=400)
    event: dict[str, Any] = {"job": job.name, "run_id": "r1"}
    if source == "inline":
        event["items"] = companies()
    else:  # a manifest: its pages are kept under splits/ and read back from there
        body = "\n".join(json.dumps(c) for c in companies()).encode()
        stack.s3.put_object(Bucket=stack.bucket, Key="manifests/r1.jsonl", Body=body)
        event["items_uri"] = f"s3://{stack.bucket}/manifests/r1.jsonl"
    stack.splitter(jobs=jobs, two_queues=True).handle(event, ENOUGH_TIME)
    stack.drive(stack.forwarder(jobs=jobs, two_queues=True).handle, stack.task_queue)
    stack.drive(reducer_forwarder(stack, jobs).handle, stack.reduce_queue)
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.FAILED and run.stopped_early_at
    pushed = {c["payload"]["item"]["company_id"] for c in stack.service.task_calls()}
    assert 0 < len(pushed) < N
    stack.service.behaviours.clear()
    stack.service.calls.clear()
    return job, jobs, pushed


def retry(stack: Stack, jobs: Any, run_id: str, **extra: Any) -> None:
    event = {"job": "credit-scores", "run_id": run_id, "retry_of": "r1", "source": "manual", **extra}
    stack.split(event, jobs=jobs, two_queues=True)
    stack.drive(stack.forwarder(jobs=jobs, two_queues=True).handle, stack.task_queue)
    stack.drive(reducer_forwarder(stack, jobs).handle, stack.reduce_queue)


@pytest.mark.parametrize("source", ["inline", "manifest"])
def test_a_retry_including_the_not_attempted_finishes_every_item_of_a_stopped_run(stack: Stack, source: str) -> None:
    # GIVEN a run stopped early: some items refused, the others never attempted
    _job, jobs, _pushed = stopped_run(stack, source=source)
    # WHEN the service is fixed and the run is retried with its tasks never attempted
    retry(stack, jobs, "r2", include_not_attempted=True)
    # THEN the retry pushed every item of the run exactly once: the refused ones and the others
    retried = sorted(c["payload"]["item"]["company_id"] for c in stack.service.task_calls())
    assert retried == sorted(c["company_id"] for c in companies())
    progress = stack.ledger.progress("r2")
    assert (progress.status, progress.expected, progress.succeeded) == (RunStatus.SUCCEEDED, N, N)
    # AND the run is linked to its retry, and the combined view has every item SUCCEEDED
    assert [link.run_id for link in retries_of(stack.ledger, "r1")] == ["r2"]
    combined = combined_progress(stack.ledger, "r1")
    assert (combined.items, combined.succeeded, combined.failed, combined.not_attempted) == (N, N, 0, 0)
    assert combined.runs == ["r1", "r2"]


def test_a_retry_of_the_failures_only_leaves_the_not_attempted_in_the_combined_view(stack: Stack) -> None:
    _job, jobs, pushed = stopped_run(stack)
    retry(stack, jobs, "r2")
    assert sorted(c["payload"]["item"]["company_id"] for c in stack.service.task_calls()) == sorted(pushed)
    combined = combined_progress(stack.ledger, "r1")
    assert (combined.succeeded, combined.failed, combined.not_attempted) == (len(pushed), 0, N - len(pushed))


def test_the_not_attempted_csv_names_each_tasks_item(stack: Stack) -> None:
    job, _jobs, pushed = stopped_run(stack)
    body = stack.s3.get_object(Bucket=stack.bucket, Key=ReportLayout(stack.bucket, job.name, "r1").not_attempted_csv)
    rows = list(csv.DictReader(io.StringIO(body["Body"].read().decode())))
    assert rows and all(r["company_id"] == f"C{int(r['task_id'].split('-')[1]):07d}" for r in rows)
    assert {r["company_id"] for r in rows} == {c["company_id"] for c in companies()} - pushed


def test_include_not_attempted_is_refused_without_retry_of(stack: Stack) -> None:
    from microprocess.pipeline.splitter import StartEventError, parse_start_event

    with pytest.raises(StartEventError, match="include_not_attempted"):
        parse_start_event({"job": "credit-scores", "include_not_attempted": True})


# ----------------------------------------------------------------------------- the CLI and the console


class SplitterLambda:
    """An asynchronous invoke of the splitter runs the real splitter, the forwarder and the reduce."""

    def __init__(self, st: Stack, jobs: Any) -> None:
        self.st, self.jobs = st, jobs
        self.events: list[dict[str, Any]] = []

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        event = json.loads(Payload)
        self.events.append(event)
        self.st.split(event, jobs=self.jobs, two_queues=True)
        self.st.drive(self.st.forwarder(jobs=self.jobs, two_queues=True).handle, self.st.task_queue)
        self.st.drive(reducer_forwarder(self.st, self.jobs).handle, self.st.reduce_queue)
        return {"StatusCode": 202}


@pytest.fixture
def stopped(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> tuple[SplitterLambda, set[str]]:
    job, jobs, pushed = stopped_run(stack)
    lam = SplitterLambda(stack, jobs)
    dep = stack_deployment(stack, lam, job.name)
    monkeypatch.setattr(cli_deployment, "connect", lambda target: dep)
    monkeypatch.setattr(steer, "declared_job", lambda name: job)
    return lam, pushed


def test_cli_retry_failed_include_not_attempted_then_status_and_report_combined(
    stack: Stack, stopped: tuple[SplitterLambda, set[str]], tmp_path: Path
) -> None:
    lam, pushed = stopped
    runner = CliRunner()
    # WHEN `retry-failed r1 --include-not-attempted --json` runs
    result = runner.invoke(cli.app, ["retry-failed", "r1", "--include-not-attempted", "--json"])
    assert result.exit_code == 0, result.output
    started = json.loads(result.stdout)
    assert (started["failed"], started["not_attempted"]) == (len(pushed), N - len(pushed))
    [event] = lam.events
    assert event["include_not_attempted"] is True and event["retry_of"] == "r1"
    # THEN `status r1 --combined --json` shows every item SUCCEEDED across the run and its retry
    status = runner.invoke(cli.app, ["status", "r1", "--combined", "--json"])
    combined = json.loads(status.stdout)
    assert (combined["items"], combined["succeeded"], combined["failed"]) == (N, N, 0)
    assert combined["runs"] == ["r1", started["run_id"]] and combined["retries"] == [started["run_id"]]
    # AND `status r1` names the retry; `runs` marks which run retries which
    table = runner.invoke(cli.app, ["status", "r1"]).stdout
    assert started["run_id"] in table and "combined" in table
    listed = runner.invoke(cli.app, ["runs"]).stdout
    assert "retry of r1" in listed and f"retried by {started['run_id']}" in listed
    # AND `report r1 --combined` writes one row per item, each SUCCEEDED (its latest outcome)
    report = runner.invoke(cli.app, ["report", "r1", "--combined", "--out", str(tmp_path)])
    assert report.exit_code == 0, report.output
    rows = list(csv.DictReader((tmp_path / "r1" / "combined.csv").open()))
    assert sorted(r["company_id"] for r in rows) == sorted(c["company_id"] for c in companies())
    assert {r["state"] for r in rows} == {"SUCCEEDED"}
    assert {r["run_id"] for r in rows} == {started["run_id"]}


def test_cli_retry_failed_without_the_flag_keeps_its_old_answer(
    stack: Stack, stopped: tuple[SplitterLambda, set[str]]
) -> None:
    lam, pushed = stopped
    result = CliRunner().invoke(cli.app, ["retry-failed", "r1", "--json"])
    started = json.loads(result.stdout)
    assert set(started) == {"run_id", "retry_of", "failed"} and started["failed"] == len(pushed)
    assert "include_not_attempted" not in lam.events[0]
