"""Splitter, forwarder, dead-letter handler and sweeper over moto and a real HTTP stand-in."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from microprocess.chaos.faults import FaultConfig, FaultInjector, InjectedCrash
from microprocess.declarations import UnknownJobError
from microprocess.ledger import CURSOR_DONE, RunStatus, TaskState
from microprocess.pipeline.attempts import PRIOR_ATTEMPTS_ATTRIBUTE
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind, shard_of
from microprocess.pipeline.forwarder import REASON_ATTRIBUTE
from microprocess.pipeline.resend import backoff_seconds
from microprocess.pipeline.start import StartEventError, parse_start_event, scheduled_run_id
from microprocess.pipeline.sweeper import Sweeper
from tests.functions_harness import (
    JOB,
    REGISTRY,
    Behaviour,
    Stack,
    job_with,
    load_event,
    seed_companies,
    sqs_record,
)

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms


def start(st: Stack, items: list[Any], run_id: str = "r1", **kw: Any) -> dict[str, Any]:
    return st.splitter(**kw).handle({"job": JOB.name, "run_id": run_id, "items": items}, ENOUGH_TIME)


def companies(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"company_id": f"C{i:07d}"} for i in range(offset, offset + n)]


def task_records(st: Stack, run_id: str) -> list[Any]:
    return [t for k in range(JOB.shard_count) for t in st.ledger.iter_results(run_id, k)]


def envelope_for(run_id: str, task_id: str, item: Any = None, **kw: Any) -> str:
    shard = shard_of(task_id, JOB.shard_count)
    return TaskEnvelope(job=JOB.name, run_id=run_id, task_id=task_id, shard=shard, item=item, **kw).to_json()


def dlq_messages(st: Stack) -> list[dict[str, Any]]:
    return st.receive(st.dlq)


# ------------------------------------------------------------------ splitter


def test_scheduled_event_derives_the_run_id_and_a_doubled_delivery_starts_one_run(stack: Stack) -> None:
    # GIVEN 30 companies and the scheduled event the EventBridge rule sends
    seed_companies(stack.ddb, stack.companies, 30)
    event = load_event("scheduled_event.json")
    # WHEN it is delivered twice
    first = stack.split(event)
    second = stack.split(event)
    # THEN one run, named after the job and the event time, with 30 tasks enqueued once
    assert first["run_id"] == second["run_id"] == "credit-scores-20261201T020000Z"
    assert first["expected"] == second["expected"] == 30
    assert stack.depth(stack.task_queue) == 30
    assert [r.run_id for r in stack.ledger.list_runs(JOB.name)] == ["credit-scores-20261201T020000Z"]


def test_raw_eventbridge_event_with_job_in_detail() -> None:
    req = parse_start_event(load_event("eventbridge_scheduled_raw.json"))
    assert (req.job, req.run_id) == ("credit-scores", "credit-scores-20261201T020000Z")


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "JSON object"),
        ({}, "no 'job'"),
        ({"job": "credit-scores", "items": "x"}, "'items' must be a list"),
        ({"job": "credit-scores", "run_id": "bad id!"}, "run_id"),
        ({"job": "credit-scores", "source": "schedule"}, "no 'time'"),
        ({"job": "credit-scores", "time": "yesterday"}, "not an ISO 8601"),
        ({"job": "credit-scores", "run_id": "r", "segment": "two"}, "'segment' must be a segment number"),
    ],
)
def test_bad_start_events_are_refused_with_a_reason(event: Any, message: str) -> None:
    with pytest.raises(StartEventError, match=message):
        parse_start_event(event)


def test_unknown_job_names_the_declared_ones(stack: Stack) -> None:
    with pytest.raises(UnknownJobError, match="credit-scores"):
        stack.splitter().handle({"job": "nope"}, ENOUGH_TIME)


def test_inline_items_one_task_per_item_duplicates_included(stack: Stack) -> None:
    # GIVEN an inline list with a duplicate item (seed 000's "message too big")
    items = [*companies(12), {"company_id": "C0000003"}]
    res = start(stack, items)
    # THEN every item, the duplicate too, has its own task
    assert res["expected"] == 13 and res["status"] == "RUNNING"
    bodies = [TaskEnvelope.parse(r["body"]) for r in stack.receive(stack.task_queue, 10)]
    bodies += [TaskEnvelope.parse(r["body"]) for r in stack.receive(stack.task_queue, 10)]
    assert len({b.task_id for b in bodies}) == 13


def test_dynamodb_source_reads_every_company_once_over_parallel_segments(stack: Stack) -> None:
    seed_companies(stack.ddb, stack.companies, 57)
    job, reg = job_with(source={"kind": "dynamodb", "table": "companies", "segments": 3, "page_size": 7})
    # WHEN the splitter starts: one invocation per segment, in parallel
    first = stack.splitter(jobs=reg).handle({"job": job.name, "run_id": "r1"}, ENOUGH_TIME)
    assert first["continued"] and [c["segment"] for c in stack.continuations] == [0, 1, 2]
    results = [stack.splitter(jobs=reg).handle(c, ENOUGH_TIME) for c in stack.continuations]
    # THEN only the last segment to finish finishes the split, and every company is read once
    assert [r["status"] for r in results] == ["SPLITTING", "SPLITTING", "RUNNING"]
    res = results[-1]
    assert res["expected"] == 57
    seen: list[str] = []
    while recs := stack.receive(stack.task_queue):
        for r in recs:
            seen.append(TaskEnvelope.parse(r["body"]).item["company_id"])
            stack.sqs.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=r["receiptHandle"])
    assert sorted(seen) == [f"C{i:07d}" for i in range(57)]
    assert stack.ledger.require_run("r1").cursors == {"0": "<done>", "1": "<done>", "2": "<done>"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_s3_manifest_sources(stack: Stack, fmt: str) -> None:
    rows = companies(23)
    if fmt == "jsonl":
        body = "\n".join(json.dumps(r) for r in rows) + "\n"
    else:
        body = "company_id,name\n" + "".join(f"{r['company_id']},Name {i}\r\n" for i, r in enumerate(rows))
    stack.s3.put_object(Bucket="reports", Key=f"manifests/m.{fmt}", Body=body.encode())
    job, reg = job_with(source={"kind": "s3", "uri": f"s3://reports/manifests/m.{fmt}", "format": fmt, "page_size": 5})
    res = stack.splitter(jobs=reg).handle({"job": job.name, "run_id": "r1"}, ENOUGH_TIME)
    assert res["expected"] == 23
    got = []
    while recs := stack.receive(stack.task_queue):
        for r in recs:
            got.append(TaskEnvelope.parse(r["body"]).item["company_id"])
            stack.sqs.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=r["receiptHandle"])
    assert sorted(got) == [r["company_id"] for r in rows]


def generated_items() -> list[dict[str, Any]]:
    return companies(9)


def test_callable_source(stack: Stack) -> None:
    job, reg = job_with(source={"kind": "callable", "function": "tests.test_functions:generated_items", "page_size": 4})
    assert stack.splitter(jobs=reg).handle({"job": job.name, "run_id": "r1"}, ENOUGH_TIME)["expected"] == 9


def test_claim_check_sends_big_items_by_reference_and_the_forwarder_fetches_them(stack: Stack) -> None:
    # GIVEN a threshold of 1 KB and one item of 5 KB
    settings = stack.settings.model_copy(update={"claim_check_bytes": 1000})
    big = {"company_id": "C0000001", "blob": "x" * 5000}
    stack.splitter(settings=settings).handle({"job": JOB.name, "run_id": "r1", "items": [big]}, ENOUGH_TIME)
    [rec] = stack.receive(stack.task_queue)
    env = TaskEnvelope.parse(rec["body"])
    # THEN the message carries a reference, the item is in S3, and the service gets the item itself
    assert env.item is None and env.item_ref == "s3://reports/claims/credit-scores/r1/0-000000000.json"
    res = stack.forwarder().handle({"Records": [rec]})
    assert res["batchItemFailures"] == []
    assert stack.service.task_calls()[0]["payload"]["item"] == big


@pytest.mark.parametrize("pages_before_crash", [0, 1, 2])
def test_splitter_resumes_after_a_crash_between_send_and_account(stack: Stack, pages_before_crash: int) -> None:
    # GIVEN a splitter that dies right after sending page N (before accounting it)
    items = companies(25)
    job, reg = job_with(source={"kind": "inline", "page_size": 10})

    class CrashAt(FaultInjector):
        sends = 0

        def maybe_crash(self, point: str) -> None:
            if point == "splitter_after_send":
                CrashAt.sends += 1
                if CrashAt.sends == pages_before_crash + 1:
                    raise InjectedCrash(point)

    event = {"job": job.name, "run_id": "r1", "items": items}
    with pytest.raises(InjectedCrash):
        stack.splitter(jobs=reg, faults=CrashAt(FaultConfig())).handle(event, ENOUGH_TIME)
    # WHEN it is resumed
    res = stack.splitter(jobs=reg).handle(event, ENOUGH_TIME)
    # THEN every item is expected once, and the re-sent page is made of duplicates of the same ids
    assert res["expected"] == 25 and res["status"] == "RUNNING"
    resent = min(10, 25 - 10 * pages_before_crash)
    assert stack.depth(stack.task_queue) == 25 + resent  # the crashed page went out twice
    stack.drive(stack.forwarder().handle, stack.task_queue)
    assert len(task_records(stack, "r1")) == 25
    assert stack.ledger.progress("r1").succeeded == 25


def test_splitter_continues_itself_when_time_runs_low(stack: Stack) -> None:
    job, reg = job_with(source={"kind": "inline", "page_size": 5})
    event = {"job": job.name, "run_id": "r1", "items": companies(12)}
    budget = iter([900_000, 900_000, 1_000])  # the third page would start under the margin
    res = stack.splitter(jobs=reg).handle(event, lambda: next(budget))
    assert res["continued"] is True and res["status"] == "SPLITTING" and res["expected"] == 10
    [cont] = stack.continuations
    assert cont["run_id"] == "r1" and cont["continuation"] == 1
    res = stack.splitter(jobs=reg).handle(cont, ENOUGH_TIME)
    assert res["continued"] is False and res["expected"] == 12


def test_empty_source_finishes_the_run_at_once(stack: Stack) -> None:
    res = start(stack, [])
    assert res["status"] == "REDUCING" and res["expected"] == 0
    kinds = [TaskEnvelope.parse(r["body"]).kind for r in stack.receive(stack.task_queue)]
    assert kinds == [TaskKind.REDUCE_PART] * JOB.shard_count


def test_cancelled_run_stops_splitting(stack: Stack) -> None:
    stack.ledger.create_run("r1", JOB)
    stack.ledger.cancel("r1")
    res = start(stack, companies(5))
    assert res["status"] == "CANCELLED" and stack.depth(stack.task_queue) == 0


def test_batch_entry_failures_are_retried_not_dropped(stack: Stack) -> None:
    # GIVEN an SQS that refuses the first entry of each first attempt
    real = stack.sender.client
    refused: list[str] = []

    class Flaky:
        def __getattr__(self, name: str) -> Any:  # every other SQS call as it is
            return getattr(real, name)

        def send_message_batch(self, **kw: Any) -> Any:
            first, rest = kw["Entries"][0], kw["Entries"][1:]
            if first["Id"] in refused or len(kw["Entries"]) == 1:
                return real.send_message_batch(**kw)
            refused.append(first["Id"])
            resp = real.send_message_batch(**{**kw, "Entries": rest})
            resp.setdefault("Failed", []).append(
                {"Id": first["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            )
            return resp

    stack.sender.client = Flaky()
    start(stack, companies(10))
    assert refused and stack.depth(stack.task_queue) == 10


# ----------------------------------------------------------------- forwarder


def running_run(st: Stack, n: int, run_id: str = "r1") -> list[dict[str, Any]]:
    """A run whose n tasks are enqueued; returns their records as the event source delivers them."""
    start(st, companies(n), run_id=run_id)
    recs: list[dict[str, Any]] = []
    while len(recs) < n:
        recs += st.receive(st.task_queue)
    return recs


def test_success_records_the_result_with_a_signed_idempotent_push(stack: Stack) -> None:
    recs = running_run(stack, 3)
    res = stack.forwarder().handle({"Records": recs})
    assert res == {"batchItemFailures": []}
    assert stack.service.bad_signatures == 0
    keys = sorted(c["key"] for c in stack.service.task_calls())
    assert keys == ["r1:0-000000000", "r1:0-000000001", "r1:0-000000002"]
    recs_ = task_records(stack, "r1")
    assert all(t.state is TaskState.SUCCEEDED and t.result["score"] == 700 for t in recs_)
    assert stack.metric("TasksSucceeded") == 3


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_4xx_is_a_permanent_failure_without_retry(stack: Stack, status: int) -> None:
    stack.service.behaviours["C0000001"] = Behaviour(status=status)
    recs = running_run(stack, 2)
    res = stack.forwarder().handle({"Records": recs})
    assert res == {"batchItemFailures": []}
    failed = [t for t in task_records(stack, "r1") if t.state is TaskState.FAILED]
    assert [t.item_id for t in failed] == ["C0000001"] and f"HTTP {status}" in (failed[0].error or "")
    assert stack.sqs.visibility == []


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_retryable_status_backs_off_and_is_retried(stack: Stack, status: int) -> None:
    stack.service.behaviours["C0000000"] = Behaviour(status=status)
    [rec] = running_run(stack, 1)
    res = stack.forwarder().handle({"Records": [rec]})
    assert res == {"batchItemFailures": [{"itemIdentifier": rec["messageId"]}]}
    assert task_records(stack, "r1") == []
    assert len(stack.sqs.visibility) == 1 and 1 <= stack.sqs.visibility[0] <= 2


def test_retry_after_is_honoured(stack: Stack) -> None:
    # within the job's throttle budget: the task is re-sent after the Retry-After, not counted
    stack.service.behaviours["C0000000"] = Behaviour(status=429, retry_after="37")
    [rec] = running_run(stack, 1)
    stack.forwarder().handle({"Records": [rec]})
    assert stack.sqs.sent and 37 <= stack.sqs.sent[0]["DelaySeconds"] <= 38
    # past it (a budget of 0): the counted backoff waits as long
    _, reg = job_with(throttle_budget_s=0)
    stack.forwarder(jobs=reg).handle({"Records": [rec]})
    assert stack.sqs.visibility and 37 <= stack.sqs.visibility[0] <= 38


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    import random

    rng = random.Random(0)
    delays = [backoff_seconds(a, None, base=2, cap=60, rng=rng) for a in range(1, 9)]
    assert delays[0] <= 2 and delays[3] >= 8 and max(delays) <= 60
    assert all(d >= 1 for d in delays)


def test_timeout_and_connection_errors_are_retried(stack: Stack) -> None:
    _, reg = job_with(task_timeout_s=0.3)
    stack.service.behaviours["C0000000"] = Behaviour(delay_s=1.5)
    [rec] = running_run(stack, 1)
    res = stack.forwarder(jobs=reg).handle({"Records": [rec]})
    assert res["batchItemFailures"] == [{"itemIdentifier": rec["messageId"]}]
    stack.service.stop()  # now nothing listens: a connection error, re-sent without counting an attempt
    res = stack.forwarder(jobs=reg).handle({"Records": [rec]})
    assert res["batchItemFailures"] == [] and len(stack.sqs.sent) == 1
    assert task_records(stack, "r1") == []
    stack.service.start()  # the fixture stops it at the end


def test_max_attempts_records_failed_with_the_last_error(stack: Stack) -> None:
    stack.service.behaviours["C0000000"] = Behaviour(status=503)
    [rec] = running_run(stack, 1)
    rec["attributes"]["ApproximateReceiveCount"] = str(JOB.max_attempts)
    res = stack.forwarder().handle({"Records": [rec]})
    assert res == {"batchItemFailures": []}
    [t] = task_records(stack, "r1")
    assert t.state is TaskState.FAILED and t.attempts == JOB.max_attempts and "HTTP 503" in (t.error or "")
    assert t.item == {"company_id": "C0000000"}  # kept for retry-failed


def test_malformed_records_go_to_the_dlq_and_never_fail_the_good_ones(stack: Stack) -> None:
    good = running_run(stack, 2)
    bad = [
        sqs_record("not json {", message_id="bad-json"),
        sqs_record(json.dumps({"v": 1, "job": "credit-scores"}), message_id="bad-schema"),
        sqs_record(
            envelope_for("r1", "t-x", {"company_id": "C1"}).replace("credit-scores", "no-such-job"),
            message_id="bad-job",
        ),
        sqs_record(envelope_for("ghost-run", "t-y", {"company_id": "C1"}), message_id="bad-run"),
        sqs_record(
            envelope_for("r1", "0-000000001", item_ref="s3://reports/claims/credit-scores/r1/missing.json"),
            message_id="bad-ref",
        ),
        sqs_record(envelope_for("r1", "0-000000099", {"company_id": "C1"}), message_id="not-in-run"),
    ]
    res = stack.forwarder().handle({"Records": [bad[0], good[0], *bad[1:], good[1]]})
    assert res == {"batchItemFailures": []}
    assert len(task_records(stack, "r1")) == 2
    reasons = sorted(m["messageAttributes"][REASON_ATTRIBUTE]["stringValue"] for m in dlq_messages(stack))
    assert len(reasons) == 6
    for needle in (
        "not JSON",
        "wrong schema",
        "unknown job",
        "unknown run",
        "unreadable (NoSuchKey)",
        "not part of run",
    ):
        assert any(needle in r for r in reasons), (needle, reasons)


@pytest.mark.parametrize(
    "ref", ["s3://someone-elses-bucket/claims/x.json", "s3://reports/reports/credit-scores/r1/report.csv"]
)
def test_a_claim_check_reference_outside_the_platforms_claims_is_dead_lettered_unread(stack: Stack, ref: str) -> None:
    # GIVEN a running run and a message whose item reference names another bucket or prefix
    running_run(stack, 1)
    record = sqs_record(envelope_for("r1", "0-000000000", item_ref=ref), message_id="foreign-ref")
    # WHEN the forwarder (knowing the platform bucket) takes it
    res = stack.forwarder(claims_bucket="reports").handle({"Records": [record]})
    # THEN it is dead-lettered with the reason, nothing is read or pushed, and nothing is retried
    assert res == {"batchItemFailures": []} and stack.service.task_calls() == []
    [reason] = [m["messageAttributes"][REASON_ATTRIBUTE]["stringValue"] for m in dlq_messages(stack)]
    assert "outside the platform's claims (s3://reports/claims/...)" in reason


def test_cancelled_run_messages_are_acknowledged_without_calls(stack: Stack) -> None:
    recs = running_run(stack, 4)
    stack.ledger.cancel("r1")
    res = stack.forwarder().handle({"Records": recs})
    assert res == {"batchItemFailures": []} and stack.service.calls == []
    assert task_records(stack, "r1") == []


def test_duplicate_deliveries_are_counted_once(stack: Stack) -> None:
    recs = running_run(stack, 3)
    f = stack.forwarder()
    f.handle({"Records": recs[:2]})
    f.handle({"Records": [recs[0], recs[1], recs[2], recs[0]]})  # redelivered, and twice in one batch
    prog = stack.ledger.progress("r1")
    assert (prog.succeeded, prog.status) == (3, RunStatus.REDUCING)
    calls_before = len(stack.service.calls)
    f.handle({"Records": [recs[1]]})  # late duplicate after the reduce was claimed: no call
    assert len(stack.service.calls) == calls_before


def drain(st: Stack, forwarder: Any = None) -> None:
    st.drive((forwarder or st.forwarder()).handle, st.task_queue)


def test_full_pipeline_reaches_succeeded_through_the_two_level_reduce(stack: Stack) -> None:
    # GIVEN 45 companies, one of which the service rejects (within a 5% tolerance)
    job, reg = job_with(tolerated_failure_pct=5.0)
    stack.service.behaviours["C0000007"] = Behaviour(status=400)
    seed_companies(stack.ddb, stack.companies, 45)
    stack.split({"job": job.name, "run_id": "r1"}, jobs=reg)
    # WHEN the event source drives the forwarder until the queue is empty
    drain(stack, stack.forwarder(jobs=reg))
    # THEN parts, then finalize were pushed once each, and the run ended SUCCEEDED with its report
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.SUCCEEDED and run.report_uri == "s3://reports/reports/credit-scores/r1/"
    parts = [c for c in stack.service.calls if c["payload"]["kind"] == "reduce-part"]
    finals = [c for c in stack.service.calls if c["payload"]["kind"] == "finalize"]
    assert sorted(c["payload"]["shard"] for c in parts) == list(range(job.shard_count)) and len(finals) == 1
    assert stack.metric("TasksSucceeded") == 44 and stack.metric("TasksFailed") == 1
    assert stack.metric("RunsSucceeded") == 1


def test_run_fails_above_the_tolerated_failure_percentage(stack: Stack) -> None:
    for i in range(3):
        stack.service.behaviours[f"C{i:07d}"] = Behaviour(status=400)
    start(stack, companies(10))
    drain(stack)
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.FAILED and "3 of 10 tasks failed" in (run.error or "")
    assert stack.metric("RunsFailed") == 1


def test_reduce_that_keeps_failing_ends_the_run_failed(stack: Stack) -> None:
    start(stack, companies(2))
    drain(stack)  # the run is done; stop the service before the finalize can run
    # replay: a fresh run whose reduce part fails for good
    start(stack, companies(2), run_id="r2")
    stack.service.stop()
    recs = []
    while True:
        batch = stack.receive(stack.task_queue)
        if not batch:
            break
        recs += batch
    stack.service.start()
    res = stack.forwarder().handle({"Records": recs})  # the two tasks succeed, the reduce is claimed
    assert res["batchItemFailures"] == [] and stack.ledger.require_run("r2").status is RunStatus.REDUCING
    stack.service.stop()
    parts = stack.receive(stack.task_queue)
    for p in parts:
        p["attributes"]["ApproximateReceiveCount"] = str(JOB.max_attempts)
    _, no_grace = job_with(unreachable_grace_s=0)  # every refused push counts (no restart grace)
    stack.forwarder(jobs=no_grace).handle({"Records": parts})
    run = stack.ledger.require_run("r2")
    assert run.status is RunStatus.FAILED and "reduce-part" in (run.error or "")
    stack.service.start()


# --------------------------------------------------------------- dead letter


def test_dead_letter_marks_tasks_failed_and_the_run_still_finishes(stack: Stack) -> None:
    from microprocess.pipeline.deadletter import DeadLetterHandler

    recs = running_run(stack, 2)
    stack.forwarder().handle({"Records": [recs[0]]})
    handler = DeadLetterHandler(jobs=REGISTRY, ledger=stack.ledger, s3=stack.s3, bucket="reports", sender=stack.sender)
    dead = sqs_record(recs[1]["body"], receive_count=JOB.max_attempts + 2)
    assert handler.handle({"Records": [dead, dead]}) == {"batchItemFailures": []}
    [failed] = [t for t in task_records(stack, "r1") if t.state is TaskState.FAILED]
    assert "dead-lettered after 5 receives" in (failed.error or "")
    assert stack.ledger.progress("r1").failed == 1  # counted once though delivered twice
    assert stack.ledger.require_run("r1").status is RunStatus.REDUCING


def test_dead_letter_quarantines_what_it_cannot_parse(stack: Stack) -> None:
    from microprocess.pipeline.deadletter import DeadLetterHandler

    handler = DeadLetterHandler(jobs=REGISTRY, ledger=stack.ledger, s3=stack.s3, bucket="reports", sender=stack.sender)
    attrs = {REASON_ATTRIBUTE: {"stringValue": "malformed message: body is not JSON", "dataType": "String"}}
    rec = sqs_record("\x00garbage", message_id="q1", messageAttributes=attrs)
    assert handler.handle({"Records": [rec]}) == {"batchItemFailures": []}
    keys = [o["Key"] for o in stack.s3.list_objects_v2(Bucket="reports", Prefix="quarantine/")["Contents"]]
    assert len(keys) == 1 and keys[0].endswith("/q1.json")
    doc = json.loads(stack.s3.get_object(Bucket="reports", Key=keys[0])["Body"].read())
    assert doc["body"] == "\x00garbage" and "not JSON" in doc["reason"] and doc["attributes"]


def test_dead_lettered_reduce_fails_the_run(stack: Stack) -> None:
    from microprocess.pipeline.deadletter import DeadLetterHandler

    start(stack, [])
    [part, *_] = stack.receive(stack.task_queue)
    handler = DeadLetterHandler(jobs=REGISTRY, ledger=stack.ledger, s3=stack.s3, bucket="reports", sender=stack.sender)
    handler.handle({"Records": [part]})
    assert stack.ledger.require_run("r1").status is RunStatus.FAILED


# ------------------------------------------------------------------- sweeper


def sweeper(st: Stack, restarts: list[dict[str, Any]] | None = None, **kw: Any) -> Sweeper:
    return Sweeper(
        jobs=REGISTRY,
        ledger=st.ledger,
        sender=st.sender,
        restart_splitter=(restarts if restarts is not None else []).append,
        stuck_after_s=kw.pop("stuck_after_s", 0),
        reduce_timeout_s=kw.pop("reduce_timeout_s", 0),
        emit=st.emit,
        **kw,
    )


def test_sweeper_repairs_a_crash_between_task_write_and_count(stack: Stack) -> None:
    from microprocess.ledger import CRASH_AFTER_TASK_WRITE, Ledger

    def crash(point: str) -> None:
        if point == CRASH_AFTER_TASK_WRITE:
            raise InjectedCrash(point)

    recs = running_run(stack, 3)
    crashing = Ledger("ledger", client=stack.ddb, crash_hook=crash)
    with pytest.raises(InjectedCrash):
        stack.forwarder(ledger=crashing).handle({"Records": recs})
    stack.forwarder().handle({"Records": recs})  # redelivered: duplicates, not counted
    assert stack.ledger.require_run("r1").status is RunStatus.RUNNING
    report = sweeper(stack).sweep()
    assert report.repaired == ["r1"] and report.reduces_claimed == ["r1"]
    assert stack.ledger.require_run("r1").status is RunStatus.REDUCING
    assert {TaskEnvelope.parse(r["body"]).kind for r in stack.receive(stack.task_queue)} == {TaskKind.REDUCE_PART}


def test_sweeper_reenqueues_a_lost_reduce_and_reports_stuck_runs(stack: Stack) -> None:
    start(stack, [])  # claimed at once; pretend the parts were lost
    while recs := stack.receive(stack.task_queue):
        for r in recs:
            stack.sqs.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=r["receiptHandle"])
    later = datetime.now(UTC) + timedelta(seconds=5)
    report = sweeper(stack, reduce_timeout_s=1, now=lambda: later).sweep()
    assert report.reduces_requeued == ["r1"] and report.stuck == ["r1"]
    assert stack.depth(stack.task_queue) == JOB.shard_count
    assert stack.metric("StuckRuns") == 1
    drain(stack)
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED


def test_sweeper_restarts_an_idle_split(stack: Stack) -> None:
    stack.ledger.create_run("r1", JOB)
    restarts: list[dict[str, Any]] = []
    later = datetime.now(UTC) + timedelta(seconds=10)
    report = sweeper(stack, restarts, stuck_after_s=5, now=lambda: later).sweep()
    assert report.splitters_restarted == ["r1"] and restarts == [{"job": JOB.name, "run_id": "r1", "source": "sweeper"}]


def test_sweeper_leaves_healthy_runs_alone(stack: Stack) -> None:
    running_run(stack, 2)
    report = sweeper(stack, stuck_after_s=3600, reduce_timeout_s=3600).sweep()
    assert report.runs_seen == 1 and not (report.repaired or report.stuck or report.splitters_restarted)


def test_a_run_whose_service_sheds_load_is_waiting_not_stuck_until_stuck_after_past_the_wait(stack: Stack) -> None:
    from microprocess.pipeline.shedding import ServiceWaits

    # GIVEN a running run whose service asked every job to wait 10 minutes (no task moves meanwhile)
    running_run(stack, 2)
    waits = ServiceWaits(stack.ddb, "ledger")
    until = datetime.fromtimestamp(waits.ask_to_wait(JOB.service, 600, "HTTP 503 asking to wait 600 s"), UTC)

    def sweep_at(when: datetime) -> Any:
        return sweeper(stack, stuck_after_s=60, reduce_timeout_s=3600, now=lambda: when, waits=waits).sweep()

    # WHEN the sweeper looks during the wait, long after the run's last progress (past stuck_after_s)
    # THEN it neither recounts the run nor calls it stuck
    during = sweep_at(until - timedelta(seconds=300))
    assert during.runs_seen == 1 and not (during.repaired or during.repairs_continuing or during.stuck)
    # AND right after the wait the pushes resume: still not stuck (a recount now would fence the
    # completions off until the next repair)
    after = sweep_at(until + timedelta(seconds=30))
    assert not (after.repaired or after.stuck)
    # AND a run still quiet stuck_after_s past the end of the wait is recounted and reported stuck
    late = sweep_at(until + timedelta(seconds=61))
    assert late.repaired == ["r1"] and late.stuck == ["r1"]


def test_the_sweeper_reads_no_shedding_mark_for_a_run_that_is_moving(stack: Stack) -> None:
    from microprocess.pipeline.shedding import ServiceWaits

    class Counted:
        reads = 0

        def get_item(self, **_: Any) -> Any:
            Counted.reads += 1
            return {}

    running_run(stack, 2)
    report = sweeper(stack, stuck_after_s=3600, reduce_timeout_s=3600, waits=ServiceWaits(Counted(), "ledger")).sweep()
    assert report.runs_seen == 1 and not report.stuck and Counted.reads == 0


def test_the_sweeper_judges_a_run_by_its_progress_when_the_shedding_mark_cannot_be_read(stack: Stack) -> None:
    from botocore.exceptions import ClientError

    from microprocess.pipeline.shedding import ServiceWaits

    class Unreadable:
        def get_item(self, **_: Any) -> Any:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "GetItem")

    running_run(stack, 2)
    later = datetime.now(UTC) + timedelta(seconds=120)
    report = sweeper(
        stack, stuck_after_s=60, reduce_timeout_s=3600, now=lambda: later, waits=ServiceWaits(Unreadable(), "ledger")
    ).sweep()
    assert report.repaired == ["r1"] and report.stuck == ["r1"] and not report.errors


def test_scheduled_run_id_is_stable() -> None:
    assert scheduled_run_id("j", "2026-12-01T02:00:00+00:00") == scheduled_run_id("j", "2026-12-01T02:00:00Z")


def test_metrics_count_duplicates_retries_and_the_single_reduce_claim(stack: Stack) -> None:
    stack.service.behaviours["C0000001"] = Behaviour(status=503)
    recs = running_run(stack, 3)
    f = stack.forwarder()
    f.handle({"Records": recs})  # C1 is retried
    f.handle({"Records": recs[:1]})  # a duplicate of a completed task
    stack.service.behaviours.clear()
    f.handle({"Records": recs[1:2]})
    assert stack.metric("TasksRetried") == 1 and stack.metric("DuplicatesAbsorbed") == 1
    assert stack.metric("ReducesClaimed") == 1


def test_a_task_sent_but_not_yet_accounted_is_deferred_not_lost(stack: Stack) -> None:
    # GIVEN a run still splitting whose second page is sent but not accounted
    stack.ledger.create_run("r1", JOB)
    stack.ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=2)
    early = sqs_record(envelope_for("r1", "0-000000005", {"company_id": "C0000005"}), message_id="early")
    early["attributes"]["ApproximateReceiveCount"] = "2"  # its second receive
    known = sqs_record(envelope_for("r1", "0-000000001", {"company_id": "C0000001"}), message_id="known")
    # WHEN the forwarder sees both
    res = stack.forwarder().handle({"Records": [early, known]})
    # THEN the unaccounted one comes back in a second as a copy (not dead-lettered, not pushed) that
    # carries only the attempts made before (this receive pushed nothing), the other is recorded
    assert res == {"batchItemFailures": []} and stack.sqs.visibility == []
    [copy] = stack.sqs.sent
    assert (copy["MessageBody"], copy["DelaySeconds"]) == (early["body"], 1)
    assert copy["MessageAttributes"][PRIOR_ATTEMPTS_ATTRIBUTE]["StringValue"] == "1"
    assert [c["payload"]["task_id"] for c in stack.service.task_calls()] == ["0-000000001"]
    assert [t.task_id for t in task_records(stack, "r1")] == ["0-000000001"]
    assert dlq_messages(stack) == []


def test_deferrals_are_uncounted_only_for_their_grace(stack: Stack) -> None:
    from microprocess.pipeline.resend import DEFERRED_SINCE_ATTRIBUTE

    stack.ledger.create_run("r1", JOB)
    stack.ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=2)
    body = envelope_for("r1", "0-000000005", {"company_id": "C0000005"})
    forwarder = stack.forwarder(defer_grace_s=100)

    def deferred_since(ago_s: float, message_id: str) -> dict[str, Any]:
        mark = {DEFERRED_SINCE_ATTRIBUTE: {"stringValue": f"{time.time() - ago_s:.3f}", "dataType": "String"}}
        return sqs_record(body, message_id=message_id, messageAttributes=mark)

    # GIVEN a task deferred before, within the grace: its copy carries since when (kept, not reset)
    early = deferred_since(98, "early")
    assert forwarder.handle({"Records": [early]}) == {"batchItemFailures": []}
    [copy] = stack.sqs.sent
    since = float(early["messageAttributes"][DEFERRED_SINCE_ATTRIBUTE]["stringValue"])
    assert float(copy["MessageAttributes"][DEFERRED_SINCE_ATTRIBUTE]["StringValue"]) == pytest.approx(since, abs=0.01)
    # WHEN a task has been deferred for longer than the grace (its page never accounted)
    late = deferred_since(101, "late")
    # THEN it is no longer re-sent: a counted receive in 1 s, towards the queue's redrive (no endless loop)
    assert forwarder.handle({"Records": [late]}) == {"batchItemFailures": [{"itemIdentifier": "late"}]}
    assert len(stack.sqs.sent) == 1 and stack.sqs.visibility == [1]


class WallClock:
    """Stands in for the `time` module inside the forwarder: `time()` is what the test says."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _sweeper_timings() -> dict[str, tuple[int, int]]:
    """(stuck_after_s, sweep_period_s) as each stage deploys them on the sweeper and the forwarder."""
    from infra.sweeper import RATE, STUCK_AFTER_S
    from microprocess.local.stack import LOCAL_STUCK_AFTER_S, LOCAL_SWEEPER_RATE_MINUTES

    return {
        "cloud": (STUCK_AFTER_S, int(RATE.to_seconds())),
        "local": (LOCAL_STUCK_AFTER_S, LOCAL_SWEEPER_RATE_MINUTES * 60),
    }


@pytest.mark.parametrize("stage", ["cloud", "local"])
def test_a_task_deferred_while_its_splitter_is_dead_waits_uncounted_until_the_sweeper_restarts_the_split(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    from microprocess.pipeline import resend as resend_module
    from microprocess.pipeline.settings import RuntimeSettings

    stuck_after_s, sweep_period_s = _sweeper_timings()[stage]
    # GIVEN the forwarder and the sweeper as the stage deploys them (the same timing variables)
    settings = RuntimeSettings(ledger_table="ledger", stuck_after_s=stuck_after_s, sweep_period_s=sweep_period_s)
    forwarder = stack.forwarder(defer_grace_s=settings.defer_grace_s)
    restarts: list[dict[str, Any]] = []
    sweep_at = [0.0]
    sweep = sweeper(
        stack,
        restarts,
        stuck_after_s=settings.stuck_after_s,
        now=lambda: datetime.fromtimestamp(sweep_at[0], UTC),
    )
    # AND a run whose splitter accounted its first page at t0, sent its second page and died
    stack.ledger.create_run("r1", JOB)
    stack.ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=2)
    run = stack.ledger.require_run("r1")
    t0 = datetime.fromisoformat(str(run.updated_at).replace("Z", "+00:00")).timestamp()
    stack.sqs.send_message(
        QueueUrl=stack.task_queue, MessageBody=envelope_for("r1", "0-000000002", {"company_id": "C2"})
    )
    clock = WallClock(t0)
    monkeypatch.setattr(resend_module, "time", clock)  # the deferral's clock

    def receive_at(at: float) -> dict[str, Any]:
        clock.now = at
        [record] = stack.receive(stack.task_queue)
        result = forwarder.handle({"Records": [record]})
        if not result["batchItemFailures"]:
            stack.sqs.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=record["receiptHandle"])
        return result

    # WHEN the forwarder receives its task (deferred: the page is not accounted) and keeps receiving
    # it at every sweep, the sweeps falling at their worst (one just before the run is quiet enough)
    assert receive_at(t0 + 1) == {"batchItemFailures": []}
    sweep_at[0] = t0 + stuck_after_s - 1
    while not restarts:
        assert sweep_at[0] < t0 + 10 * sweep_period_s + stuck_after_s, "the sweeper never restarted the split"
        assert receive_at(sweep_at[0]) == {"batchItemFailures": []}, (
            f"deferred {sweep_at[0] - t0 - 1:.0f} s: a counted receive before the sweep restarted the split"
        )
        sweep.sweep()
        sweep_at[0] += sweep_period_s
    restarted_at = sweep_at[0] - sweep_period_s
    # THEN up to the restarted splitter's accounting of the page (a minute, a cold start and a page),
    # every receive is a deferral that counts no attempt
    assert restarts == [{"job": JOB.name, "run_id": "r1", "source": "sweeper"}]
    assert receive_at(restarted_at + 60) == {"batchItemFailures": []}, "deferral grace spent before the restart"
    stack.ledger.account_page("r1", segment="0", cursor_from="p1", cursor_to="p2", count=1)
    # AND then the task is pushed as its first attempt and recorded, never dead-lettered
    assert receive_at(restarted_at + 61) == {"batchItemFailures": []}
    [call] = stack.service.task_calls()
    assert (call["payload"]["task_id"], call["payload"]["attempt"]) == ("0-000000002", 1)
    assert [t.task_id for t in task_records(stack, "r1")] == ["0-000000002"] and dlq_messages(stack) == []


def test_a_deferral_whose_resend_fails_comes_back_as_a_counted_receive(stack: Stack) -> None:
    stack.ledger.create_run("r1", JOB)
    stack.ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=2)
    early = sqs_record(envelope_for("r1", "0-000000005", {"company_id": "C0000005"}), message_id="early")

    def refuse(**_kw: Any) -> Any:
        raise RuntimeError("injected: SendMessage throttled")

    stack.sqs.send_message = refuse  # type: ignore[method-assign]
    res = stack.forwarder().handle({"Records": [early]})
    assert res == {"batchItemFailures": [{"itemIdentifier": "early"}]} and stack.sqs.visibility == [1]


def test_dead_letter_quarantines_a_task_that_is_not_part_of_its_run(stack: Stack) -> None:
    from microprocess.pipeline.deadletter import DeadLetterHandler

    running_run(stack, 2)
    handler = DeadLetterHandler(jobs=REGISTRY, ledger=stack.ledger, s3=stack.s3, bucket="reports", sender=stack.sender)
    rec = sqs_record(envelope_for("r1", "0-000000077", {"company_id": "C9"}), message_id="fake")
    assert handler.handle({"Records": [rec]}) == {"batchItemFailures": []}
    assert task_records(stack, "r1") == [] and stack.ledger.progress("r1").failed == 0
    keys = [o["Key"] for o in stack.s3.list_objects_v2(Bucket="reports", Prefix="quarantine/")["Contents"]]
    assert keys[0].endswith("/fake.json")


def test_a_body_too_big_for_the_reason_attribute_still_reaches_the_dlq(stack: Stack) -> None:
    big = "z" * (1_048_576 - 10)
    res = stack.forwarder().handle({"Records": [sqs_record(big, message_id="huge")]})
    assert res == {"batchItemFailures": []}
    [msg] = dlq_messages(stack)
    assert msg["body"] == big


def test_forwarder_log_records_carry_run_id_and_job(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    stack.service.behaviours["C0000001"] = Behaviour(status=503)
    recs = running_run(stack, 2)
    with caplog.at_level(logging.INFO, logger="microprocess.pipeline.forwarder"):
        stack.forwarder().handle({"Records": recs})
        stack.service.behaviours.clear()
        stack.forwarder().handle({"Records": recs[1:]})

    def keys_of(fragment: str) -> tuple[Any, Any]:
        record = next(r for r in caplog.records if fragment in r.getMessage())
        return getattr(record, "run_id", None), getattr(record, "job", None)

    assert keys_of("retry r1:0-000000001 in") == ("r1", JOB.name)
    assert keys_of("reduce claimed") == ("r1", JOB.name)


# ------------------------------------------------ rare faults (the review's scenarios)


def drain_reduces(st: Stack, job_registry: Any = REGISTRY) -> None:
    drain(st, st.forwarder(jobs=job_registry))


def test_1_ambiguous_ledger_writes_never_claim_the_reduce_early(stack: Stack) -> None:
    # GIVEN a forwarder whose every ledger write is applied, then retried by the SDK (a 500
    # or a read timeout on a request DynamoDB had carried out)
    import boto3

    from microprocess.ledger import Ledger

    client = boto3.client("dynamodb", region_name="us-east-1")
    injector = FaultInjector(FaultConfig(applied_then_error=1.0))
    injector.install_ambiguous_writes(client)
    ambiguous = Ledger("ledger", client=client)
    start(stack, companies(20))
    # WHEN the event source drives it in batches of 10
    drain(stack, stack.forwarder(ledger=ambiguous))
    # THEN the fault fired, and every task was pushed and counted once: no early reduce, no
    # task acknowledged as a late duplicate without being pushed
    assert sum(injector.fired.values()) > 0
    pushed = {c["payload"]["task_id"] for c in stack.service.task_calls()}
    assert len(pushed) == 20 and len(task_records(stack, "r1")) == 20
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.SUCCEEDED and stack.ledger.progress("r1").succeeded == 20


def test_2_a_split_read_to_the_end_but_never_marked_done_is_finished_by_the_sweeper(stack: Stack) -> None:
    # GIVEN a two-segment run whose cursors are both done, but whose finish_split call died
    stack.ledger.create_run("r1", JOB, segments=2)
    stack.ledger.account_page("r1", segment="0", cursor_from="", cursor_to="<done>", count=0)
    stack.ledger.account_page("r1", segment="1", cursor_from="", cursor_to="<done>", count=0)
    # WHEN the sweeper runs
    report = sweeper(stack).sweep()
    # THEN it finishes the split (an empty run: the reduce is claimed at once)
    assert report.splits_finished == ["r1"] and report.reduces_claimed == ["r1"]
    assert stack.ledger.require_run("r1").status is RunStatus.REDUCING


def test_2_a_restarted_splitter_finishes_a_split_read_to_the_end(stack: Stack) -> None:
    stack.ledger.create_run("r1", JOB, segments=2)
    for seg in ("0", "1"):
        stack.ledger.account_page("r1", segment=seg, cursor_from="", cursor_to="<done>", count=0)
    res = stack.splitter().handle({"job": JOB.name, "run_id": "r1", "source": "sweeper"}, ENOUGH_TIME)
    assert res["status"] == "REDUCING" and not res["continued"]


class CrashOnFirstSend(FaultInjector):
    def __init__(self) -> None:
        super().__init__(FaultConfig())
        self.crashed = 0

    def maybe_crash(self, point: str) -> None:
        if point == "splitter_after_send" and not self.crashed:
            self.crashed += 1
            raise InjectedCrash(point)


@pytest.mark.parametrize("how", ["items", "items_uri", "retry_of"])
def test_3_the_sweeper_restarts_a_run_from_its_own_source(stack: Stack, how: str) -> None:
    # GIVEN a job whose declared source (the companies table) holds 50 companies, and a run of
    # 3 items started inline, from an uploaded manifest, or as retry-failed, whose splitter died
    seed_companies(stack.ddb, stack.companies, 50)
    three = companies(3, offset=100)
    event: dict[str, Any] = {"job": JOB.name, "run_id": "r2"}
    if how == "items":
        event["items"] = three
    elif how == "items_uri":
        body = "".join(json.dumps(c) + "\n" for c in three)
        stack.s3.put_object(Bucket="reports", Key="uploads/r2.jsonl", Body=body.encode())
        event["items_uri"] = "s3://reports/uploads/r2.jsonl"
    else:
        for c in three:
            stack.service.behaviours[c["company_id"]] = Behaviour(status=400)
        start(stack, three + companies(4, offset=200), run_id="r1")
        drain(stack)
        assert stack.ledger.progress("r1").failed == 3
        stack.service.behaviours.clear()
        event["retry_of"] = "r1"
    with pytest.raises(InjectedCrash):
        stack.splitter(faults=CrashOnFirstSend()).handle(event, ENOUGH_TIME)
    # WHEN the sweeper restarts the split (its event names the run, nothing else)
    restarts: list[dict[str, Any]] = []
    later = datetime.now(UTC) + timedelta(seconds=10)
    sweeper(stack, restarts, stuck_after_s=5, now=lambda: later).sweep()
    assert [r["run_id"] for r in restarts] == ["r2"] and "items" not in restarts[0]
    res = stack.split(restarts[0])
    # THEN the run reads its own 3 items, not the job's table
    assert res["expected"] == 3 and res["status"] == "RUNNING"
    drain(stack)
    pushed = {c["payload"]["item"]["company_id"] for c in stack.service.task_calls() if c["payload"]["run_id"] == "r2"}
    assert pushed == {c["company_id"] for c in three}
    assert stack.ledger.require_run("r2").status is RunStatus.SUCCEEDED


def test_4_a_null_manifest_line_is_a_failed_task_and_the_run_goes_on(stack: Stack) -> None:
    # GIVEN a manifest with a `null` line among 5 items
    lines = [json.dumps(c) for c in companies(2)] + ["null"] + [json.dumps(c) for c in companies(2, offset=2)]
    stack.s3.put_object(Bucket="reports", Key="m/items.jsonl", Body=("\n".join(lines) + "\n").encode())
    job, reg = job_with(tolerated_failure_pct=50.0)
    # WHEN a run reads it
    res = stack.split({"job": job.name, "run_id": "r1", "items_uri": "s3://reports/m/items.jsonl"}, jobs=reg)
    # THEN the split finishes with 5 expected, the null item FAILED with its reason
    assert res["expected"] == 5 and res["status"] == "RUNNING"
    drain(stack, stack.forwarder(jobs=reg))
    [failed] = [t for t in task_records(stack, "r1") if t.state is TaskState.FAILED]
    assert failed.task_id == "0-000000002" and "null" in (failed.error or "")
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED


def test_4_a_binary_attribute_is_sent_base64_encoded(stack: Stack) -> None:
    stack.ddb.put_item(TableName=stack.companies, Item={"company_id": {"S": "C0000001"}, "logo": {"B": b"\x00\xffPNG"}})
    seed_companies(stack.ddb, stack.companies, 1)
    job, reg = job_with(source={"kind": "dynamodb", "table": "companies", "segments": 1})
    res = stack.split({"job": job.name, "run_id": "r1"}, jobs=reg)
    assert res["expected"] == 2
    items = [TaskEnvelope.parse(r["body"]).item for r in stack.receive(stack.task_queue)]
    assert {"company_id": "C0000001", "logo": "AP9QTkc="} in items


def test_6_a_deploy_that_changes_shard_count_mid_run_keeps_the_runs_layout(stack: Stack) -> None:
    # GIVEN a run split with 4 shards that hands over to a continuation after its first page
    job4, reg4 = job_with(source={"kind": "inline", "page_size": 5})
    budget = iter([900_000, 1_000])
    stack.splitter(jobs=reg4).handle({"job": job4.name, "run_id": "r1", "items": companies(12)}, lambda: next(budget))
    [cont] = stack.continuations
    stack.continuations.clear()
    # WHEN a deploy makes the job 8 shards (and pages of 2) before the continuation runs
    _, reg8 = job_with(source={"kind": "inline", "page_size": 2}, shard_count=8, counter_count=8)
    res = stack.split(cont, jobs=reg8)
    # THEN every task is in the run's own 4-shard layout and pages, and the run completes
    raw = stack.ddb.get_item(TableName="ledger", Key={"pk": {"S": "RUN#r1"}, "sk": {"S": "RUN"}})["Item"]
    assert res["expected"] == 12 and raw["pages"]["N"] == "3"  # pages of 5: the run's, not the deploy's 2
    drain(stack, stack.forwarder(jobs=reg8))
    assert all(t.shard == shard_of(t.task_id, 4) for t in task_records(stack, "r1"))
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED
    parts = {c["payload"]["shard"] for c in stack.service.calls if c["payload"]["kind"] == "reduce-part"}
    assert parts == {0, 1, 2, 3}


def test_7_a_result_over_the_item_limit_fails_its_task_and_counts_the_others(stack: Stack) -> None:
    # GIVEN a service that answers one company with a 500 KB result
    stack.service.behaviours["C0000002"] = Behaviour(body=json.dumps({"blob": "x" * 500_000}).encode())
    _, reg = job_with(tolerated_failure_pct=50.0)
    start(stack, companies(5))
    # WHEN the batch is settled
    drain(stack, stack.forwarder(jobs=reg))
    # THEN the big one is FAILED saying why, the other four SUCCEEDED, and the run ends
    by_item = {t.item_id: t for t in task_records(stack, "r1")}
    assert by_item["C0000002"].state is TaskState.FAILED and "400 KB" in (by_item["C0000002"].error or "")
    assert sum(t.state is TaskState.SUCCEEDED for t in by_item.values()) == 4
    assert stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED


def test_9_a_resumed_page_sends_the_same_items_after_a_row_was_deleted(stack: Stack) -> None:
    # GIVEN a table of 12 companies read in pages of 5, and a splitter that dies after sending page 1
    seed_companies(stack.ddb, stack.companies, 12)
    job, reg = job_with(source={"kind": "dynamodb", "table": "companies", "segments": 1, "page_size": 5})
    with pytest.raises(InjectedCrash):
        stack.splitter(jobs=reg, faults=CrashOnFirstSend()).handle({"job": job.name, "run_id": "r1"}, ENOUGH_TIME)
    looked = stack.receive(stack.task_queue, 10)
    looked += stack.receive(stack.task_queue, 10)  # (there are only 5)
    stack.settle(stack.task_queue, looked)  # only looked at: back in the queue
    sent = {e.task_id: e.item["company_id"] for e in (TaskEnvelope.parse(r["body"]) for r in looked)}
    # WHEN a row of that page is deleted, then the split resumes
    gone = sent["0-000000001"]
    stack.ddb.delete_item(TableName=stack.companies, Key={"company_id": {"S": gone}})
    stack.split({"job": job.name, "run_id": "r1"}, jobs=reg)
    # THEN every re-sent task carries the item it carried the first time, and every live row
    # is processed once
    drain(stack, stack.forwarder(jobs=reg))
    for call in stack.service.task_calls():
        tid = call["payload"]["task_id"]
        if tid in sent:
            assert call["payload"]["item"]["company_id"] == sent[tid]
    processed = {t.item_id for t in task_records(stack, "r1")}
    live = {f"C{i:07d}" for i in range(12)} - {gone}
    assert live <= processed and stack.ledger.require_run("r1").status is RunStatus.SUCCEEDED


def test_10_retry_failed_reads_only_failures_page_by_page(stack: Stack) -> None:
    # GIVEN a run of 30 with 5 failures
    for i in (1, 7, 12, 20, 29):
        stack.service.behaviours[f"C{i:07d}"] = Behaviour(status=400)
    job, reg = job_with(source={"kind": "inline", "page_size": 2}, tolerated_failure_pct=50.0)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(30)}, jobs=reg)
    drain(stack, stack.forwarder(jobs=reg))
    stack.service.behaviours.clear()
    # WHEN retry-failed runs in pages of 2, one page per invocation (time runs low after each)
    calls = {"n": 0}

    def low_after_one_page() -> int:
        calls["n"] += 1
        return 900_000 if calls["n"] % 2 else 1_000

    res = stack.splitter(jobs=reg).handle({"job": job.name, "run_id": "r2", "retry_of": "r1"}, low_after_one_page)
    while stack.continuations:
        res = stack.splitter(jobs=reg).handle(stack.continuations.pop(0), low_after_one_page)
    # THEN the new run holds exactly the 5 failed items
    assert res["expected"] == 5 and calls["n"] > 3
    drain(stack, stack.forwarder(jobs=reg))
    retried = {c["payload"]["item"]["company_id"] for c in stack.service.task_calls() if c["payload"]["run_id"] == "r2"}
    assert retried == {f"C{i:07d}" for i in (1, 7, 12, 20, 29)}


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("s3://no-such-bucket-x/items.jsonl", "NoSuchBucket"),
        ("s3://reports/missing.jsonl", "does not exist"),
        ("s3://reports/bad.jsonl", "not JSON"),
    ],
)
def test_b_an_unreadable_source_fails_the_run_with_the_reason(stack: Stack, uri: str, needle: str) -> None:
    stack.s3.put_object(Bucket="reports", Key="bad.jsonl", Body=b'{"company_id": "C1"}\n{oops\n')
    res = stack.split({"job": JOB.name, "run_id": "r1", "items_uri": uri})
    # the run is stopped and its reduce claimed: the reduce reports it and ends it FAILED
    assert res["status"] == "REDUCING" and res["expected"] == 0
    stack.drive(stack.forwarder().handle, stack.task_queue)
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.FAILED and run.report_uri
    assert uri in (run.error or "") and needle in (run.error or "") and "Fix:" in (run.error or "")


def test_b_a_transient_source_error_is_retried_then_fails_the_run(stack: Stack) -> None:
    from botocore.exceptions import ClientError

    class Throttled:
        def __getattr__(self, name: str) -> Any:
            return getattr(stack.s3, name)

        def get_object(self, **kw: Any) -> Any:
            if kw["Key"] != "x.jsonl":
                return stack.s3.get_object(**kw)
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "reduce your request rate"}}, "GetObject")

    event = {"job": JOB.name, "run_id": "r1", "items_uri": "s3://reports/x.jsonl"}
    for _ in range(4):
        with pytest.raises(ClientError, match="SlowDown"):
            stack.splitter(s3=Throttled()).handle(event, ENOUGH_TIME)
        assert stack.ledger.require_run("r1").status is RunStatus.SPLITTING
    stack.splitter(s3=Throttled()).handle(event, ENOUGH_TIME)
    stack.drive(stack.forwarder().handle, stack.task_queue)
    run = stack.ledger.require_run("r1")
    assert run.status is RunStatus.FAILED and "SlowDown" in (run.error or "") and "5 attempts" in (run.error or "")


def test_params_and_the_source_are_recorded_on_the_run(stack: Stack) -> None:
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(2), "params": {"as_of": "2026-11-30"}})
    run = stack.ledger.require_run("r1")
    assert run.params == {"as_of": "2026-11-30"}
    assert run.source["kind"] == "inline" and run.source["count"] == 2 and run.shard_count == JOB.shard_count
    assert stack.ledger.inline_items("r1") == companies(2)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"job": "credit-scores", "items": [], "retry_of": "r0"}, "at most one of"),
        ({"job": "credit-scores", "items_uri": "https://x/y"}, "'items_uri' must be an s3://"),
        ({"job": "credit-scores", "source_uri": "s3://b/k", "items_format": "xml"}, "'items_format'"),
        ({"job": "credit-scores", "params": [1]}, "'params' must be a JSON object"),
    ],
)
def test_bad_run_time_inputs_are_refused_with_a_reason(event: Any, message: str) -> None:
    with pytest.raises(StartEventError, match=message):
        parse_start_event(event)


def test_inline_items_too_big_for_the_ledger_are_refused_naming_items_uri(stack: Stack) -> None:
    big = [{"company_id": f"C{i:07d}", "pad": "x" * 1000} for i in range(400)]
    with pytest.raises(StartEventError, match="items_uri"):
        stack.splitter().handle({"job": JOB.name, "run_id": "r1", "items": big}, ENOUGH_TIME)
    assert stack.ledger.get_run("r1") is None


def test_5_a_repair_that_does_not_finish_in_one_sweep_continues_and_raises_the_alarm(stack: Stack) -> None:
    from microprocess.ledger import CRASH_AFTER_TASK_WRITE, Ledger

    def crash(point: str) -> None:
        if point == CRASH_AFTER_TASK_WRITE:
            raise InjectedCrash(point)

    recs = running_run(stack, 3)
    with pytest.raises(InjectedCrash):
        stack.forwarder(ledger=Ledger("ledger", client=stack.ddb, crash_hook=crash)).handle({"Records": recs})
    # WHEN sweeps with a repair budget of 0 s (one shard per sweep) run
    reports = []
    for _ in range(JOB.shard_count):
        reports.append(sweeper(stack, repair_budget_s=0).sweep())
    # THEN each unfinished step reports the run stuck, and the last one repairs and claims
    assert [r.repairs_continuing for r in reports[:-1]] == [["r1"]] * (JOB.shard_count - 1)
    assert all(r.stuck == ["r1"] for r in reports[:-1]) and stack.metric("StuckRuns") == JOB.shard_count - 1
    assert reports[-1].repaired == ["r1"] and reports[-1].reduces_claimed == ["r1"]


def test_5_a_sweep_that_fails_on_a_run_raises_the_stuck_alarm(stack: Stack) -> None:
    running_run(stack, 2)

    class Broken:
        def __getattr__(self, name: str) -> Any:
            return getattr(stack.ledger, name)

        def repair_state(self, run_id: str) -> Any:
            raise RuntimeError("DynamoDB is down")

    s = Sweeper(
        jobs=REGISTRY,
        ledger=Broken(),  # type: ignore[arg-type]
        sender=stack.sender,
        restart_splitter=lambda e: None,
        stuck_after_s=0,
        reduce_timeout_s=0,
        emit=stack.emit,
    )
    report = s.sweep()
    assert report.stuck == ["r1"] and "DynamoDB is down" in report.errors[0] and stack.metric("StuckRuns") == 1


def test_a_splitter_that_finds_its_page_accounted_by_another_leaves_it_the_segment(
    stack: Stack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-segment source of 30 items in pages of 5, and a second splitter live on the
    # same segment (a doubled start, or a sweeper restart while the first was alive) that
    # accounts the first page just before this one does
    seed_companies(stack.ddb, stack.companies, 30)
    job, reg = job_with(source={"kind": "dynamodb", "table": "companies", "segments": 1, "page_size": 5})
    splitter = stack.splitter(jobs=reg)
    real = stack.ledger.account_page
    raced: list[str] = []

    def other_splitter_first(run_id: str, **kw: Any) -> bool:
        if not raced:
            raced.append(kw["cursor_from"])
            assert real(run_id, **kw)  # the other splitter's write
        return real(run_id, **kw)

    monkeypatch.setattr(stack.ledger, "account_page", other_splitter_first)
    # WHEN this splitter reads the segment
    with caplog.at_level(logging.WARNING, logger="microprocess.pipeline.splitter"):
        res = splitter.handle({"job": job.name, "run_id": "r1"}, ENOUGH_TIME)
    # THEN it sent its one page and stopped: the other one goes on from the accounted cursor
    # (before, it followed the other one page by page, sending every page twice)
    assert raced and res["status"] == "SPLITTING" and not res["continued"]
    assert stack.depth(stack.task_queue) == 5
    assert stack.metric("SplitSegmentsYielded") == 1
    assert any("accounted by another splitter" in r.getMessage() for r in caplog.records)
    run = stack.ledger.require_run("r1")
    assert run.expected == 5 and run.cursors["0"] != raced[0]
    # AND the other splitter (here: a fresh one from the run's cursor) finishes the split exactly
    assert stack.split({"job": job.name, "run_id": "r1"}, jobs=reg)["expected"] == 30
    assert stack.depth(stack.task_queue) == 30


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("s3://reports/claims/credit-scores/other-run/0-000000000.json", "belongs to run 'other-run'"),
        ("s3://reports/claims/invoice-reminders/r1/0-000000000.json", "is not a claim of job 'credit-scores'"),
    ],
)
def test_a_claim_check_of_another_run_or_job_is_dead_lettered_unread(stack: Stack, ref: str, reason: str) -> None:
    # GIVEN a running run, and a readable claim in the platform bucket that belongs to another run or job
    running_run(stack, 1)
    stack.s3.put_object(Bucket="reports", Key=ref.removeprefix("s3://reports/"), Body=b'{"company_id": "SECRET"}')
    record = sqs_record(envelope_for("r1", "0-000000000", item_ref=ref), message_id="foreign-claim")
    # WHEN the forwarder takes a task of r1 that names it
    res = stack.forwarder(claims_bucket="reports").handle({"Records": [record]})
    # THEN it is dead-lettered naming the owner, and the other item is never sent to the service
    assert res == {"batchItemFailures": []} and stack.service.task_calls() == []
    [dead] = [m["messageAttributes"][REASON_ATTRIBUTE]["stringValue"] for m in dlq_messages(stack)]
    assert reason in dead


def test_a_retry_run_may_send_the_claims_of_the_run_it_retries(stack: Stack) -> None:
    # GIVEN run r1's claim-checked item, and a retry run r2 of r1 (retry-failed re-sends r1's claims)
    big = {"company_id": "C0000001", "blob": "x" * 100}
    key = "claims/credit-scores/r1/0-000000007.json"
    stack.s3.put_object(Bucket="reports", Key=key, Body=json.dumps(big).encode())
    stack.ledger.create_run("r1", JOB)
    stack.ledger.create_run("r2", JOB, source_run="r1")
    assert stack.ledger.account_page("r2", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=1)
    stack.ledger.finish_split("r2")
    record = sqs_record(envelope_for("r2", "0-000000000", item_ref=f"s3://reports/{key}"), message_id="retry")
    # WHEN the forwarder takes r2's task
    assert stack.forwarder(claims_bucket="reports").handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN the item of r1's claim is pushed
    assert stack.service.task_calls()[0]["payload"]["item"] == big
