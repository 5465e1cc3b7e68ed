"""One report row per task record: the task's own columns, then its result's fields.

A row is a flat JSON object (one line of report.jsonl, one line of report.csv):
`task_id`, the job's `item_id_field`, `state`, `attempts`, `error`, then the result's
fields. Without `result_fields` every leaf of the result becomes a column, nested objects
flattened with dots (`{"a": {"b": 1}}` -> `a.b`); with `result_fields`, exactly those
fields (a dotted name reaches into nested objects), plus the job's `histogram_field`.
A result field whose name is one of the task columns is renamed `result.<name>`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from microprocess.declarations import JobDeclaration
from microprocess.ledger import TaskRecord, TaskState

#: Result columns one part tracks at most; further fields stay in report.jsonl only.
MAX_RESULT_COLUMNS = 200
#: The column of a result that is not a JSON object (a bare number, string or list).
BARE_RESULT = "result"
_MISSING = object()


def task_columns(job: JobDeclaration) -> tuple[str, ...]:
    """The columns every row starts with."""
    return ("task_id", job.item_id_field, "state", "attempts", "error")


def column_for(field: str, job: JobDeclaration) -> str:
    """The report column of result field `field` (renamed if it collides with a task column)."""
    return f"result.{field}" if field in task_columns(job) else field


def declared_fields(job: JobDeclaration) -> tuple[str, ...] | None:
    """The result fields the job asks for (its `result_fields` plus `histogram_field`), or
    None when every field becomes a column."""
    if job.result_fields is None:
        return None
    extra = (job.histogram_field,) if job.histogram_field and job.histogram_field not in job.result_fields else ()
    return (*job.result_fields, *extra)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested JSON objects keyed by their dotted path; lists are kept as values."""
    if not isinstance(value, Mapping):
        return {prefix or BARE_RESULT: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(inner, Mapping) and inner:
            out.update(flatten(inner, path))
        else:
            out[path] = inner
    return out


def pick(result: Any, field: str) -> Any:
    """The value of a (dotted) field in a result: the literal key first, then the nested path;
    `_MISSING` when absent."""
    if not isinstance(result, Mapping):
        return result if field == BARE_RESULT else _MISSING
    if field in result:
        return result[field]
    node: Any = result
    for step in field.split("."):
        if not isinstance(node, Mapping) or step not in node:
            return _MISSING
        node = node[step]
    return node


def result_columns(result: Any, job: JobDeclaration) -> dict[str, Any]:
    """The result's share of a row: column -> value (JSON types kept)."""
    if result is None:
        return {}
    fields = declared_fields(job)
    if fields is None:
        return {column_for(k, job): v for k, v in flatten(result).items()}
    out: dict[str, Any] = {}
    for field in fields:
        value = pick(result, field)
        if value is not _MISSING:
            out[column_for(field, job)] = value
    return out


def item_id_of(task: TaskRecord, job: JobDeclaration) -> str | None:
    """The item's id: as the ledger recorded it, else from the stored item or the result."""
    if task.item_id is not None:
        return task.item_id
    for source in (task.item, task.result):
        if isinstance(source, Mapping) and source.get(job.item_id_field) is not None:
            return str(source[job.item_id_field])
    return None


def report_row(task: TaskRecord, job: JobDeclaration) -> dict[str, Any]:
    """The report row of one task record (see the module docstring)."""
    row: dict[str, Any] = {
        "task_id": task.task_id,
        job.item_id_field: item_id_of(task, job),
        "state": str(task.state),
        "attempts": task.attempts,
        "error": task.error if task.state is not TaskState.SUCCEEDED else None,
    }
    if task.state is TaskState.SUCCEEDED:
        row.update(result_columns(task.result, job))
    return row


#: CSV line end (RFC 4180). With "\n" alone, Python's csv module would leave a bare CR inside a
#: cell unquoted, and a reader would split the row there.
CSV_LINE_END = "\r\n"
#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """`text` as a spreadsheet shows it, never runs it: a leading single quote when it starts
    with a formula trigger (`=`, `+`, `-`, `@`, tab, CR; the OWASP rule), else unchanged.

    Every text cell and header of every CSV either reduce writes goes through here; a JSON
    number is written as a number (it cannot be a formula), the text "-5" gets its quote.
    """
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def cell(value: Any) -> str:
    """A row value as CSV text: empty for null, JSON for objects, lists and booleans; text made
    `spreadsheet_safe`."""
    if value is None:
        return ""
    if isinstance(value, str):
        return spreadsheet_safe(value)
    if isinstance(value, bool | dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return str(value)


class ColumnSet:
    """The result columns seen so far, in order of first appearance, capped at `limit`."""

    def __init__(self, fixed: Sequence[str] = (), limit: int = MAX_RESULT_COLUMNS) -> None:
        self._fixed = set(fixed)
        self.limit = limit
        self.columns: dict[str, None] = {}
        self.dropped: set[str] = set()

    def add(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self._fixed or name in self.columns:
                continue
            if len(self.columns) < self.limit:
                self.columns[name] = None
            elif len(self.dropped) < self.limit:  # only to report how many were left out
                self.dropped.add(name)

    def names(self) -> list[str]:
        return list(self.columns)


class CsvEncoder:
    """CSV lines as UTF-8 bytes, one call per row of `cell()` values (headers too: a column
    is named after a service's result field)."""

    def __init__(self) -> None:
        self._text = io.StringIO()
        self._csv = csv.writer(self._text, lineterminator=CSV_LINE_END)

    def encode(self, values: Iterable[Any]) -> bytes:
        self._csv.writerow(values)
        data = self._text.getvalue().encode()
        self._text.seek(0)
        self._text.truncate()
        return data
