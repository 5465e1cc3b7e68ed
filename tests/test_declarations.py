"""Job declarations and the task envelope: valid shapes and clear errors (signing: test_service_sdk.py)."""

from __future__ import annotations

import json

import pytest

from microprocess.declarations import JobDeclarationError, JobRegistry, UnknownJobError, declare
from microprocess.pipeline.envelope import EnvelopeTooLarge, MalformedEnvelope, TaskEnvelope, TaskKind, shard_of
from tests.declared import CREDIT_SCORES, JOBS

BASE = CREDIT_SCORES.model_dump()


def test_credit_scores_is_declared_monthly_over_the_companies_table() -> None:
    job = JOBS.get("credit-scores")
    assert job.schedule == "cron(0 2 1 * ? *)" and job.source.kind == "dynamodb" and job.source.table == "companies"
    assert job.task_path == "/tasks/credit-score"


@pytest.mark.parametrize(
    ("change", "field", "fix"),
    [
        ({"name": "Credit Scores"}, "name", "lowercase"),
        ({"schedule": "every month"}, "schedule", "cron("),
        ({"schedule": "cron(0 2 1 * *)"}, "schedule", "6 fields"),
        ({"task_path": "tasks/x"}, "task_path", "absolute URL path"),
        ({"max_attempts": 0}, "max_attempts", "greater than or equal to 1"),
        ({"tolerated_failure_pct": 120}, "tolerated_failure_pct", "less than or equal to 100"),
        ({"max_concurrency": 1}, "max_concurrency", "greater than or equal to 2"),
        ({"batch_size": 11}, "batch_size", "less than or equal to 10"),
        ({"recipients": ["nobody"]}, "recipients", "email"),
        ({"source": {"kind": "dynamodb"}}, "source", "source.table is required"),
        ({"source": {"kind": "s3", "uri": "http://x", "format": "jsonl"}}, "source", "s3://"),
        ({"source": {"kind": "callable", "function": "no_colon"}}, "source", "module:function"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_invalid_declarations_name_the_job_the_field_and_the_fix(change: dict, field: str, fix: str) -> None:
    with pytest.raises(JobDeclarationError) as exc:
        declare(**{**BASE, **change})
    text = str(exc.value)
    assert "job '" in text and f"field '{field}" in text and fix in text, text


def test_registry_refuses_duplicates_and_names_known_jobs() -> None:
    with pytest.raises(JobDeclarationError, match="declared twice"):
        JobRegistry([CREDIT_SCORES, CREDIT_SCORES])
    with pytest.raises(
        UnknownJobError, match=r"unknown job 'x'; declared jobs: \['credit-scores', 'invoice-reminders'\]"
    ):
        JOBS.get("x")


def test_envelope_round_trip_and_validation() -> None:
    env = TaskEnvelope(job="credit-scores", run_id="r1", task_id="0-000000001", shard=3, item={"company_id": "C1"})
    assert TaskEnvelope.parse(env.to_json()) == env
    assert env.idempotency_key == "r1:0-000000001"
    part = TaskEnvelope(kind=TaskKind.REDUCE_PART, job="j", run_id="r1", task_id="reduce-part-003", shard=3)
    assert TaskEnvelope.parse(part.to_json()).kind is TaskKind.REDUCE_PART


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected an object"),
        (json.dumps({"v": 2, "job": "j"}), "version 2"),
        (json.dumps({"job": "j", "run_id": "r", "task_id": "t", "shard": 0}), "exactly one of 'item' and 'item_ref'"),
        (json.dumps({"job": "j", "run_id": "r", "task_id": "t", "shard": -1, "item": 1}), "shard"),
        (json.dumps({"job": "j", "run_id": "r", "task_id": "t", "shard": 0, "item": 1, "x": 1}), "x: Extra"),
        ("x" * 1_048_577, "over 1048576 bytes"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: str, reason: str) -> None:
    with pytest.raises(MalformedEnvelope, match=reason):
        TaskEnvelope.parse(body)


def test_size_guard_names_size_limit_and_fix() -> None:
    env = TaskEnvelope(job="j", run_id="r1", task_id="t1", shard=0, item="x" * 2000)
    with pytest.raises(EnvelopeTooLarge, match=r"is \d+ bytes, limit is 1000 bytes; send the item by reference"):
        env.to_json(limit=1000)


@pytest.mark.parametrize(
    ("task_id", "shards", "shard"),
    [
        # BLAKE2b-64 of the id, big-endian, modulo the count: with 16 (or 64) shards, the value of the
        # digest's last hex digit (or its last two hex digits modulo 64)
        ("0-000000000", 16, 8),  # f125b277cd94f228: 0x8
        ("0-000000001", 16, 4),  # 163086ae31278db4: 0x4
        ("0-000000002", 16, 15),  # c6741f85ca979c9f: 0xf
        ("0-000000000", 64, 40),  # 0x28 = 40
        ("0-000000001", 64, 52),  # 0xb4 = 180 = 2 x 64 + 52
        ("3-000000042", 64, 36),  # 23d90d1643c9efa4: 0xa4 = 164 = 2 x 64 + 36
    ],
)
def test_shards_are_a_stable_hash_of_the_task_id(task_id: str, shards: int, shard: int) -> None:
    # the same in every process and on every machine (Python's own hash() is salted per process)
    assert shard_of(task_id, shards) == shard


def test_shards_are_spread() -> None:
    shards = [shard_of(f"0-{i:09d}", 16) for i in range(1600)]
    assert min(shards.count(k) for k in range(16)) > 60
