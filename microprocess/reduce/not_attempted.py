"""`not_attempted.csv`: the tasks of a stopped or cancelled run that never ran, one a row, with
each task's item id (the job's `item_id_field`), so that a team sees *which items* were left and
`retry-failed --include-not-attempted` can be checked against it.

The item ids come from the run's item index (`item_index = true`, the default), read once for
the first `ITEM_IDS_UP_TO` tasks not attempted; a job without the index, or the rows past that
bound, have an empty item id (`microprocess tasks RUN --state NOT_ATTEMPTED` lists them too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import chain, islice
from typing import Any

from microprocess.control.lookup import RunTasks
from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger
from microprocess.reduce.layout import ReportLayout
from microprocess.reduce.rows import CsvEncoder, cell
from microprocess.reduce.s3stream import S3StreamWriter

log = logging.getLogger(__name__)

#: Tasks not attempted whose item ids are looked up (their ids are held in memory: ~150 B each).
ITEM_IDS_UP_TO = 1_000_000


def write_not_attempted(
    s3: Any,
    layout: ReportLayout,
    job: JobDeclaration,
    ledger: Ledger,
    task_ids: Iterable[str],
    *,
    part_bytes: int,
) -> int:
    """Write `not_attempted.csv` (`task_id`, the item id field), streamed; returns its rows."""
    rest = iter(task_ids)
    head = list(islice(rest, ITEM_IDS_UP_TO))
    item_ids = RunTasks(ledger).item_ids_of(layout.run_id, set(head)) if job.item_index and head else {}
    count = 0
    with S3StreamWriter(
        s3, layout.bucket, layout.not_attempted_csv, content_type="text/csv", part_bytes=part_bytes
    ) as writer:
        encoder = CsvEncoder()
        writer.write(encoder.encode(["task_id", job.item_id_field]))
        for task_id in chain(head, rest):
            writer.write(encoder.encode([cell(task_id), cell(item_ids.get(task_id, ""))]))
            count += 1
    if count > ITEM_IDS_UP_TO:
        log.warning(
            "run %s: item ids of the first %d of %d tasks not attempted only", layout.run_id, ITEM_IDS_UP_TO, count
        )
    return count
