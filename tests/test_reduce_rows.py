"""Report rows of the built-in reduce: task columns, flattened results, result_fields (pure logic)."""

from __future__ import annotations

from typing import Any

from microprocess.declarations import declare
from microprocess.ledger import TaskRecord, TaskState
from microprocess.reduce.rows import ColumnSet, cell, flatten, report_row
from tests.declared import INVOICE_REMINDERS


def job(**changes: Any):  # type: ignore[no-untyped-def]
    return declare(**{**INVOICE_REMINDERS.model_dump(), **changes})


def task(state: TaskState = TaskState.SUCCEEDED, **kw: Any) -> TaskRecord:
    values: dict[str, Any] = {
        "task_id": "0-000000001",
        "shard": 3,
        "state": state,
        "attempts": 2,
        "item_id": "INV-1",
        "result": None,
        "error": None,
        "finished_at": "2026-12-01T05:00:00.000000Z",
    }
    return TaskRecord(**{**values, **kw})


def test_flatten_joins_nested_keys_with_dots_and_keeps_lists_and_empty_objects() -> None:
    # GIVEN a nested result WHEN flattened THEN every leaf is keyed by its dotted path
    result = {"a": 1, "b": {"c": "x", "d": {"e": None}}, "tags": ["p", "q"], "empty": {}}
    assert flatten(result) == {"a": 1, "b.c": "x", "b.d.e": None, "tags": ["p", "q"], "empty": {}}
    # AND a result that is not an object becomes one column named "result"
    assert flatten(42) == {"result": 42}


def test_a_succeeded_row_has_the_task_columns_then_every_result_field() -> None:
    # GIVEN a platform job with no result_fields, and a result nesting a customer
    j = job(result_fields=None)
    t = task(result={"days_overdue": 12, "customer": {"name": "Ann", "tier": {"level": 2}}, "sent": True})
    # WHEN the row is built
    row = report_row(t, j)
    # THEN it is the task's columns (the item id under the job's item_id_field) and the flattened result
    assert row == {
        "task_id": "0-000000001",
        "invoice_id": "INV-1",
        "state": "SUCCEEDED",
        "attempts": 2,
        "error": None,
        "days_overdue": 12,
        "customer.name": "Ann",
        "customer.tier.level": 2,
        "sent": True,
    }


def test_a_result_field_named_like_a_task_column_is_renamed() -> None:
    # GIVEN a result that reports its own "state" and echoes the item id
    row = report_row(task(result={"state": "reminded", "invoice_id": "INV-1"}), job())
    # THEN the task's state is kept and the result's fields move to result.<name>
    assert row["state"] == "SUCCEEDED"
    assert row["result.state"] == "reminded" and row["result.invoice_id"] == "INV-1"


def test_result_fields_pick_only_the_declared_fields_and_the_histogram_field() -> None:
    # GIVEN a job that declares two result fields (one dotted) and a histogram field outside them
    j = job(result_fields=("customer.name", "channel"), histogram_field="days_overdue")
    t = task(result={"days_overdue": 3, "customer": {"name": "Ann", "email": "a@x"}, "internal": "hidden"})
    # WHEN the row is built
    row = report_row(t, j)
    # THEN only those fields are there (a missing one is absent), the rest of the result is left out
    assert {k: v for k, v in row.items() if k not in ("task_id", "invoice_id", "state", "attempts", "error")} == {
        "customer.name": "Ann",
        "days_overdue": 3,
    }


def test_a_failed_row_has_the_error_and_no_result_and_finds_the_item_id_in_the_item() -> None:
    # GIVEN a failed task whose id the ledger did not record, with its item kept for retry
    t = task(TaskState.FAILED, item_id=None, error="HTTP 422: bad invoice", item={"invoice_id": "INV-9"})
    # WHEN the row is built THEN it carries the error and the item's id
    row = report_row(t, job())
    assert row == {
        "task_id": "0-000000001",
        "invoice_id": "INV-9",
        "state": "FAILED",
        "attempts": 2,
        "error": "HTTP 422: bad invoice",
    }


def test_cells_are_csv_text() -> None:
    assert [cell(v) for v in (None, "a", 3, 2.5, True, [1, "x"], {"b": 1, "a": 2})] == [
        "",
        "a",
        "3",
        "2.5",
        "true",
        '[1,"x"]',
        '{"a":2,"b":1}',
    ]


def test_column_set_keeps_first_appearance_order_and_caps_the_columns() -> None:
    # GIVEN a cap of 3 result columns
    columns = ColumnSet(("task_id", "state"), limit=3)
    # WHEN rows bring 5 distinct result fields (task columns are not result columns)
    columns.add(["task_id", "b", "a"])
    columns.add(["state", "a", "c", "d", "e"])
    # THEN the first 3 are kept in order and 2 are counted as left out
    assert columns.names() == ["b", "a", "c"] and len(columns.dropped) == 2
