"""The two-level reduce on the queue role: reduce parts, finalize, the report files, the email."""

# ruff: noqa: F811  (pytest fixtures are imported, then named as test parameters)

from __future__ import annotations

import ast
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import moto.s3.models
import pytest
from fastapi.testclient import TestClient
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from microprocess.ledger import CURSOR_DONE, RunStatus, TaskOutcome, TaskState
from microprocess.pipeline.envelope import shard_of
from microprocess.reduce.s3stream import S3StreamWriter
from microservice.reduce import PART_TAG_KEY, PART_TAG_VALUE, ReportLayout
from microservice.report_stats import FAILURE_COLUMNS, REPORT_COLUMNS
from tests.declared import CREDIT_SCORES
from tests.microservice_fixtures import (  # noqa: F401  (env, queue_client: fixtures)
    BUCKET,
    REGION,
    SENDER,
    Env,
    client_for,
    env,
    finalize_payload,
    queue_client,
    queue_settings,
    record_run,
    reduce_payload,
    signed_post,
)

JOB = CREDIT_SCORES
#: The same job with 4 shards (runs keep the shard count they were created with): fewer parts, faster tests.
SMALL = CREDIT_SCORES.model_copy(update={"shard_count": 4, "counter_count": 4})
PART = JOB.reduce_part_path
FINALIZE = JOB.reduce_finalize_path


def sent_mail() -> list[Any]:
    return list(ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages)


def read_text(env: Env, key: str) -> str:
    return env.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def read_csv(env: Env, key: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(read_text(env, key))))


def reduce_all(client: TestClient, run_id: str, shards: int = JOB.shard_count) -> list[dict[str, Any]]:
    answers = []
    for shard in range(shards):
        resp = signed_post(client, PART, reduce_payload(run_id, shard))
        assert resp.status_code == 200, resp.text
        answers.append(resp.json())
    return answers


@pytest.fixture
def finished_run(env: Env) -> tuple[str, dict[str, TaskOutcome]]:
    """A run of 300 tasks, every 25th failed (12 failures, 4%: above the 1% tolerance)."""
    return "run-300", record_run(env.ledger, "run-300", total=300, failed_every=25, batch=25)


def test_reduce_parts_stream_each_shard_into_a_part_csv_and_stats(queue_client: TestClient, env: Env) -> None:
    # GIVEN a run of 200 tasks over the job's 16 shards, every 20th failed
    run_id = "run-200"
    outcomes = record_run(env.ledger, run_id, total=200, failed_every=20, batch=25)
    layout = ReportLayout(BUCKET, JOB.name, run_id)
    # WHEN every shard is reduced
    answers = reduce_all(queue_client, run_id)
    # THEN each part holds exactly its shard's tasks, with header, at the deterministic key
    for shard, answer in enumerate(answers):
        expected = {t for t, o in outcomes.items() if o.shard == shard}
        rows = read_csv(env, f"reports/credit-scores/{run_id}/parts/part-{shard:03d}.csv")
        assert {r["task_id"] for r in rows} == expected
        assert answer["rows"] == len(expected) == len(rows)
        stats = json.loads(read_text(env, layout.part_stats(shard)))
        assert stats == answer
        failed = [t for t in expected if outcomes[t].state is TaskState.FAILED]
        assert (stats["failed"], stats["failure_count"], len(stats["failures"])) == (len(failed),) * 3
        assert sum(stats["bands"].values()) == stats["succeeded"]
    # AND the parts add up to the run
    assert sum(a["rows"] for a in answers) == 200
    assert sum(a["failed"] for a in answers) == 10
    assert sum(a["score_sum"] for a in answers) == sum(
        o.result["score"] for o in outcomes.values() if o.state is TaskState.SUCCEEDED
    )
    assert min(a["score_min"] for a in answers if a["score_min"] is not None) == min(
        o.result["score"] for o in outcomes.values() if o.result
    )


def test_finalize_joins_the_parts_into_one_row_per_task_and_mails_once(
    queue_client: TestClient, env: Env, finished_run: tuple[str, dict[str, TaskOutcome]]
) -> None:
    run_id, outcomes = finished_run
    layout = ReportLayout(BUCKET, JOB.name, run_id)
    reduce_all(queue_client, run_id)
    # WHEN finalize is pushed
    resp = signed_post(queue_client, FINALIZE, finalize_payload(run_id))
    # THEN the answer names the report folder and the summary
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["report_uri"] == f"s3://{BUCKET}/reports/credit-scores/{run_id}/"
    summary = answer["summary"]
    assert (summary["expected"], summary["tasks"], summary["succeeded"], summary["failed"]) == (300, 300, 288, 12)
    assert summary["status"] == "FAILED"  # 4% failed > 1% tolerated
    assert summary["complete"] is True
    assert summary["failure_count"] == len(summary["failures"]) == 12
    assert all(f["error"].startswith("HTTP 500") for f in summary["failures"])

    # AND report.csv has the declared columns and exactly one row per task, results and errors intact
    text = read_text(env, layout.report_csv)
    assert text.splitlines()[0] == ",".join(REPORT_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 300
    assert {r["task_id"] for r in rows} == set(outcomes)
    for row in rows:
        o = outcomes[row["task_id"]]
        assert row["company_id"] == o.item_id
        assert row["state"] == str(o.state)
        assert int(row["attempts"]) == o.attempts
        if o.state is TaskState.SUCCEEDED:
            assert (int(row["score"]), row["band"], row["error"]) == (o.result["score"], o.result["band"], "")
        else:
            assert (row["score"], row["band"], row["error"]) == ("", "", o.error)  # newline in the error survives

    # AND failures.csv lists every failure with its error
    failures = read_csv(env, layout.failures_csv)
    assert list(failures[0]) == list(FAILURE_COLUMNS)
    assert {f["task_id"]: f["error"] for f in failures} == {
        t: o.error for t, o in outcomes.items() if o.state is TaskState.FAILED
    }

    # AND summary.json is the summary; the band counts match the results
    assert json.loads(read_text(env, layout.summary_json)) == summary
    bands = {b: 0 for b in "ABCDE"}
    for o in outcomes.values():
        if o.result:
            bands[o.result["band"]] += 1
    assert summary["bands"] == bands
    assert sum(b["count"] for b in summary["score_histogram"]) == 288

    # AND report.html carries the summary and an inline SVG histogram with one bar per band
    html = read_text(env, layout.report_html)
    assert '<svg id="score-histogram"' in html
    bars = dict(re.findall(r'class="bar" data-band="([A-E])" data-count="(\d+)"', html))
    assert {b: int(n) for b, n in bars.items()} == bands
    assert run_id in html and "FAILED" in html

    # AND one email went to the job's recipients, naming job, run and status, with a presigned link
    mails = sent_mail()
    assert len(mails) == 1
    mail = mails[0]
    assert mail.source == SENDER
    assert mail.destinations["ToAddresses"] == list(JOB.recipients)
    assert JOB.name in mail.subject and run_id in mail.subject and "FAILED" in mail.subject
    assert "report.html" in mail.body and "X-Amz-Signature=" in mail.body
    assert "288 succeeded" in mail.body
    assert answer["email"] == "sent"

    # WHEN finalize is pushed a second time (a redelivery)
    again = signed_post(queue_client, FINALIZE, finalize_payload(run_id))
    # THEN it succeeds with the same report, and no second email is sent
    assert again.status_code == 200
    assert again.json()["report_uri"] == answer["report_uri"]
    assert again.json()["email"] == "already sent"
    assert len(sent_mail()) == 1
    assert len(read_csv(env, layout.report_csv)) == 300


def test_a_clean_run_succeeds_and_the_forwarder_can_finish_it(queue_client: TestClient, env: Env) -> None:
    # GIVEN a run with no failure
    outcomes = record_run(env.ledger, "run-clean", total=60, job=SMALL, batch=20)
    reduce_all(queue_client, "run-clean", SMALL.shard_count)
    # WHEN it is finalized, and the forwarder ends the run with the answer
    answer = signed_post(queue_client, FINALIZE, finalize_payload("run-clean")).json()
    status = env.ledger.finish_run(
        "run-clean",
        tolerated_failure_pct=JOB.tolerated_failure_pct,
        report_uri=answer["report_uri"],
        summary=answer["summary"],
    )
    # THEN the service's status agrees with the ledger's, and the report has every task
    assert answer["summary"]["status"] == "SUCCEEDED" == str(status)
    assert answer["summary"]["failures"] == [] and answer["summary"]["failed"] == 0
    assert len(outcomes) == answer["summary"]["tasks"] == 60
    assert "SUCCEEDED" in sent_mail()[0].subject
    assert env.ledger.require_run("run-clean").status is RunStatus.SUCCEEDED


def test_finalize_builds_a_part_whose_reduce_was_lost(queue_client: TestClient, env: Env) -> None:
    # GIVEN a run where every part but shard 3 was reduced
    outcomes = record_run(env.ledger, "run-lost", total=40, failed_every=9, job=SMALL, batch=20)
    for shard in range(SMALL.shard_count):
        if shard != 3:
            assert signed_post(queue_client, PART, reduce_payload("run-lost", shard)).status_code == 200
    # WHEN finalize runs
    resp = signed_post(queue_client, FINALIZE, finalize_payload("run-lost"))
    # THEN the missing part was built and the report is still complete
    assert resp.status_code == 200
    layout = ReportLayout(BUCKET, JOB.name, "run-lost")
    assert {r["task_id"] for r in read_csv(env, layout.report_csv)} == set(outcomes)
    assert resp.json()["summary"]["tasks"] == 40
    assert resp.json()["summary"]["failed"] == 4


def test_a_failed_send_gives_the_email_claim_back(env: Env) -> None:
    # GIVEN a sender that SES refuses (not verified)
    record_run(env.ledger, "run-mail", total=20, job=SMALL, batch=20)
    settings = queue_settings(ses_sender="unverified@example.com")
    with client_for(settings, env) as client:
        reduce_all(client, "run-mail", SMALL.shard_count)
        # WHEN finalize runs
        first = client.app  # keep the app alive for the retry below
        resp = signed_post(client, FINALIZE, finalize_payload("run-mail"))
        # THEN 502 (the forwarder retries), no mail, and the claim is released
        assert resp.status_code == 502
        assert resp.json()["error"] == "email_failed"
        assert sent_mail() == []
    # WHEN the sender is fixed and finalize is retried
    env.ses.verify_email_identity(EmailAddress="unverified@example.com")
    with client_for(settings, env) as client:
        assert client.app is not first
        retried = signed_post(client, FINALIZE, finalize_payload("run-mail"))
    # THEN the email goes out, once
    assert retried.status_code == 200
    assert retried.json()["email"] == "sent"
    assert len(sent_mail()) == 1


def test_reduce_refuses_what_it_cannot_do(queue_client: TestClient, env: Env) -> None:
    # GIVEN one run still running and one reducing
    env.ledger.create_run("run-busy", JOB)
    record_run(env.ledger, "run-ok", total=20, job=SMALL, batch=20)
    cases = [
        (PART, reduce_payload("no-such-run", 0), 404, "run_not_found"),
        (FINALIZE, finalize_payload("no-such-run"), 404, "run_not_found"),
        (PART, reduce_payload("run-busy", 0), 409, "run_not_reducing"),
        (FINALIZE, finalize_payload("run-busy"), 409, "run_not_reducing"),
        (PART, reduce_payload("run-ok", SMALL.shard_count), 400, "no_such_shard"),
        (PART, reduce_payload("run-ok", 0, job="other-job"), 400, "wrong_job"),
    ]
    for path, payload, status, code in cases:
        # WHEN a reduce is pushed that cannot be done
        resp = signed_post(queue_client, path, payload)
        # THEN a permanent 4xx naming why, and nothing is written
        assert (resp.status_code, resp.json()["error"]) == (status, code), payload
    assert env.s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
    assert sent_mail() == []


def test_report_is_joined_with_a_multipart_upload_part_by_part(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a run of 150 tasks and a part size of 2 KiB (S3 needs 5 MiB; moto is told to accept small parts)
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024)
    outcomes = record_run(env.ledger, "run-big", total=150, failed_every=10, job=SMALL, batch=25)
    small_parts = queue_settings().model_copy(update={"report_part_bytes": 2048})  # below the validated minimum
    uploaded: list[int] = []
    real_upload_part = env.s3.upload_part

    def recording_upload_part(**kwargs: Any) -> Any:
        uploaded.append(len(kwargs["Body"]))
        return real_upload_part(**kwargs)

    env.s3.upload_part = recording_upload_part
    with client_for(small_parts, env) as client:
        reduce_all(client, "run-big", SMALL.shard_count)
        uploaded.clear()
        # WHEN finalize joins the parts
        resp = signed_post(client, FINALIZE, finalize_payload("run-big"))
    # THEN report.csv went up in several parts of exactly the part size (the last one shorter),
    # so at most one part's worth of the report was ever held in memory
    assert resp.status_code == 200
    layout = ReportLayout(BUCKET, JOB.name, "run-big")
    parts = resp.json()["summary"]["report_csv_parts"]
    assert parts >= 3
    head = env.s3.head_object(Bucket=BUCKET, Key=layout.report_csv)
    assert head["ETag"].strip('"').endswith(f"-{parts}")
    assert max(uploaded) == 2048
    assert uploaded[: parts - 1] == [2048] * (parts - 1)
    # AND the joined object is exactly the parts, one header, one row per task
    rows = read_csv(env, layout.report_csv)
    assert len(rows) == 150 and {r["task_id"] for r in rows} == set(outcomes)
    assert sum(1 for r in rows if r["state"] == "FAILED" and r["error"]) == 15
    assert head["ContentLength"] == resp.json()["summary"]["report_csv_bytes"]


def test_stream_writer_puts_small_objects_and_aborts_on_error(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 10)
    # GIVEN less than one part of data: one PutObject, no multipart upload
    with S3StreamWriter(env.s3, BUCKET, "small.txt", part_bytes=100) as w:
        w.write(b"x" * 50)
    assert w.part_count == 0
    assert env.s3.get_object(Bucket=BUCKET, Key="small.txt")["Body"].read() == b"x" * 50
    # GIVEN a writer that fails after two parts
    with pytest.raises(RuntimeError), S3StreamWriter(env.s3, BUCKET, "broken.txt", part_bytes=100) as w:
        w.write(b"y" * 250)
        raise RuntimeError("the source failed")
    # THEN the upload is aborted: no object, no pending multipart upload
    assert w.part_count == 2
    assert "Contents" not in env.s3.list_objects_v2(Bucket=BUCKET, Prefix="broken")
    assert env.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_part_files_are_tagged_to_expire_and_the_report_is_not(queue_client: TestClient, env: Env) -> None:
    # GIVEN a reduced and finalized run
    record_run(env.ledger, "run-tags", total=12, failed_every=4, job=SMALL, batch=12)
    reduce_all(queue_client, "run-tags", SMALL.shard_count)
    assert signed_post(queue_client, FINALIZE, finalize_payload("run-tags")).status_code == 200
    layout = ReportLayout(BUCKET, JOB.name, "run-tags")

    def tags(key: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in env.s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}

    # THEN every part file carries the lifecycle tag, and the report files do not
    for shard in range(SMALL.shard_count):
        for key in (layout.part_csv(shard), layout.part_stats(shard), layout.part_failures(shard)):
            assert tags(key) == {PART_TAG_KEY: PART_TAG_VALUE}, key
    for key in (layout.report_csv, layout.failures_csv, layout.summary_json, layout.report_html):
        assert tags(key) == {}, key


def test_part_tag_matches_the_bucket_lifecycle_rule() -> None:
    # The reports bucket (infra/reports.py) expires objects by this tag; read its constants without
    # importing the CDK (which starts a Node process).
    source = (Path(__file__).parents[1] / "infra" / "reports.py").read_text()
    constants = {
        node.targets[0].id: node.value.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }
    assert (constants["PART_TAG_KEY"], constants["PART_TAG_VALUE"]) == (PART_TAG_KEY, PART_TAG_VALUE)
    assert ReportLayout(BUCKET, JOB.name, "r").part_csv(0).startswith(constants["PARTS_PREFIX"])


@pytest.mark.parametrize(
    ("expiry_s", "promised", "link_expires"),
    [
        (None, "link valid 6 h", "X-Amz-Expires=21600"),  # the default: 6 h, what the task role's credentials last
        (5_400, "link valid 1 h", "X-Amz-Expires=5400"),  # 1.5 h is promised as 1 h: whole hours, rounded down
        (7_200, "link valid 2 h", "X-Amz-Expires=7200"),
    ],
)
def test_the_email_promises_no_longer_than_its_link_lasts(
    env: Env, expiry_s: int | None, promised: str, link_expires: str
) -> None:
    # GIVEN the queue service with the link lifetime configured (or left at its default)
    settings = queue_settings() if expiry_s is None else queue_settings(report_link_expiry_s=expiry_s)
    record_run(env.ledger, "run-link", total=8, job=SMALL, batch=8)
    with client_for(settings, env) as client:
        reduce_all(client, "run-link", SMALL.shard_count)
        # WHEN the run is finalized
        assert signed_post(client, FINALIZE, finalize_payload("run-link")).status_code == 200
    # THEN the email states the link's lifetime, and the presigned link in it lasts exactly that
    [mail] = sent_mail()
    assert promised in mail.body
    [link] = [word for word in mail.body.split() if "report.html" in word]
    assert link_expires in link
    assert "microprocess report run-link --target aws" in mail.body


def test_report_and_failures_csv_quote_cells_that_start_a_formula(queue_client: TestClient, env: Env) -> None:
    # GIVEN a run whose company ids, bands and errors start with each formula trigger (OWASP "CSV Injection")
    hostile = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tx", "\rx"]
    run_id = "run-hostile"
    env.ledger.create_run(run_id, SMALL)
    assert env.ledger.account_page(run_id, segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=2 * len(hostile))
    env.ledger.finish_split(run_id)
    outcomes = []
    for i, text in enumerate(hostile):
        ok, bad = f"task-ok-{i}", f"task-bad-{i}"
        outcomes += [
            TaskOutcome(ok, shard_of(ok, SMALL.shard_count), TaskState.SUCCEEDED, 1, text, {"score": -5, "band": text}),
            TaskOutcome(bad, shard_of(bad, SMALL.shard_count), TaskState.FAILED, 3, text, error=text),
        ]
    env.ledger.record_outcomes(run_id, SMALL.counter_count, outcomes)
    # WHEN reduced and finalized
    reduce_all(queue_client, run_id, SMALL.shard_count)
    assert signed_post(queue_client, FINALIZE, finalize_payload(run_id)).status_code == 200
    layout = ReportLayout(BUCKET, JOB.name, run_id)
    report, failures = read_csv(env, layout.report_csv), read_csv(env, layout.failures_csv)
    # THEN every such cell starts with a single quote and keeps its text after it; a number stays a number
    quoted = {"'" + t for t in hostile}
    assert {r["company_id"] for r in report} == quoted
    assert {r["band"] for r in report if r["state"] == "SUCCEEDED"} == quoted
    assert {r["score"] for r in report if r["state"] == "SUCCEEDED"} == {"-5"}
    assert {f["company_id"] for f in failures} == {f["error"] for f in failures} == quoted


def test_a_stopped_run_reports_every_task_once_late_completions_included(queue_client: TestClient, env: Env) -> None:
    from microprocess.control.stop import stop_run
    from microprocess.ledger import CURSOR_DONE
    from microprocess.pipeline.envelope import shard_of

    def outcome(i: int) -> TaskOutcome:
        task_id = f"0-{i:09d}"
        return TaskOutcome(
            task_id, shard_of(task_id, JOB.shard_count), TaskState.SUCCEEDED, 1, f"C{i:07d}", result={"score": 700}
        )

    # GIVEN a run of 40 tasks, 10 done, stopped mid-flight (its reduce parts built at once)
    env.ledger.create_run("r-stop", JOB)
    env.ledger.account_page("r-stop", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=40)
    env.ledger.record_outcomes("r-stop", JOB.counter_count, [outcome(i) for i in range(10)])
    assert stop_run(env.ledger, "r-stop", "stopped by an operator")
    reduce_all(queue_client, "r-stop")
    # WHEN batches in flight at the stop record 3 more tasks before the finalize
    env.ledger.record_outcomes("r-stop", JOB.counter_count, [outcome(i) for i in range(10, 13)])
    resp = signed_post(queue_client, FINALIZE, finalize_payload("r-stop"))
    assert resp.status_code == 200, resp.text
    # THEN the report has the 13 done tasks, not_attempted.csv the 27 others: 40 in all, none twice
    layout = ReportLayout(BUCKET, JOB.name, "r-stop")
    reported = [r["task_id"] for r in read_csv(env, layout.report_csv)]
    assert sorted(reported) == [f"0-{i:09d}" for i in range(13)]
    not_attempted = read_csv(env, layout.not_attempted_csv)
    assert sorted(r["task_id"] for r in not_attempted) == [f"0-{i:09d}" for i in range(13, 40)]
    # AND it is the platform's not_attempted.csv (through the service SDK): an item id column,
    # empty for a job without the item index (credit-scores: `item_index = false`)
    assert list(not_attempted[0]) == ["task_id", JOB.item_id_field] and not JOB.item_index
    assert {r[JOB.item_id_field] for r in not_attempted} == {""}
    # AND the stopped run is FAILED in its summary, as the ledger ends it (some tasks never ran)
    summary = resp.json()["summary"]
    assert summary["status"] == "FAILED" and summary["not_attempted"] == 27


def test_the_service_and_the_platform_write_the_same_report_and_failures_for_the_same_rows(
    queue_client: TestClient, env: Env
) -> None:
    # GIVEN one run of successes and failures, some cells starting a formula, others multi-line
    import boto3

    from microprocess.pipeline.queue import QueueSender
    from microprocess.reduce import PlatformReducer

    texts = ['=HYPERLINK("http://x","y")', "+1+1", "-2", "@SUM(A1)", "\tx", "plain", "two\nlines", 'a "quote", a comma']
    run_id = "run-same"
    env.ledger.create_run(run_id, SMALL)
    assert env.ledger.account_page(run_id, segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=2 * len(texts))
    env.ledger.finish_split(run_id)
    outcomes = []
    for i, text in enumerate(texts):
        ok, bad = f"task-ok-{i}", f"task-bad-{i}"
        outcomes += [
            TaskOutcome(
                ok,
                shard_of(ok, SMALL.shard_count),
                TaskState.SUCCEEDED,
                1 + i % 2,
                text,
                {"score": 300 + i, "band": text},
            ),
            TaskOutcome(bad, shard_of(bad, SMALL.shard_count), TaskState.FAILED, 3, text, error=text),
        ]
    env.ledger.record_outcomes(run_id, SMALL.counter_count, outcomes)
    # WHEN the bundled service reduces it (its routes), and the platform's reduce reduces it into
    # another bucket, for the job's fields the service reports
    reduce_all(queue_client, run_id, SMALL.shard_count)
    assert signed_post(queue_client, FINALIZE, finalize_payload(run_id)).status_code == 200
    env.s3.create_bucket(Bucket="platform-reports")
    sqs = boto3.client("sqs", region_name=REGION)
    platform = PlatformReducer(
        ledger=env.ledger,
        s3=env.s3,
        ses=env.ses,
        bucket="platform-reports",
        completion_sender=QueueSender(client=sqs, queue_url=sqs.create_queue(QueueName="q")["QueueUrl"], threads=1),
    )
    job = SMALL.model_copy(update={"result_fields": ("score", "band"), "recipients": ()})
    for shard in range(SMALL.shard_count):
        platform.reduce_part(job, run_id, shard)
    platform.finalize(job, run_id)
    # THEN report.csv and failures.csv are the same bytes: one row writer, one escaping, one set of columns
    service, platform_layout = (
        ReportLayout(BUCKET, JOB.name, run_id),
        ReportLayout("platform-reports", JOB.name, run_id),
    )

    def raw(bucket: str, key: str) -> bytes:
        return bytes(env.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    for file in ("report_csv", "failures_csv"):
        ours = raw(BUCKET, getattr(service, file))
        theirs = raw("platform-reports", getattr(platform_layout, file))
        assert ours == theirs, file
    assert raw(BUCKET, service.report_csv).startswith(",".join(REPORT_COLUMNS).encode() + b"\r\n")
    assert b"'=HYPERLINK" in raw(BUCKET, service.failures_csv)
