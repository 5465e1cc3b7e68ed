"""A reduce part: one ledger shard streamed into its part files.

`parts/part-<kkk>.jsonl` holds the shard's report rows (one JSON object a line) and
`parts/part-<kkk>.json` their `PartStats`. Rows are written as they are read from the
ledger (page by page), so a part holds one S3 part buffer in memory, never the shard.
Keys are deterministic: a repeated part rewrites the same files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger, TaskRecord
from microprocess.reduce.layout import PART_TAGGING, ReportLayout
from microprocess.reduce.rows import ColumnSet, column_for, declared_fields, report_row, task_columns
from microprocess.reduce.s3stream import S3StreamWriter
from microprocess.reduce.summary import PartStats

log = logging.getLogger(__name__)


def write_rows(records: Iterable[TaskRecord], job: JobDeclaration, out: S3StreamWriter) -> PartStats:
    """Write one JSONL report row per record to `out` as each record arrives; return the stats.

    `records` is consumed lazily, once: nothing but the statistics outlives a row.
    """
    stats = PartStats()
    columns = ColumnSet(task_columns(job))
    histogram_column = column_for(job.histogram_field, job) if job.histogram_field else None
    for task in records:
        row = report_row(task, job)
        out.write(json.dumps(row, separators=(",", ":"), default=str).encode() + b"\n")
        stats.add(row, task.finished_at, job.item_id_field)
        columns.add(row)
        if histogram_column is not None:
            stats.histogram.add(row.get(histogram_column))
    fields = declared_fields(job)
    stats.columns = [column_for(f, job) for f in fields] if fields is not None else columns.names()
    stats.columns_dropped = len(columns.dropped)
    return stats


def build_part(
    ledger: Ledger, s3: Any, layout: ReportLayout, job: JobDeclaration, shard: int, *, part_bytes: int
) -> PartStats:
    """Reduce ledger shard `shard` of the run into its part files; return its statistics."""
    out = S3StreamWriter(
        s3,
        layout.bucket,
        layout.part_rows(shard),
        part_bytes=part_bytes,
        content_type="application/x-ndjson",
        tagging=PART_TAGGING,
    )
    with out:
        stats = write_rows(ledger.iter_results(layout.run_id, shard), job, out)
    s3.put_object(
        Bucket=layout.bucket,
        Key=layout.part_stats(shard),
        Body=json.dumps(stats.to_dict(), separators=(",", ":")).encode(),
        ContentType="application/json",
        Tagging=PART_TAGGING,
    )
    log.info("reduced run %s shard %d: %d rows", layout.run_id, shard, stats.rows)
    return stats
