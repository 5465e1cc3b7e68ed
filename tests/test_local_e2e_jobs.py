"""End to end on ONE real local stack: two declared jobs on their two services at once, a run
over an items file, a missing manifest, and a signing-secret rotation in the middle of a run.

The stack runs every declared service: `scores` (bundled example, two roles) for credit-scores
(service reduce) and `reminders` (second example, one task endpoint) for invoice-reminders
(the platform's built-in reduce).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.ledger import Ledger, TaskState
from microprocess.local import (
    LocalStack,
    LocalState,
    UpOptions,
    aws_client,
    captured_emails,
    function_log_messages,
)
from microprocess.local.workspace import WORKDIR_ENV
from tests.declared import CREDIT_SCORES, INVOICE_REMINDERS
from tests.local_e2e_support import cli_json, invoices_file, module_stack, stack_ledger, stack_state

pytestmark = pytest.mark.e2e

COMPANIES = 200
INVOICES = 120
#: Enough that tasks are still left after the second rotation (70 tasks/s here while the
#: ledger wrote one record per call; about 3x that since a batch's records go in one call).
ROTATION_INVOICES = 4000
#: Enough that the service is stopped before the run ends (it is stopped once 30 tasks are done;
#: the pushes run at a few hundred per second here, so 300 could end within the poll and the stop).
OUTAGE_INVOICES = 1500
RUN_TIMEOUT_S = "180"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with module_stack("jobs", UpOptions(items=COMPANIES, seed=11)) as stack:
        yield stack


@pytest.fixture(scope="module")
def state(stack: LocalStack) -> LocalState:
    return stack_state(stack)


@pytest.fixture(scope="module")
def ledger(state: LocalState) -> Ledger:
    return stack_ledger(state)


@pytest.fixture(scope="module")
def workdir_env(stack: LocalStack) -> Iterator[None]:
    # The CLI finds this stack's local.json through the work folder, as a user's shell would.
    previous = os.environ.get(WORKDIR_ENV)
    os.environ[WORKDIR_ENV] = str(stack.ws.workdir)
    yield
    if previous is None:
        os.environ.pop(WORKDIR_ENV, None)
    else:
        os.environ[WORKDIR_ENV] = previous


def wait_until_done(ledger: Ledger, run_id: str, tasks: int, timeout_s: float = 60) -> None:
    """Wait until `tasks` of the run have an outcome (the run is under way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prog = ledger.progress(run_id) if ledger.get_run(run_id) else None
        if prog is not None and prog.succeeded + prog.failed >= tasks:
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id}: fewer than {tasks} tasks done after {timeout_s:g} s")


def assert_succeeded_in_full(ledger: Ledger, run_id: str, n: int, timeout_s: float = 180) -> None:
    """Wait for the run's end (through the CLI, as a user would); it SUCCEEDED with all n tasks, none failed."""
    (final,) = cli_json("status", run_id, "--json")
    deadline = time.monotonic() + timeout_s
    while final["status"] not in ("SUCCEEDED", "FAILED") and time.monotonic() < deadline:
        time.sleep(1)
        (final,) = cli_json("status", run_id, "--json")
    errors = sorted({str(t.error) for t in ledger.iter_failed(run_id)})
    assert (final["status"], final["expected"], final["succeeded"], final["failed"]) == ("SUCCEEDED", n, n, 0), (
        f"the failed tasks' errors: {errors[:5]}"
    )


def report_rows(state: LocalState, run_id: str, tmp_path: Path) -> list[dict[str, str]]:
    result = CliRunner().invoke(cli.app, ["report", run_id, "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    with (tmp_path / run_id / "report.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def emails_of(state: LocalState, run_id: str) -> list[dict[str, Any]]:
    return [m for m in captured_emails(state.endpoint_url) if run_id in (m.get("Subject") or "")]


@pytest.mark.usefixtures("workdir_env")
def test_two_jobs_run_at_once_on_their_two_services_each_exact(
    state: LocalState, ledger: Ledger, tmp_path: Path
) -> None:
    # GIVEN the two declared jobs, one over its declared table, one over a file of items
    items = invoices_file(tmp_path / "invoices.jsonl", INVOICES)
    # WHEN both run at the same time, each from its own `microprocess run --wait` (as two shells would)
    cli = [sys.executable, "-m", "microprocess.cli.commands"]
    waits = ["--wait", "--json", "--timeout", RUN_TIMEOUT_S]
    procs = {
        "credit-scores": subprocess.Popen([*cli, "run", "credit-scores", *waits], stdout=subprocess.PIPE, text=True),
        "invoice-reminders": subprocess.Popen(
            [*cli, "run", "invoice-reminders", "--items", str(items), "--param", "campaign=e2e", *waits],
            stdout=subprocess.PIPE,
            text=True,
        ),
    }
    results: dict[str, list[Any]] = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=float(RUN_TIMEOUT_S) + 60)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}: {out}"
        results[name] = [json.loads(line) for line in out.splitlines() if line.strip()]
    # THEN each SUCCEEDED with exact counts, one report row per task and one email to its recipients
    for job, expected in ((CREDIT_SCORES, COMPANIES), (INVOICE_REMINDERS, INVOICES)):
        _, final = results[job.name]
        assert (final["status"], final["expected"], final["succeeded"], final["failed"]) == (
            "SUCCEEDED",
            expected,
            expected,
            0,
        ), final
        rows = report_rows(state, final["run_id"], tmp_path)
        assert len(rows) == expected
        assert len({r[job.item_id_field] for r in rows}) == expected
        (email,) = emails_of(state, final["run_id"])
        assert email["To"] == list(job.recipients)
    # AND the reminders were pushed to the reminders service (its results), the scores to scores
    reminders = report_rows(state, results["invoice-reminders"][1]["run_id"], tmp_path)
    assert all(r["state"] == "SUCCEEDED" and r["reminded"] == "true" for r in reminders), reminders[0]
    assert {r["channel"] for r in reminders} == {"email"}
    # AND the run kept the params it was given
    reminders_run = results["invoice-reminders"][1]["run_id"]
    assert ledger.require_run(reminders_run).params == {"campaign": "e2e"}
    # AND the reminders service got the run's signed completion callback, kept once (at least once
    # delivered), with the outcome and the report's location
    deadline = time.monotonic() + 60
    done: dict[str, Any] | None = None
    while done is None and time.monotonic() < deadline:
        try:
            url = f"{state.services['reminders']}/runs/{reminders_run}/completion"
            with urllib.request.urlopen(url, timeout=5) as resp:
                done = json.loads(resp.read())
        except urllib.error.HTTPError:
            time.sleep(0.5)
    assert done is not None, "the completion callback never reached the reminders service"
    assert (done["status"], done["expected"], done["succeeded"], done["failed"]) == ("SUCCEEDED", INVOICES, INVOICES, 0)
    assert done["report_uri"] == results["invoice-reminders"][1]["report_uri"] and done["deliveries"] >= 1


def completion_of(state: LocalState, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The completion callback the reminders service kept for the run (waits for it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{state.services['reminders']}/runs/{run_id}/completion", timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError:
            time.sleep(0.5)
    raise AssertionError(f"the completion callback of run {run_id} never reached the reminders service")


@pytest.mark.usefixtures("workdir_env")
def test_a_run_whose_manifest_is_missing_ends_failed_with_the_reason(state: LocalState, ledger: Ledger) -> None:
    # GIVEN invoice-reminders' declared manifest, s3://invoice-manifests/unpaid.jsonl, which does not exist here
    started, final = cli_json("run", "invoice-reminders", "--wait", "--json", "--timeout", "120", code=cli.EXIT_FAILED)
    # THEN the run ends FAILED (not SPLITTING forever), and the reason names the source and the fix
    assert final["status"] == "FAILED" and final["expected"] == 0
    run_id = started["run_id"]
    error = ledger.require_run(run_id).error or ""
    assert "s3://invoice-manifests/unpaid.jsonl" in error and "Fix:" in error, error
    # AND it sends its notices like any ended run: one email to the job's recipients, saying why,
    # and one completion callback with the outcome (kept once by the service)
    done = completion_of(state, run_id)
    assert (done["status"], done["expected"]) == ("FAILED", 0) and done["deliveries"] == 1, done
    deadline = time.monotonic() + 30
    while not emails_of(state, run_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # a second email would come within the same finalize
    (email,) = emails_of(state, run_id)
    assert email["To"] == list(INVOICE_REMINDERS.recipients) and "FAILED" in email["Subject"]
    assert "invoice-manifests/unpaid.jsonl" in json.dumps(email), email


@pytest.mark.usefixtures("workdir_env")
def test_a_secret_rotation_in_the_middle_of_a_run_fails_no_task(
    stack: LocalStack, state: LocalState, ledger: Ledger, tmp_path: Path
) -> None:
    sm = aws_client("secretsmanager", state.endpoint_url)
    arn = json.loads(state.outputs["ServiceSecretArns"])["reminders"]
    old = sm.get_secret_value(SecretId=arn)["SecretString"]
    log = stack.ws.log("reminders")
    refused_before = log.read_text(errors="replace").count("refused POST")
    # GIVEN a run of invoice-reminders under way
    items = invoices_file(tmp_path / "rotation.jsonl", ROTATION_INVOICES, first=10_000)
    (started,) = cli_json("run", "invoice-reminders", "--items", str(items), "--json")
    run_id = started["run_id"]
    wait_until_done(ledger, run_id, 40)
    # WHEN the secret is rotated twice: first the service takes the new one and still accepts the
    # old one (current + previous), then the old one is dropped, so the forwarder's cached (old)
    # secret is refused with 401 and it must re-read the secret and sign again
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"current": "rotated-1", "previous": old}))
    stack.restart_service("reminders")
    time.sleep(2)
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"current": "rotated-2", "previous": "rotated-1"}))
    stack.restart_service("reminders")
    assert ledger.progress(run_id).succeeded < ROTATION_INVOICES, (
        "the run ended before the rotation: nothing was tested"
    )
    # THEN no task failed, and the run SUCCEEDED with every task counted once
    assert_succeeded_in_full(ledger, run_id, ROTATION_INVOICES)
    records = [t for s in range(ledger.require_run(run_id).shard_count) for t in ledger.iter_results(run_id, s)]
    assert len(records) == ROTATION_INVOICES and all(t.state is TaskState.SUCCEEDED for t in records)
    # AND the rotation was really exercised: the service refused the old signature at least once
    refused = log.read_text(errors="replace").count("refused POST") - refused_before
    assert refused >= 1, "the forwarder never met the rotated secret: the rotation did not happen mid-run"


@pytest.mark.usefixtures("workdir_env")
def test_a_service_down_longer_than_its_attempts_last_fails_no_task(
    stack: LocalStack, state: LocalState, ledger: Ledger, tmp_path: Path
) -> None:
    # invoice-reminders allows 3 attempts; their backoff (1-2 s, then 2-4 s) is over within 6 s
    assert INVOICE_REMINDERS.max_attempts == 3 and INVOICE_REMINDERS.unreachable_grace_s > 15
    since_ms = int(time.time() * 1000)
    # GIVEN a run of invoice-reminders under way
    items = invoices_file(tmp_path / "outage.jsonl", OUTAGE_INVOICES, first=20_000)
    (started,) = cli_json("run", "invoice-reminders", "--items", str(items), "--json")
    run_id = started["run_id"]
    wait_until_done(ledger, run_id, 30)
    # WHEN its service is down for 12 s (a slow deploy: its port refuses connections), mid-run
    stack.restart_service("reminders", down_s=12)
    at_outage = ledger.progress(run_id).succeeded
    assert at_outage < OUTAGE_INVOICES, f"the run ended before the outage ({at_outage}): nothing was tested"
    # THEN the run SUCCEEDED with no task failed
    assert_succeeded_in_full(ledger, run_id, OUTAGE_INVOICES)
    # AND the outage was really met: the forwarder found the service unreachable and re-sent tasks
    lam, logs = aws_client("lambda", state.endpoint_url), aws_client("logs", state.endpoint_url)
    forwarder = state.outputs["ForwarderFunctionName"]
    logged = function_log_messages(lam, logs, [forwarder], since_ms)
    assert any("unreachable for" in m and run_id in m for m in logged), f"no push of {run_id} met the outage"
