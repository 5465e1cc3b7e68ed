"""The platform's built-in reduce (`reduce = "platform"`, the default): one part per ledger
shard, then a finalize that writes the report under `reports/<job>/<run>/` (report.csv,
report.jsonl, failures.csv, summary.json, report.html with a histogram), mails it and
enqueues the job's completion callback. Memory stays bounded: rows are streamed, never held.
"""

from microprocess.reduce.layout import ReportLayout
from microprocess.reduce.reducer import DEFAULT_LINK_EXPIRY_S, PlatformReducer, ReduceRefused, completion_body
from microprocess.reduce.rows import flatten, report_row
from microprocess.reduce.summary import Histogram, NumericStats, PartStats

__all__ = [
    "DEFAULT_LINK_EXPIRY_S",
    "Histogram",
    "NumericStats",
    "PartStats",
    "PlatformReducer",
    "ReduceRefused",
    "ReportLayout",
    "completion_body",
    "flatten",
    "report_row",
]
