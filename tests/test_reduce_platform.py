"""The platform's built-in reduce against in-process AWS (moto: DynamoDB, S3, SES, SQS)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import boto3
import moto.s3.models
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from microprocess.declarations import JobDeclaration, declare
from microprocess.ledger import CURSOR_DONE, Ledger, RunStatus, TaskOutcome, TaskRecord, TaskState
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind, shard_of
from microprocess.pipeline.queue import QueueSender
from microprocess.reduce import PlatformReducer, ReportLayout
from microprocess.reduce.layout import PART_TAG_KEY, PART_TAG_VALUE
from microprocess.reduce.parts import PartSinks, write_rows
from microprocess.reduce.s3stream import S3StreamWriter
from tests.declared import INVOICE_REMINDERS

REGION = "us-east-1"
BUCKET = "reports"
SENDER = "reports@example.com"


def platform_job(**changes: Any) -> JobDeclaration:
    base = {
        **INVOICE_REMINDERS.model_dump(),
        "shard_count": 4,
        "counter_count": 2,
        "tolerated_failure_pct": 30.0,
        "completion_path": "/runs/done",
    }
    return declare(**{**base, **changes})


@dataclass
class Env:
    ledger: Ledger
    s3: Any
    ses: Any
    sqs: Any
    queue: str

    def reducer(self, **kw: Any) -> PlatformReducer:
        return PlatformReducer(
            ledger=self.ledger,
            s3=self.s3,
            ses=self.ses,
            bucket=BUCKET,
            completion_sender=QueueSender(client=self.sqs, queue_url=self.queue, threads=1),
            email_sender=kw.pop("email_sender", SENDER),
            **kw,
        )

    def text(self, key: str) -> str:
        return str(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode())

    def queued(self) -> list[TaskEnvelope]:
        out = []
        while msgs := self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages", []):
            out += [TaskEnvelope.parse(m["Body"]) for m in msgs]
            for m in msgs:
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=m["ReceiptHandle"])
        return out


def sent_mail() -> list[Any]:
    return list(ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages)


@pytest.fixture
def env(ledger: Ledger) -> Iterator[Env]:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    ses = boto3.client("ses", region_name=REGION)
    ses.verify_email_identity(EmailAddress=SENDER)
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="reduces")["QueueUrl"]
    yield Env(ledger, s3, ses, sqs, queue)


def outcome(job: JobDeclaration, i: int, result: Any = None, *, failed: bool = False, attempts: int = 1) -> TaskOutcome:
    task_id = f"0-{i:09d}"
    return TaskOutcome(
        task_id=task_id,
        shard=shard_of(task_id, job.shard_count),
        state=TaskState.FAILED if failed else TaskState.SUCCEEDED,
        attempts=attempts,
        item_id=f"INV-{i}",
        result=None if failed else result,
        error=f"HTTP 422: invoice {i} is closed" if failed else None,
        item={"invoice_id": f"INV-{i}"} if failed else None,
    )


def reducing_run(ledger: Ledger, job: JobDeclaration, outcomes: list[TaskOutcome], run_id: str = "r1") -> str:
    """A run of `outcomes` (task ids 0-000000000..), split and recorded: REDUCING."""
    ledger.create_run(run_id, job)
    assert ledger.account_page(run_id, segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=len(outcomes))
    ledger.finish_split(run_id)
    for start in range(0, len(outcomes), 10):
        ledger.record_outcomes(run_id, job.counter_count, outcomes[start : start + 10])
    assert ledger.require_run(run_id).status is RunStatus.REDUCING
    return run_id


def reduce_all(env: Env, job: JobDeclaration, run_id: str, **kw: Any) -> dict[str, Any]:
    reducer = env.reducer(**kw)
    for shard in range(job.shard_count):
        reducer.reduce_part(job, run_id, shard)
    return reducer.finalize(job, run_id)


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


DAYS = [0, 1, 4, 5, 9, 10, 23, 45]


def invoice_outcomes(job: JobDeclaration, n_failed: int = 3) -> list[TaskOutcome]:
    """len(DAYS) successes with known days overdue, then `n_failed` failures."""
    ok = [
        outcome(job, i, {"days_overdue": d, "customer": {"name": f"C{i}", "tier": {"level": i % 3}}, "tags": ["x"]})
        for i, d in enumerate(DAYS)
    ]
    bad = [outcome(job, len(DAYS) + i, failed=True, attempts=3) for i in range(n_failed)]
    return ok + bad


def test_the_report_has_exactly_one_row_per_task_successes_and_failures(env: Env) -> None:
    # GIVEN a reducing run of 8 successes and 3 failures spread over 4 shards
    job = platform_job()
    outcomes = invoice_outcomes(job)
    run_id = reducing_run(env.ledger, job, outcomes)
    # WHEN every part and the finalize run
    answer = reduce_all(env, job, run_id)
    layout = ReportLayout(BUCKET, job.name, run_id)
    # THEN report.csv and report.jsonl hold each task exactly once
    rows = csv_rows(env.text(layout.report_csv))
    lines = [json.loads(line) for line in env.text(layout.report_jsonl).splitlines()]
    expected_ids = sorted(o.task_id for o in outcomes)
    assert sorted(r["task_id"] for r in rows) == expected_ids
    assert sorted(r["task_id"] for r in lines) == expected_ids
    # AND a failure's row carries its state, attempts and error; a success's row its result
    by_id = {r["task_id"]: r for r in rows}
    failed = by_id["0-000000008"]
    assert (failed["invoice_id"], failed["state"], failed["attempts"]) == ("INV-8", "FAILED", "3")
    assert failed["error"] == "HTTP 422: invoice 8 is closed" and failed["days_overdue"] == ""
    assert by_id["0-000000006"]["days_overdue"] == "23" and by_id["0-000000006"]["error"] == ""
    # AND failures.csv lists exactly the 3 failures
    failures = csv_rows(env.text(layout.failures_csv))
    assert sorted(f["task_id"] for f in failures) == ["0-000000008", "0-000000009", "0-000000010"]
    assert list(failures[0]) == ["task_id", "invoice_id", "attempts", "error"]
    # AND the run ended SUCCEEDED (3 of 11 failed: 27 %, within the 30 % tolerated) with its report URI
    run = env.ledger.require_run(run_id)
    assert run.status is RunStatus.SUCCEEDED and run.report_uri == layout.uri == answer["report_uri"]


def test_status_is_the_ledgers_decision_and_summary_json_says_the_same(env: Env) -> None:
    # GIVEN 3 failures of 11 tasks (27.3 %): FAILED for a 20 % tolerance, SUCCEEDED for a 30 % one
    for run_id, tolerated, status in (("r-strict", 20.0, RunStatus.FAILED), ("r-lenient", 30.0, RunStatus.SUCCEEDED)):
        job = platform_job(tolerated_failure_pct=tolerated)
        reducing_run(env.ledger, job, invoice_outcomes(job), run_id)
        # WHEN reduced
        answer = reduce_all(env, job, run_id)
        # THEN the ledger decided the status, and summary.json and the answer report that decision
        run = env.ledger.require_run(run_id)
        summary = json.loads(env.text(ReportLayout(BUCKET, job.name, run_id).summary_json))
        assert run.status is status and answer["ended"] == str(status)
        assert summary["status"] == str(status) and summary["finished_at"] == run.finished_at
        assert (summary["expected"], summary["succeeded"], summary["failed"], summary["rows"]) == (11, 8, 3, 11)
        assert summary["complete"] is True and summary["failed_pct"] == 27.273
        assert summary["attempts"] == {"total": 8 + 9, "retried_tasks": 3, "max": 3}
        assert summary["throughput"]["tasks_per_s"] is None or summary["throughput"]["tasks_per_s"] > 0
        assert summary["failure_count"] == 3 and summary["failures"][0]["error"].startswith("HTTP 422")


def test_results_are_flattened_into_columns_without_result_fields(env: Env) -> None:
    job = platform_job(result_fields=None)
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job, n_failed=0))
    reduce_all(env, job, run_id)
    rows = csv_rows(env.text(ReportLayout(BUCKET, job.name, run_id).report_csv))
    # THEN the header is the task columns, then every flattened result field in order of appearance
    assert list(rows[0]) == [
        "task_id",
        "invoice_id",
        "state",
        "attempts",
        "error",
        "days_overdue",
        "customer.name",
        "customer.tier.level",
        "tags",
    ]
    row = next(r for r in rows if r["task_id"] == "0-000000005")
    assert (row["customer.name"], row["customer.tier.level"], row["tags"]) == ("C5", "2", '["x"]')


def test_result_fields_choose_the_columns(env: Env) -> None:
    # GIVEN a job that keeps only the customer's name (and its histogram field)
    job = platform_job(result_fields=("customer.name",))
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job, n_failed=1))
    reduce_all(env, job, run_id)
    layout = ReportLayout(BUCKET, job.name, run_id)
    rows = csv_rows(env.text(layout.report_csv))
    # THEN report.csv and report.jsonl carry only those result fields
    assert list(rows[0]) == ["task_id", "invoice_id", "state", "attempts", "error", "customer.name", "days_overdue"]
    line = json.loads(env.text(layout.report_jsonl).splitlines()[0])
    assert set(line) <= {"task_id", "invoice_id", "state", "attempts", "error", "customer.name", "days_overdue"}


def test_histogram_of_the_declared_field_in_summary_and_page(env: Env) -> None:
    # GIVEN days overdue 0, 1, 4, 5, 9, 10, 23, 45 and 3 failures
    job = platform_job()
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    reduce_all(env, job, run_id)
    layout = ReportLayout(BUCKET, job.name, run_id)
    histogram = json.loads(env.text(layout.summary_json))["histogram"]
    # THEN width-5 bins from 0 hold 3, 2, 1, 0, 1, 0, 0, 0, 1; the failures have no value
    assert histogram["field"] == "days_overdue"
    assert [(b["from"], b["to"], b["count"]) for b in histogram["bins"]] == [
        (0, 5, 3),
        (5, 10, 2),
        (10, 15, 1),
        (15, 20, 0),
        (20, 25, 1),
        (25, 30, 0),
        (30, 35, 0),
        (35, 40, 0),
        (40, 45, 1),
    ]
    assert (histogram["count"], histogram["skipped"], histogram["min"], histogram["max"]) == (8, 3, 0, 45)
    # AND report.html draws one bar per bin with those counts, inline SVG
    page = env.text(layout.report_html)
    assert '<svg id="histogram"' in page
    assert page.count('class="bar"') == 9
    assert 'data-from="20" data-to="25" data-count="1"' in page and 'data-from="0" data-to="5" data-count="3"' in page


def test_no_histogram_without_a_histogram_field(env: Env) -> None:
    job = platform_job(histogram_field=None)
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    reduce_all(env, job, run_id)
    layout = ReportLayout(BUCKET, job.name, run_id)
    assert json.loads(env.text(layout.summary_json))["histogram"] is None
    assert "<svg" not in env.text(layout.report_html)


def test_the_part_builder_streams_rows_as_it_reads_them(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN 2,000 task records from a generator and 4 KiB upload parts
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024)
    job = platform_job()
    out = S3StreamWriter(env.s3, BUCKET, "parts/streamed.jsonl", part_bytes=4096)
    pulled = 0
    buffered: list[int] = []
    parts_seen: list[int] = []

    def records() -> Iterator[TaskRecord]:
        nonlocal pulled
        for i in range(2000):
            buffered.append(len(out._buffer))
            parts_seen.append(out.part_count)
            pulled += 1
            yield TaskRecord(f"0-{i:09d}", 0, TaskState.SUCCEEDED, 1, f"INV-{i}", {"days_overdue": i}, None, "t")

    # WHEN the part is written
    with out:
        stats = write_rows(records(), job, PartSinks(rows=out))
    # THEN rows left for S3 while the generator was still being read, and no more than one part was ever held
    assert pulled == 2000 and stats.rows == 2000
    assert parts_seen[1000] > 0 and parts_seen[-1] > parts_seen[1000]
    assert max(buffered) < 4096
    lines = env.s3.get_object(Bucket=BUCKET, Key="parts/streamed.jsonl")["Body"].read().splitlines()
    assert len(lines) == 2000 and json.loads(lines[-1])["days_overdue"] == 1999


def test_the_report_files_are_multipart_uploads_when_large(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN 1 KiB upload parts and a run of 300 tasks
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 256)
    job = platform_job()
    run_id = reducing_run(env.ledger, job, [outcome(job, i, {"days_overdue": i}) for i in range(300)])
    # WHEN reduced with 1 KiB parts
    reduce_all(env, job, run_id, part_bytes=1024)
    layout = ReportLayout(BUCKET, job.name, run_id)
    rows = csv_rows(env.text(layout.report_csv))
    # THEN the report is whole and each file was written in several parts (a multipart ETag ends "-<parts>")
    assert len(rows) == 300
    for key in (layout.report_csv, layout.report_jsonl):
        etag = env.s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
        assert int(etag.rpartition("-")[2]) > 5


def test_email_is_sent_once_even_when_the_finalize_is_delivered_twice(env: Env) -> None:
    # GIVEN a reduced run
    job = platform_job()
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    first = reduce_all(env, job, run_id)
    # WHEN the finalize is delivered again
    again = env.reducer().finalize(job, run_id)
    # THEN one email went out, to the job's recipients, with the summary and a presigned link
    [mail] = sent_mail()
    assert mail.destinations["ToAddresses"] == list(job.recipients) and mail.source == SENDER
    assert mail.subject == f"[microprocess] {job.name} run {run_id}: SUCCEEDED"
    assert "11 expected, 8 succeeded, 3 failed" in mail.body and "Signature=" in mail.body
    assert "report.html" in mail.body and "0-000000008 INV-8: HTTP 422" in mail.body
    assert first["notices"] == "completion enqueued, email sent" and again["notices"] == "already sent"
    assert again["ended"] is None and again["status"] == "SUCCEEDED"


def test_completion_is_enqueued_once_after_the_report_exists(env: Env) -> None:
    # GIVEN a reduced run of a job with a completion_path
    job = platform_job()
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    reduce_all(env, job, run_id)
    env.reducer().finalize(job, run_id)  # delivered twice
    # THEN exactly one completion envelope is queued, keyed <run>:completion, with the run's outcome
    [completion] = env.queued()
    assert completion.kind is TaskKind.COMPLETION and completion.idempotency_key == f"{run_id}:completion"
    assert completion.item == {
        "run_id": run_id,
        "job": job.name,
        "status": "SUCCEEDED",
        "expected": 11,
        "succeeded": 8,
        "failed": 3,
        "report_uri": f"s3://{BUCKET}/reports/{job.name}/{run_id}/",
    }
    env.s3.head_object(Bucket=BUCKET, Key=ReportLayout(BUCKET, job.name, run_id).report_csv)


def test_no_completion_without_completion_path_and_no_email_without_sender(env: Env) -> None:
    job = platform_job(completion_path=None)
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    answer = reduce_all(env, job, run_id, email_sender="")
    assert env.queued() == [] and sent_mail() == [] and answer["notices"] == "none declared"


def test_a_failed_email_is_retried_by_the_next_finalize_and_the_status_stays(env: Env) -> None:
    # GIVEN SES refuses the first send (the sender is not verified yet)
    job = platform_job(completion_path=None)
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    with pytest.raises(Exception, match="not verified"):
        reduce_all(env, job, run_id, email_sender="unverified@example.com")
    # THEN the run has ended with its report, the email claim is given back
    assert env.ledger.require_run(run_id).status is RunStatus.SUCCEEDED and sent_mail() == []
    # WHEN the finalize is delivered again with a working sender
    answer = env.reducer().finalize(job, run_id)
    # THEN the email goes out once and the run's status is unchanged
    assert answer["notices"] == "email sent" and len(sent_mail()) == 1
    assert env.ledger.require_run(run_id).status is RunStatus.SUCCEEDED


def test_parts_are_tagged_for_expiry_like_the_bucket_rule_expects(env: Env) -> None:
    from infra.reports import PART_TAG_KEY as INFRA_KEY
    from infra.reports import PART_TAG_VALUE as INFRA_VALUE

    assert (PART_TAG_KEY, PART_TAG_VALUE) == (INFRA_KEY, INFRA_VALUE)
    job = platform_job()
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    env.reducer().reduce_part(job, run_id, 0)
    tags = env.s3.get_object_tagging(Bucket=BUCKET, Key=ReportLayout(BUCKET, job.name, run_id).part_rows(0))
    assert {t["Key"]: t["Value"] for t in tags["TagSet"]} == {PART_TAG_KEY: PART_TAG_VALUE}


def test_a_missing_part_is_built_during_finalize(env: Env) -> None:
    # GIVEN a run whose part 2 was never reduced
    job = platform_job()
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    reducer = env.reducer()
    for shard in (0, 1, 3):
        reducer.reduce_part(job, run_id, shard)
    # WHEN finalized THEN the report is still complete
    reducer.finalize(job, run_id)
    assert len(csv_rows(env.text(ReportLayout(BUCKET, job.name, run_id).report_csv))) == 11


def test_a_shard_whose_rows_bring_new_fields_late_still_gets_every_column(env: Env) -> None:
    # GIVEN one shard whose first task failed, then results that gain a field on the way
    job = platform_job(shard_count=1, result_fields=None, histogram_field=None)
    outcomes = [
        outcome(job, 0, failed=True),
        outcome(job, 1, {"a": 1}),
        outcome(job, 2, {"a": 2, "b": {"c": "x,y"}}),
    ]
    run_id = reducing_run(env.ledger, job, outcomes)
    # WHEN reduced
    reduce_all(env, job, run_id)
    # THEN report.csv has the union of the columns and each row its own values
    rows = csv_rows(env.text(ReportLayout(BUCKET, job.name, run_id).report_csv))
    assert list(rows[0]) == ["task_id", "invoice_id", "state", "attempts", "error", "a", "b.c"]
    assert [(r["state"], r["a"], r["b.c"]) for r in rows] == [
        ("FAILED", "", ""),
        ("SUCCEEDED", "1", ""),
        ("SUCCEEDED", "2", "x,y"),
    ]


def test_parts_with_different_fields_are_joined_under_one_header(env: Env) -> None:
    # GIVEN 40 tasks over 4 shards where only task 17 reports an extra field
    job = platform_job(result_fields=None, histogram_field=None)
    outcomes = [outcome(job, i, {"n": i, **({"extra": True} if i == 17 else {})}) for i in range(40)]
    run_id = reducing_run(env.ledger, job, outcomes)
    reduce_all(env, job, run_id)
    rows = csv_rows(env.text(ReportLayout(BUCKET, job.name, run_id).report_csv))
    # THEN every row has the same columns and the extra field only where it was reported
    assert len(rows) == 40 and all(list(r) == list(rows[0]) for r in rows) and "extra" in rows[0]
    assert {r["task_id"]: r["extra"] for r in rows if r["extra"]} == {"0-000000017": "true"}
    assert sorted(int(r["n"]) for r in rows) == list(range(40))


def test_the_reducer_refuses_a_shard_the_run_does_not_have(env: Env) -> None:
    from microprocess.reduce import ReduceRefused

    job = platform_job()
    run_id = reducing_run(env.ledger, job, invoice_outcomes(job))
    with pytest.raises(ReduceRefused, match=r"run r1 has shards 0..3; got shard 9"):
        env.reducer().reduce_part(job, run_id, 9)


def test_the_page_escapes_what_the_service_and_the_items_wrote(env: Env) -> None:
    # GIVEN a failure whose error text holds markup
    job = platform_job(tolerated_failure_pct=100.0)
    bad = outcome(job, 0, failed=True)
    bad = TaskOutcome(**{**bad.__dict__, "error": "<script>alert(1)</script>"})
    run_id = reducing_run(env.ledger, job, [bad])
    reduce_all(env, job, run_id)
    page = env.text(ReportLayout(BUCKET, job.name, run_id).report_html)
    # THEN it is shown as text, never as markup
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


#: Cells a spreadsheet would run as formulas (OWASP "CSV Injection"), one per trigger.
HOSTILE = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tx", "\rx"]


def test_report_cells_and_headers_that_start_a_formula_are_quoted_in_every_csv(env: Env) -> None:
    # GIVEN a run whose item ids, result fields (values and names) and errors start with formula triggers
    job = platform_job(result_fields=None)
    outcomes = []
    for i, text in enumerate(HOSTILE):
        ok = outcome(job, 2 * i, {"note": text, text: 1, "score": -5})
        bad = outcome(job, 2 * i + 1, failed=True)
        outcomes += [replace(ok, item_id=text), replace(bad, item_id=text, error=text)]
    run_id = reducing_run(env.ledger, job, outcomes)
    # WHEN reduced
    reduce_all(env, job, run_id)
    layout = ReportLayout(BUCKET, job.name, run_id)
    report = csv_rows(env.text(layout.report_csv))
    failures = csv_rows(env.text(layout.failures_csv))
    # THEN every such cell and header starts with a single quote and keeps its text after it
    quoted = {"'" + t for t in HOSTILE}
    assert {r["invoice_id"] for r in report} == quoted
    assert {r["note"] for r in report if r["note"]} == quoted
    assert quoted <= set(report[0])
    assert {f["invoice_id"] for f in failures} == quoted and {f["error"] for f in failures} == quoted
    # AND a JSON number stays a number; the JSONL keeps the service's text verbatim
    assert {r["score"] for r in report if r["state"] == "SUCCEEDED"} == {"-5"}
    lines = [json.loads(line) for line in env.text(layout.report_jsonl).splitlines()]
    assert {r["invoice_id"] for r in lines} == set(HOSTILE)
