"""A reduce part: one ledger shard streamed into its part files.

The per-row work happens here, in parallel over the shards, so that finalize mostly joins
bytes: a part writes its rows as JSONL (`part-<kkk>.jsonl`) and as header-less CSV
(`part-<kkk>.csv`), its failures (`failures-<kkk>.csv`), the numbers of the histogram
field one a line (`values-<kkk>.txt`) and its `PartStats` (`part-<kkk>.json`).

The CSV's columns are the job's declared fields, or, without `result_fields`, those of
the shard's first row; a later row with a new field makes the part CSV "irregular"
(`csv_columns` None) and finalize rebuilds that shard's CSV from its JSONL.

Rows are written as they are read from the ledger (page by page): a part holds one S3
part buffer per file in memory, never the shard. Keys are deterministic: a repeated part
rewrites the same files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger, TaskRecord, TaskState
from microprocess.reduce.layout import PART_TAGGING, ReportLayout
from microprocess.reduce.rows import ColumnSet, CsvEncoder, cell, column_for, declared_fields, report_row, task_columns
from microprocess.reduce.s3stream import S3StreamWriter
from microprocess.reduce.summary import PartStats, numeric

log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, data: bytes) -> int: ...


@dataclass
class PartSinks:
    """Where a part's rows go: JSONL rows (always), CSV rows, failure rows, histogram values,
    task ids (one a line)."""

    rows: Sink
    csv: Sink | None = None
    failures: Sink | None = None
    values: Sink | None = None
    ids: Sink | None = None


def failure_columns(job: JobDeclaration) -> tuple[str, ...]:
    """The columns of failures.csv."""
    return ("task_id", job.item_id_field, "attempts", "error")


def write_rows(records: Iterable[TaskRecord], job: JobDeclaration, sinks: PartSinks) -> PartStats:
    """Write each record's report row to the sinks as it arrives; return the part's statistics.

    `records` is consumed lazily, once: nothing but the statistics outlives a row.
    """
    stats = PartStats()
    columns = ColumnSet(task_columns(job))
    fields = declared_fields(job)
    declared = [*task_columns(job), *(column_for(f, job) for f in fields)] if fields is not None else None
    csv_columns: list[str] | None = declared
    csv_known: set[str] = set(declared or ())
    regular = True
    histogram_column = column_for(job.histogram_field, job) if job.histogram_field else None
    failure_cols = failure_columns(job)
    encoder = CsvEncoder()
    for task in records:
        row = report_row(task, job)
        sinks.rows.write(json.dumps(row, separators=(",", ":"), default=str).encode() + b"\n")
        if sinks.ids is not None:
            sinks.ids.write(f"{task.task_id}\n".encode())
        stats.add(row, task.finished_at, job.item_id_field)
        columns.add(row)
        if sinks.csv is not None and regular:
            if csv_columns is None:
                csv_columns = list(row)
                csv_known = set(csv_columns)
            elif declared is None and not csv_known.issuperset(row):
                regular = False  # a field the CSV has no column for: finalize rebuilds it from the JSONL
            if regular:
                sinks.csv.write(encoder.encode(cell(row.get(c)) for c in csv_columns))
        if sinks.failures is not None and task.state is not TaskState.SUCCEEDED:
            sinks.failures.write(encoder.encode(cell(row.get(c)) for c in failure_cols))
        if histogram_column is not None:
            value = row.get(histogram_column)
            stats.histogram.add(value)
            number = numeric(value)
            if sinks.values is not None and number is not None:
                sinks.values.write(f"{number!r}\n".encode())
    stats.columns = [c for c in declared if c not in task_columns(job)] if declared is not None else columns.names()
    stats.columns_dropped = len(columns.dropped)
    if sinks.csv is not None:
        stats.csv_columns = (csv_columns or list(task_columns(job))) if regular else None
    return stats


def build_part(
    ledger: Ledger,
    s3: Any,
    layout: ReportLayout,
    job: JobDeclaration,
    shard: int,
    *,
    part_bytes: int,
    keep_ids: bool = False,
    records: Iterable[TaskRecord] | None = None,
) -> PartStats:
    """Reduce ledger shard `shard` of the run into its part files; return its statistics.

    `keep_ids` also writes the task ids of its rows (`ReportLayout.part_ids`: a stopped run's
    report lists the tasks no part holds as not attempted); `records` replaces the shard's
    records (a stopped run's late completions, as part `shard_count`)."""

    def part_file(key: str, content_type: str) -> S3StreamWriter:
        return S3StreamWriter(
            s3, layout.bucket, key, part_bytes=part_bytes, content_type=content_type, tagging=PART_TAGGING
        )

    with ExitStack() as files:
        sinks = PartSinks(
            rows=files.enter_context(part_file(layout.part_rows(shard), "application/x-ndjson")),
            csv=files.enter_context(part_file(layout.part_csv(shard), "text/csv")),
            failures=files.enter_context(part_file(layout.part_failures(shard), "text/csv")),
            values=files.enter_context(part_file(layout.part_values(shard), "text/plain"))
            if job.histogram_field
            else None,
            ids=files.enter_context(part_file(layout.part_ids(shard), "text/plain")) if keep_ids else None,
        )
        rows = ledger.iter_results(layout.run_id, shard) if records is None else records
        stats = write_rows(rows, job, sinks)
    s3.put_object(
        Bucket=layout.bucket,
        Key=layout.part_stats(shard),
        Body=json.dumps(stats.to_dict(), separators=(",", ":")).encode(),
        ContentType="application/json",
        Tagging=PART_TAGGING,
    )
    log.info("reduced run %s shard %d: %d rows", layout.run_id, shard, stats.rows)
    return stats
