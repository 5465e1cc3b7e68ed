"""Run control end to end on ONE real local stack: pause longer than the queue's redelivery
window and resume to exact counts, scale a job mid-run, stop a hopeless run early, and find
any item of a run.

Every test drives the CLI (`cli_json`, as a user's shell would) against the job
`invoice-reminders` and its `reminders` service, which is started with its access log on, so
that every push the forwarder makes is one `POST /tasks/remind` line in the service's log: the
tests count pushes there, not in anything the platform itself reports.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from microprocess.control.pause import FORWARDER_CACHE_S, RunResumer
from microprocess.ledger import Ledger, Progress, RunStatus
from microprocess.local import LocalStack, LocalState, UpOptions
from microprocess.local.stack import LOCAL_VISIBILITY_TIMEOUT_S
from tests.declared import INVOICE_REMINDERS
from tests.local_e2e_support import cli_json, cli_run, invoices_file, module_stack, stack_ledger, stack_state

pytestmark = pytest.mark.e2e

JOB = INVOICE_REMINDERS
#: Pushes the reminders service logs (uvicorn's access log, one line per request).
PUSH_LINE = f'"POST {JOB.task_path} HTTP/1.1"'
#: Long enough that the run is still going when it is paused or scaled. The pause comes once the split
#: is done (every message accounted): the split runs ~3x faster than the pushes here, so a run of
#: 4,000 was half done when the pushes stopped (the forwarder serves its cached run for 3 s more);
#: 1,000 had ended before the pause in CI. 6,000 leaves a margin for a machine twice as fast.
PAUSE_INVOICES = 6000
SCALE_INVOICES = 2000
#: The controller's interval for `scale --adaptive` (the CLI's least).
ADAPTIVE_INTERVAL_S = 10
STOP_INVOICES = 600
#: The stopped run that `retry-failed --include-not-attempted` finishes (issue 26's figure).
FINISH_INVOICES = 2000
#: Positions of the stop-early run's not-overdue invoices, which the service refuses (a permanent 4xx):
#: one in four of its first 240, so that the run passes its 5 % with successes among its first tasks.
STOP_REFUSED = frozenset(range(0, 240, 4))
STOP_FIRST = 40_000
#: A paused message left in the queue would come back once per visibility timeout and be redriven
#: after max_attempts receives: the pause outlasts that (+ a margin), 20 s x 3 = 60 s here.
PAUSE_S = LOCAL_VISIBILITY_TIMEOUT_S * JOB.max_attempts + 2
RUN_TIMEOUT_S = 150.0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # The companies table is not used here: seed a token amount. The access log counts the pushes.
    # The queue holds a whole run: the pause and the scale come once the split is done (every
    # message accounted), so the split must not wait for the pushes (`LOCAL_MAX_QUEUE_DEPTH`).
    options = UpOptions(items=10, seed=3, access_log=True, max_queue_depth=20_000)
    with module_stack("control", options, workdir_env=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def state(stack: LocalStack) -> LocalState:
    return stack_state(stack)


@pytest.fixture(scope="module")
def ledger(state: LocalState) -> Ledger:
    return stack_ledger(state)


def pushes(stack: LocalStack) -> int:
    """Pushes the reminders service has received so far (its access log)."""
    return stack.ws.log("reminders").read_text(errors="replace").count(PUSH_LINE)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def progress(ledger: Ledger, run_id: str) -> Progress | None:
    return ledger.progress(run_id) if ledger.get_run(run_id) else None


def finished(ledger: Ledger, run_id: str) -> Progress:
    def done() -> Progress | None:
        prog = progress(ledger, run_id)
        return prog if prog and prog.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED) else None

    return wait_for(f"run {run_id} to finish", done, RUN_TIMEOUT_S, poll_s=0.5)


def started_run(ledger: Ledger, items: Path, *, succeeded_at_least: int) -> str:
    (started,) = cli_json("run", JOB.name, "--items", str(items), "--json")
    run_id = str(started["run_id"])
    wait_for(
        f"{succeeded_at_least} tasks of {run_id} done",
        # split done: every message of the run is accounted (the pause test counts the parked ones)
        lambda: (p := progress(ledger, run_id)) is not None and p.split_done and p.succeeded >= succeeded_at_least,
        60,
    )
    return run_id


def steady_pushes(stack: LocalStack, quiet_s: float, timeout_s: float = 30) -> int:
    """The push count once it has not moved for `quiet_s` (the batches in flight have finished)."""
    last, since = pushes(stack), time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = pushes(stack)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"the service still receives pushes {timeout_s:.0f} s after the pause")


def queue_depth(state: LocalState, url: str) -> int:
    attrs = state.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def job_queue_url(state: LocalState) -> str:
    return str(json.loads(state.outputs["JobQueueUrls"])[JOB.name])


def test_a_pause_longer_than_the_redelivery_window_pushes_nothing_and_resumes_to_exact_counts(
    stack: LocalStack, state: LocalState, ledger: Ledger, tmp_path: Path
) -> None:
    sqs = state.client("sqs")
    # GIVEN the job's queue as deployed: a message left in it would come back every visibility timeout
    visibility = int(
        sqs.get_queue_attributes(QueueUrl=job_queue_url(state), AttributeNames=["VisibilityTimeout"])["Attributes"][
            "VisibilityTimeout"
        ]
    )
    assert visibility * JOB.max_attempts < PAUSE_S, (visibility, JOB.max_attempts, PAUSE_S)
    # AND a run under way
    run_id = started_run(
        ledger, invoices_file(tmp_path / "pause.jsonl", PAUSE_INVOICES, first=1), succeeded_at_least=50
    )
    # WHEN it is paused mid-run
    (paused,) = cli_json("pause", run_id, "--json")
    paused_at = time.monotonic()
    assert paused["status"] == "PAUSED" and paused["paused_from"] in ("RUNNING", "SPLITTING")
    # THEN after the batches in flight (and the forwarder's run cache) the service gets no push at all
    time.sleep(FORWARDER_CACHE_S)
    frozen = steady_pushes(stack, quiet_s=3.0)
    at_pause = ledger.progress(run_id)
    assert at_pause.succeeded < PAUSE_INVOICES, f"the run ended before the pause ({at_pause.succeeded}): raise it"
    resumer = RunResumer(
        ledger=ledger,
        sqs=sqs,
        job_queue_url=lambda job: job_queue_url(state),
        reduce_queue_url=state.outputs["ReduceQueueUrl"],
        restart_splitter=lambda event: None,
    )
    # AND every message of the run left the queue into the ledger (parked), not waiting in the queue
    wait_for("the paused run's messages parked", lambda: queue_depth(state, job_queue_url(state)) == 0, 60)
    kept = resumer.parked_messages(run_id, ledger.require_run(run_id).shard_count)
    parked = len(kept)
    assert parked > 0
    assert parked == at_pause.expected - at_pause.succeeded - at_pause.failed
    # AND `status` shows PAUSED while it lasts
    (status,) = cli_json("status", run_id, "--json")
    assert status["status"] == "PAUSED"
    assert "resume with `microprocess resume" in cli_run("status", run_id)
    # WHEN the pause outlasts visibility x max_attempts
    time.sleep(max(0.0, PAUSE_S - (time.monotonic() - paused_at)))
    # (each task's receives before its parking, as kept; read now, after the whole pause)
    kept = resumer.parked_messages(run_id, ledger.require_run(run_id).shard_count)
    prior = {json.loads(m["body"])["task_id"]: int(m["prior_attempts"]) for m in kept}
    assert len(prior) == parked
    # THEN nothing was pushed or recorded during it, and nothing was dead-lettered
    during = ledger.progress(run_id)
    assert pushes(stack) == frozen
    assert (during.status, during.succeeded, during.failed) == (RunStatus.PAUSED, at_pause.succeeded, at_pause.failed)
    assert queue_depth(state, state.outputs["DeadLetterQueueUrl"]) == 0
    # WHEN it is resumed
    (resumed,) = cli_json("resume", run_id, "--json")
    assert resumed["status"] in ("RUNNING", "SPLITTING") and resumed["requeued"] == parked
    # THEN it ends SUCCEEDED with exact counts, no task failed, and the pause burned no attempt
    final = finished(ledger, run_id)
    assert (final.status, final.expected, final.succeeded, final.failed) == (
        RunStatus.SUCCEEDED,
        PAUSE_INVOICES,
        PAUSE_INVOICES,
        0,
    )
    tasks = cli_json("tasks", run_id, "--state", "SUCCEEDED", "--limit", "0", "--json")[0]
    assert len(tasks) == PAUSE_INVOICES
    # (a message the forwarder deferred before the pause, sent but not yet accounted by the splitter,
    # was received once without a push and may carry that receive in: at most 1 before its parking)
    assert max(prior.values()) <= 1, "a message was received again while paused"
    attempts = {t["task_id"]: t["attempts"] for t in tasks}
    assert {task: attempts[task] for task in prior} == {task: n + 1 for task, n in prior.items()}, (
        "a parked task's attempts are not its receives before the pause + its one push after it"
    )
    # AND zero messages reached the DLQ (the dead-letter function would have recorded them FAILED)
    assert queue_depth(state, state.outputs["DeadLetterQueueUrl"]) == 0
    assert pushes(stack) > frozen  # the resumed tasks were pushed


def test_scale_mid_run_puts_the_cap_in_force_and_the_run_completes(
    state: LocalState, ledger: Ledger, tmp_path: Path
) -> None:
    (before,) = cli_json("scale", JOB.name, "--json")
    deployed = before["concurrency"]
    assert deployed is not None and deployed > 2, before
    run_id = started_run(
        ledger, invoices_file(tmp_path / "scale.jsonl", SCALE_INVOICES, first=20_000), succeeded_at_least=30
    )
    try:
        # WHEN the job is scaled down mid-run
        (scaled,) = cli_json("scale", JOB.name, "--concurrency", "2", "--json")
        assert (scaled["previous"], scaled["concurrency"]) == (deployed, 2)
        # THEN the emulator's event source mapping of the job's queue holds the cap
        lam = state.client("lambda")
        arn = state.client("sqs").get_queue_attributes(QueueUrl=job_queue_url(state), AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        (mapping,) = lam.list_event_source_mappings(
            FunctionName=state.outputs["ForwarderFunctionName"], EventSourceArn=arn
        )["EventSourceMappings"]
        assert mapping["ScalingConfig"]["MaximumConcurrency"] == 2
        # AND `status` shows the cap in force while the run is going
        text = cli_run("status", run_id)
        assert f"2 (declared max {JOB.max_concurrency})" in text, text
        at_scale = ledger.progress(run_id).succeeded
        assert at_scale < SCALE_INVOICES, f"the run ended before the scale ({at_scale}): raise SCALE_INVOICES"
        # AND the run still completes, exactly
        final = finished(ledger, run_id)
        assert (final.status, final.expected, final.succeeded, final.failed) == (
            RunStatus.SUCCEEDED,
            SCALE_INVOICES,
            SCALE_INVOICES,
            0,
        )
    finally:
        cli_json("scale", JOB.name, "--concurrency", str(deployed), "--json")


def test_scale_adaptive_reads_the_forwarders_log_lines_locally(
    state: LocalState, ledger: Ledger, tmp_path: Path
) -> None:
    # GIVEN the job idle, at its deployed cap (the local stack computes no CloudWatch metrics: the
    # controller reads the forwarder's EMF log lines of the last interval instead)
    (before,) = cli_json("scale", JOB.name, "--json")
    deployed = before["concurrency"]
    try:
        # WHEN the controller ticks with no push in its interval (an earlier test's last ones are older)
        time.sleep(ADAPTIVE_INTERVAL_S + 1)
        (idle,) = cli_json(
            "scale", JOB.name, "--adaptive", "--ticks", "1", "--interval", str(ADAPTIVE_INTERVAL_S), "--json"
        )
        # THEN the job is idle: the cap goes to where the next run starts (slow start: a quarter
        # of the declared maximum, the controller's ceiling)
        assert (idle["action"], idle["concurrency"]) == ("decrease", max(2, JOB.max_concurrency // 4)), idle
        assert "idle" in idle["reason"]
        # WHEN it ticks during a run
        run_id = started_run(
            ledger, invoices_file(tmp_path / "adaptive.jsonl", SCALE_INVOICES, first=30_000), succeeded_at_least=30
        )
        (busy,) = cli_json(
            "scale", JOB.name, "--adaptive", "--ticks", "1", "--interval", str(ADAPTIVE_INTERVAL_S), "--json"
        )
        # THEN it saw the run's pushes: healthy (the service does not throttle), so the cap doubles
        assert (busy["action"], busy["concurrency"]) == ("increase", min(JOB.max_concurrency, 2 * idle["concurrency"]))
        assert "doubling" in busy["reason"], busy
        assert finished(ledger, run_id).status is RunStatus.SUCCEEDED
    finally:
        cli_json("scale", JOB.name, "--concurrency", str(deployed), "--json")


@pytest.fixture(scope="module")
def stopped_run(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run of which the service refuses 60 invoices early on (10 %): above the job's 5 % soon after its start."""
    folder = tmp_path_factory.mktemp("stop")
    items = invoices_file(folder / "stop.jsonl", STOP_INVOICES, first=STOP_FIRST, not_overdue=STOP_REFUSED)
    before = pushes(stack)
    started, final = cli_json(
        "run", JOB.name, "--items", str(items), "--wait", "--json", "--timeout", str(int(RUN_TIMEOUT_S)), code=1
    )
    return {"run_id": started["run_id"], "final": final, "pushes_before": before, "folder": folder}


def test_a_hopeless_run_stops_early_its_other_tasks_acknowledged_without_pushes(
    stack: LocalStack, state: LocalState, ledger: Ledger, stopped_run: dict[str, Any]
) -> None:
    run_id, final = stopped_run["run_id"], stopped_run["final"]
    # THEN the run ended FAILED before every task was attempted
    assert final["status"] == "FAILED" and final["expected"] == STOP_INVOICES, final
    done = final["succeeded"] + final["failed"]
    assert final["failed"] * 100 > JOB.tolerated_failure_pct * STOP_INVOICES
    assert done < STOP_INVOICES, final
    raw = ledger.client.get_item(
        TableName=ledger.table_name, Key={"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": "RUN"}}, ConsistentRead=True
    )["Item"]
    assert "stopped_early_at" in raw, "the run ended FAILED at its end, not stopped early"
    # AND its remaining messages were acknowledged without a push: the queue is empty and the
    # service got one push per recorded outcome (plus at most the batches in flight at the stop)
    wait_for("the stopped run's queue drained", lambda: queue_depth(state, job_queue_url(state)) == 0, 60)
    made = steady_pushes(stack, quiet_s=2.0) - stopped_run["pushes_before"]
    in_flight = JOB.max_concurrency * JOB.batch_size
    assert done <= made <= done + in_flight, (made, done)
    assert made < STOP_INVOICES
    # AND the tasks not attempted are listed, by the CLI and in the report
    (not_attempted,) = cli_json("tasks", run_id, "--state", "NOT_ATTEMPTED", "--limit", "0", "--json")
    assert len(not_attempted) == STOP_INVOICES - done
    out = stopped_run["folder"] / "report"
    cli_run("report", run_id, "--out", str(out))
    with (out / run_id / "not_attempted.csv").open(newline="") as f:
        listed = list(csv.reader(f))
    assert listed[0] == ["task_id", JOB.item_id_field]
    assert sorted(row[0] for row in listed[1:]) == sorted(t["task_id"] for t in not_attempted)
    # (each with its item's id, from the item index)
    assert {row[0]: row[1] for row in listed[1:]} == {t["task_id"]: t["item_id"] for t in not_attempted}


def test_tasks_finds_one_item_and_lists_the_failures(stopped_run: dict[str, Any]) -> None:
    run_id, final = stopped_run["run_id"], stopped_run["final"]
    # WHEN the failures are listed
    (failed,) = cli_json("tasks", run_id, "--state", "FAILED", "--limit", "0", "--json")
    # THEN they are exactly the refused (not overdue) invoices, each with its error, not retried to the
    # job's max attempts (a 4xx is pushed once; a receive before the splitter accounted the task's page
    # is deferred without a push but still counts: run 2 found the run's first task at attempts 2)
    assert len(failed) == final["failed"]
    refused = {f"INV-{STOP_FIRST + k:05d}" for k in STOP_REFUSED}
    assert {t["item_id"] for t in failed} <= refused
    assert all(1 <= t["attempts"] < JOB.max_attempts and "not overdue" in (t["error"] or "") for t in failed), failed
    # WHEN one refused item is looked up by its id
    item = failed[0]["item_id"]
    (found,) = cli_json("tasks", run_id, "--item", item, "--json")
    (detail,) = found
    # THEN the lookup gives its state, attempts and error, as the listing does
    assert (detail["item_id"], detail["state"], detail["attempts"]) == (item, "FAILED", failed[0]["attempts"])
    assert "not overdue" in detail["error"]
    # AND one succeeded item: its state, attempts and result
    (succeeded,) = cli_json("tasks", run_id, "--state", "SUCCEEDED", "--limit", "1", "--json")
    (ok,) = cli_json("tasks", run_id, "--item", succeeded[0]["item_id"], "--json")[0]
    assert ok["state"] == "SUCCEEDED" and ok["attempts"] == succeeded[0]["attempts"] >= 1
    assert ok["result"]["reminded"] is True and ok["result"]["invoice_id"] == ok["item_id"]


#: Stopped runs started at once for the report check (ARCHITECTURE invariant 10).
STOPS = 5


def test_every_stopped_run_reports_each_task_once_done_or_not_attempted(
    stack: LocalStack, ledger: Ledger, tmp_path: Path
) -> None:
    # GIVEN 5 runs started at once, each refused early on above the job's 5 % (so each stops while
    # batches of its own and of the others are in flight)
    run_ids = []
    for n in range(STOPS):
        first = STOP_FIRST + 1_000 * (n + 1)
        items = invoices_file(tmp_path / f"stop-{n}.jsonl", STOP_INVOICES, first=first, not_overdue=STOP_REFUSED)
        (started,) = cli_json("run", JOB.name, "--items", str(items), "--json")
        run_ids.append(str(started["run_id"]))
    for run_id in run_ids:
        final = finished(ledger, run_id)
        run = ledger.require_run(run_id)
        assert final.status is RunStatus.FAILED and (run.error or "").startswith("stopped early"), run.error
        # THEN its report has one row per task the ledger recorded, the others are listed not
        # attempted, no task is in both: report rows + not-attempted rows = expected, exactly
        cli_run("report", run_id, "--out", str(tmp_path / "reports"))
        folder = tmp_path / "reports" / run_id
        with (folder / "report.csv").open(newline="") as f:
            reported = [row["task_id"] for row in csv.DictReader(f)]
        with (folder / "not_attempted.csv").open(newline="") as f:
            listed = [row["task_id"] for row in csv.DictReader(f)]
        assert len(set(reported)) == len(reported) and not set(reported) & set(listed)
        assert len(reported) + len(listed) == run.expected == STOP_INVOICES, (run_id, len(reported), len(listed))
        recorded = {t.task_id for s in range(run.shard_count) for t in ledger.iter_results(run_id, s)}
        missing = recorded - set(reported)
        assert not missing, f"run {run_id}: {len(missing)} recorded tasks are not in its report: {sorted(missing)[:5]}"


def test_a_stopped_run_finished_with_retry_failed_include_not_attempted_has_every_item_succeeded(
    stack: LocalStack, state: LocalState, ledger: Ledger, tmp_path: Path
) -> None:
    # GIVEN a run of 2,000 invoices stopped by the operator part way (paused first, so that it
    # cannot end on its own before the stop: its kept messages are then never pushed)
    items = invoices_file(tmp_path / "finish.jsonl", FINISH_INVOICES, first=60_000)
    run_id = started_run(ledger, items, succeeded_at_least=100)
    cli_json("pause", run_id, "--json")
    (stopped,) = cli_json("stop", run_id, "--json")
    first = finished(ledger, run_id)
    done = first.succeeded + first.failed
    assert first.status is RunStatus.FAILED and 0 < done < FINISH_INVOICES, (stopped, first)
    # WHEN it is retried with its failures and its tasks never attempted
    started, final = cli_json(
        "retry-failed", run_id, "--include-not-attempted", "--wait", "--json", "--timeout", str(int(RUN_TIMEOUT_S))
    )
    # THEN the retry ran exactly the tasks the first run did not finish, and SUCCEEDED
    assert started["retry_of"] == run_id and started["failed"] + started["not_attempted"] == FINISH_INVOICES - (
        first.succeeded
    )
    assert (final["status"], final["expected"], final["failed"]) == ("SUCCEEDED", FINISH_INVOICES - first.succeeded, 0)
    # AND the combined view has every one of the 2,000 items SUCCEEDED
    (combined,) = cli_json("status", run_id, "--combined", "--json")
    assert (combined["items"], combined["succeeded"], combined["failed"], combined["not_attempted"]) == (
        FINISH_INVOICES,
        FINISH_INVOICES,
        0,
        0,
    )
    assert combined["runs"] == [run_id, started["run_id"]]
    assert started["run_id"] in cli_run("runs", "--job", JOB.name)
    # AND the combined report has one row per invoice, each SUCCEEDED
    out = tmp_path / "report"
    cli_run("report", run_id, "--combined", "--out", str(out))
    with (out / run_id / "combined.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r[JOB.item_id_field] for r in rows) == [f"INV-{i:05d}" for i in range(60_000, 62_000)]
    assert {r["state"] for r in rows} == {"SUCCEEDED"}
