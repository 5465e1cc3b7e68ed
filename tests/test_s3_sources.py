"""S3 sources: one object, a key template (`{date}`, `{job}`, `{run_id}`) or a declared prefix; what the
splitter may read (its IAM grant) and what `run --source-uri` may name are the same scope."""

from __future__ import annotations

from typing import Any

import pytest

from microprocess.declarations import JobDeclarationError, JobRegistry, declare, resolve_source_uri, s3_scope
from microprocess.pipeline.start import (
    StartEventError,
    StartRequest,
    parse_start_event,
    run_date,
    source_uri_refusal,
)
from tests.functions_harness import Stack

BASE: dict[str, Any] = {
    "name": "invoice-reminders",
    "service": "reminders",
    "schedule": "cron(0 8 * * ? *)",
    "item_id_field": "invoice_id",
    "task_path": "/tasks/remind",
}


def job(**source: Any) -> Any:
    return declare(**BASE, source={"kind": "s3", "format": "jsonl", **source})


def test_one_object_is_its_own_scope() -> None:
    scope = s3_scope(job(uri="s3://bills/unpaid.jsonl").source)
    assert scope is not None and str(scope) == "s3://bills/unpaid.jsonl"
    assert scope.allows("s3://bills/unpaid.jsonl")
    assert not scope.allows("s3://bills/unpaid.jsonl.bak") and not scope.allows("s3://bills/other.jsonl")


def test_a_key_template_reads_its_fixed_part_and_resolves_per_run() -> None:
    declared = job(uri="s3://bills/manifests/{date}/{job}.jsonl")
    scope = s3_scope(declared.source)
    assert scope is not None and str(scope) == "s3://bills/manifests/*"
    assert scope.allows("s3://bills/manifests/2026-12-01/x.jsonl")
    assert not scope.allows("s3://bills/other/2026-12-01.jsonl") and not scope.allows("s3://other/manifests/a.jsonl")
    uri = resolve_source_uri(str(declared.source.uri), job=declared.name, run_id="r1", date="2026-12-01")
    assert uri == "s3://bills/manifests/2026-12-01/invoice-reminders.jsonl"


def test_a_declared_prefix_widens_what_source_uri_may_name() -> None:
    declared = job(uri="s3://bills/daily/unpaid.jsonl", prefix="s3://bills/daily/")
    scope = s3_scope(declared.source)
    assert scope is not None and scope.allows("s3://bills/daily/rerun-3.jsonl")
    assert not scope.allows("s3://bills/weekly/unpaid.jsonl")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"uri": "s3://bills/{month}.jsonl"}, "placeholder(s) ['month']"),
        ({"uri": "s3://{job}/a.jsonl"}, "the bucket cannot be a template"),
        ({"uri": "s3://bills/a.jsonl", "prefix": "s3://bills/daily"}, "ending in '/'"),
        ({"uri": "s3://bills/a.jsonl", "prefix": "s3://other/daily/"}, "in the bucket of source.uri"),
        ({"uri": "s3://bills/a.jsonl", "prefix": "s3://bills/daily/"}, "must be under source.prefix"),
    ],
)
def test_a_bad_scope_is_refused_with_the_fix(source: dict[str, Any], message: str) -> None:
    with pytest.raises(JobDeclarationError, match=r".*") as caught:
        job(**source)
    assert message in str(caught.value)


def test_a_prefix_on_a_table_source_is_refused() -> None:
    with pytest.raises(JobDeclarationError, match="s3 source only"):
        declare(**BASE, source={"kind": "dynamodb", "table": "t", "prefix": "s3://b/p/"})


def test_source_uri_outside_the_scope_is_refused_with_what_is_allowed() -> None:
    declared = job(uri="s3://bills/manifests/{date}.jsonl")
    assert source_uri_refusal(declared, "s3://bills/manifests/2026-12-01.jsonl", "reports") is None
    assert source_uri_refusal(declared, "s3://reports/manifests/run-1.jsonl", "reports") is None
    refusal = source_uri_refusal(declared, "s3://bills/secret/keys.jsonl", "reports")
    assert refusal is not None
    assert "s3://bills/manifests/*" in refusal and "s3://reports/manifests/*" in refusal and "source.prefix" in refusal


def test_the_run_date_is_the_schedule_tick_not_the_delivery() -> None:
    # GIVEN a tick at 23:59:59 UTC delivered after midnight THEN the run reads the tick's day
    event = {"job": "invoice-reminders", "source": "schedule", "time": "2026-12-01T23:59:59Z"}
    assert run_date(parse_start_event(event)) == "2026-12-01"
    assert len(run_date(StartRequest("invoice-reminders", "r1"))) == 10  # a manual start: today


def test_the_splitter_refuses_a_source_uri_outside_the_scope_at_start(stack: Stack) -> None:
    # GIVEN a start event that names a manifest the job's splitter may not read (the Lambda invoked directly)
    declared = job(uri="s3://bills/manifests/{date}.jsonl")
    splitter = stack.splitter(jobs=JobRegistry([declared]))
    event = {"job": declared.name, "run_id": "r1", "source_uri": "s3://bills/x/y.jsonl"}
    # THEN the run is refused at its start with the reason (never a run stuck on AccessDenied)
    with pytest.raises(StartEventError, match="outside what the job 'invoice-reminders' may read"):
        splitter.source_record(declared, parse_start_event(event))
    # AND inside the scope the run records the URI it reads
    inside = splitter.source_record(
        declared, parse_start_event({**event, "source_uri": "s3://bills/manifests/a.jsonl"})
    )
    assert inside["uri"] == "s3://bills/manifests/a.jsonl"
    # AND a scheduled run reads its day's file
    tick = parse_start_event({"job": declared.name, "source": "schedule", "time": "2026-12-01T08:00:00Z"})
    assert splitter.source_record(declared, tick)["uri"] == "s3://bills/manifests/2026-12-01.jsonl"
