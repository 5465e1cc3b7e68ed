"""Failures grouped by error (`microprocess.ledger.failure_groups`), written as tasks fail (moto)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from microprocess.ledger import Ledger, TaskOutcome, TaskState
from microprocess.ledger.failure_groups import group_key, normalize_error, read_failure_groups
from microprocess.pipeline.envelope import shard_of
from tests.declared import CREDIT_SCORES
from tests.ledger_scenarios import ambiguous_ledger, split

JOB = CREDIT_SCORES
K = JOB.counter_count


def failed(i: int, error: str) -> TaskOutcome:
    task_id = f"0-{i:09d}"
    return TaskOutcome(task_id, shard_of(task_id, JOB.shard_count), TaskState.FAILED, 3, f"C{i}", error=error)


def succeeded(i: int) -> TaskOutcome:
    task_id = f"0-{i:09d}"
    return TaskOutcome(task_id, shard_of(task_id, JOB.shard_count), TaskState.SUCCEEDED, 1, f"C{i}", result={"s": i})


def test_errors_that_differ_only_in_ids_and_numbers_share_a_group() -> None:
    a = normalize_error('HTTP 422: {"detail":"invoice INV-00012 is not overdue (due 2027-01-06)"}')
    b = normalize_error('HTTP 422: {"detail":"invoice INV-00977 is not overdue (due 2027-02-11)"}')
    assert a == b == 'HTTP 422: {"detail":"invoice INV-# is not overdue (due #-#-#)"}'
    # the status stays: a 404 is another cause
    assert group_key(normalize_error("HTTP 404: no such customer 12")) != group_key(a)
    assert normalize_error("timeout after 30 s") == "timeout after # s"
    assert normalize_error("id 3fa85f64-5717-4562-b3fc-2c963f66afa6 gone") == "id <uuid> gone"
    assert normalize_error(None) == "(no error text)"
    assert len(normalize_error("x" * 5000)) == 240


def test_new_failures_are_grouped_with_counts_and_examples_and_duplicates_are_not(ledger: Ledger) -> None:
    # GIVEN a run with 30 tasks: 12 fail one way, 6 another, 12 succeed
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [30])
    outs = [failed(i, f"HTTP 422: invoice INV-{i:05d} is not overdue") for i in range(12)]
    outs += [failed(i, f"timeout after {i} s") for i in range(12, 18)]
    outs += [succeeded(i) for i in range(18, 30)]
    random.Random(1).shuffle(outs)
    # WHEN they are recorded in batches of 5, and every batch is delivered twice
    for start in range(0, len(outs), 5):
        ledger.record_outcomes("r1", K, outs[start : start + 5])
        ledger.record_outcomes("r1", K, outs[start : start + 5])
    # THEN two groups, largest first, counted once, each with failed tasks of its own kind as examples
    groups = read_failure_groups(ledger, "r1", K)
    assert [(g.error, g.count) for g in groups] == [
        ("HTTP 422: invoice INV-# is not overdue", 12),
        ("timeout after # s", 6),
    ]
    assert all(1 <= len(g.examples) <= 3 for g in groups)
    assert set(groups[0].examples) <= {f"0-{i:09d}" for i in range(12)}
    assert set(groups[1].examples) <= {f"0-{i:09d}" for i in range(12, 18)}
    assert sum(g.count for g in groups) == ledger.progress("r1").failed == 18


def test_group_updates_retried_after_they_were_applied_count_once(ledger_table: str) -> None:
    # GIVEN a ledger whose every write is applied, then retried by the SDK as after a 500
    amb, injector = ambiguous_ledger(ledger_table)
    amb.create_run("r1", JOB)
    split(amb, "r1", [40])
    # WHEN 40 tasks fail the same way, in batches of 4 (several updates of one group item)
    outs = [failed(i, f"HTTP 503: busy ({i})") for i in range(40)]
    for start in range(0, 40, 4):
        amb.record_outcomes("r1", K, outs[start : start + 4])
    # THEN the fault fired and the group holds 40, not more; its markers do not pile up
    assert injector.fired["applied_then_error at UpdateItem"] > 0
    [group] = read_failure_groups(amb, "r1", K)
    assert (group.error, group.count) == ("HTTP 503: busy (#)", 40)
    items = _group_items(amb, "r1")
    assert all(sum(1 for name in item if name.startswith("b_")) <= 1 for item in items)


def test_a_run_failing_one_way_spreads_its_group_writes(ledger_table: str, ddb: Any) -> None:
    # GIVEN many processes (ledgers) recording failures of one kind for one run
    ledgers = [Ledger(ledger_table, client=ddb, rng=random.Random(seed)) for seed in range(32)]
    ledgers[0].create_run("r1", JOB)
    split(ledgers[0], "r1", [320])
    for p, led in enumerate(ledgers):
        led.record_outcomes("r1", K, [failed(p * 10 + i, "HTTP 500: down") for i in range(10)])
    # THEN the group's count is exact and its writes are spread over several partitions
    [group] = read_failure_groups(ledgers[0], "r1", K)
    assert group.count == 320
    partitions = Counter(item["pk"] for item in _group_items(ledgers[0], "r1"))
    assert len(partitions) >= 8, partitions


def test_a_failing_group_write_never_fails_the_batch(ledger: Ledger, monkeypatch: Any) -> None:
    # GIVEN a group update that the table refuses
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [2])

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("throttled")

    monkeypatch.setattr(ledger.failure_groups, "_add", refuse)
    # WHEN a failure is recorded THEN it is counted (the group is only a view)
    result = ledger.record_outcomes("r1", K, [failed(0, "boom")])
    assert result.newly_recorded == ["0-000000000"]
    assert ledger.progress("r1").failed == 1
    assert read_failure_groups(ledger, "r1", K) == []


def _group_items(ledger: Ledger, run_id: str) -> list[dict[str, Any]]:
    from microprocess.ledger.records import _from_ddb

    found = []
    for j in range(K):
        resp = ledger.client.query(
            TableName=ledger.table_name,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": f"RUN#{run_id}#E{j}"}},
        )
        found += [_from_ddb(i) for i in resp["Items"]]
    return found
