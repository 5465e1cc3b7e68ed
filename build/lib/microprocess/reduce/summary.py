"""Statistics of a run's rows, built shard by shard and merged, and the run's summary.

Everything here is small and bounded whatever the run's size: counts, sums, min/max,
a capped list of failures and the histogram's bins. The histogram of the job's
`histogram_field` takes two passes without holding values: the parts find the range
(count, min, max), finalize chooses "nice" bins over it and counts every value as it
streams the rows into the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from microprocess.ledger import Progress, RunRecord, TaskState

#: Failures listed by name in the summary (all of them are in failures.csv). Kept small:
#: the summary is also stored on the run's ledger item.
FAILURES_LISTED = 20
#: Longest error text kept in the summary (failures.csv keeps the whole text).
ERROR_CHARS = 300
#: Bins a histogram aims at (it gets between half of this and this many).
HISTOGRAM_BINS = 10


def numeric(value: Any) -> float | int | None:
    """`value` if it is a JSON number (not a boolean) and finite, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


@dataclass
class NumericStats:
    """Count, sum, min and max of the numbers seen; `skipped` counts rows without one."""

    count: int = 0
    total: float = 0
    low: float | None = None
    high: float | None = None
    all_int: bool = True
    skipped: int = 0

    def add(self, value: Any) -> None:
        number = numeric(value)
        if number is None:
            self.skipped += 1
            return
        self.count += 1
        self.total += number
        self.all_int = self.all_int and isinstance(number, int)
        self.low = number if self.low is None else min(self.low, number)
        self.high = number if self.high is None else max(self.high, number)

    def merge(self, other: NumericStats) -> None:
        self.count += other.count
        self.total += other.total
        self.all_int = self.all_int and other.all_int
        self.skipped += other.skipped
        for value in (other.low, other.high):
            if value is not None:
                self.low = value if self.low is None else min(self.low, value)
                self.high = value if self.high is None else max(self.high, value)

    @property
    def mean(self) -> float | None:
        return round(self.total / self.count, 6) if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "total": self.total,
            "min": self.low,
            "max": self.high,
            "all_int": self.all_int,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NumericStats:
        return cls(
            count=int(data["count"]),
            total=data["total"],
            low=data["min"],
            high=data["max"],
            all_int=bool(data["all_int"]),
            skipped=int(data["skipped"]),
        )


def nice_width(raw: float, *, integers: bool) -> float:
    """The smallest of 1, 2, 5 x 10^k that is >= `raw` (at least 1 for integer data)."""
    if raw <= 0:
        return 1
    exponent = math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        width = step * 10.0**exponent
        if width >= raw * (1 - 1e-12):
            break
    if integers:
        return max(1, round(width))
    return width


class Histogram:
    """Bins of equal, "nice" width over [min, max]; each bin holds from <= v < to, the last
    one also holds v == max. Built from the range the parts found, filled row by row."""

    def __init__(self, stats: NumericStats, *, bins: int = HISTOGRAM_BINS) -> None:
        self.stats = stats
        self.counts: list[int] = []
        self.start: float = 0
        self.width: float = 1
        if stats.count == 0 or stats.low is None or stats.high is None:
            return
        span = stats.high - stats.low
        if span == 0:
            self.start, self.width, self.counts = stats.low, 0, [0]
            return
        self.width = nice_width(span / bins, integers=stats.all_int)
        self.start = math.floor(round(stats.low / self.width, 9)) * self.width
        n = max(1, math.ceil(round((stats.high - self.start) / self.width, 9)))
        self.counts = [0] * n

    def add(self, value: Any) -> None:
        number = numeric(value)
        if number is None or not self.counts:
            return
        if self.width == 0:
            self.counts[0] += 1
            return
        # rounded first: (0.5 - 0.1) / 0.1 is 4.000000000000001, but (0.5 - 0.1) // 0.1 is 3.0
        index = math.floor(round((number - self.start) / self.width, 9))
        self.counts[min(max(index, 0), len(self.counts) - 1)] += 1

    def bins(self) -> list[dict[str, Any]]:
        """`[{"from", "to", "count"}]`; with one value only, a single bin from == to."""
        if self.width == 0:
            return [{"from": self.start, "to": self.start, "count": self.counts[0]}] if self.counts else []
        return [
            {"from": _edge(self.start + i * self.width), "to": _edge(self.start + (i + 1) * self.width), "count": c}
            for i, c in enumerate(self.counts)
        ]


def _edge(value: float) -> int | float:
    rounded = round(value, 10)
    return int(rounded) if float(rounded).is_integer() else rounded


@dataclass
class PartStats:
    """Counts and statistics over some rows (one shard, or the whole run once merged)."""

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retried: int = 0
    max_attempts: int = 0
    first_finished_at: str | None = None
    last_finished_at: str | None = None
    columns: list[str] = field(default_factory=list)
    columns_dropped: int = 0
    #: The columns of the part's CSV file; None when finalize must rebuild it from the JSONL.
    csv_columns: list[str] | None = None
    histogram: NumericStats = field(default_factory=NumericStats)
    failure_count: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: dict[str, Any], finished_at: str, item_id_field: str) -> None:
        self.rows += 1
        attempts = int(row.get("attempts") or 0)
        self.attempts += attempts
        self.retried += attempts > 1
        self.max_attempts = max(self.max_attempts, attempts)
        if finished_at:
            self.first_finished_at = min(self.first_finished_at or finished_at, finished_at)
            self.last_finished_at = max(self.last_finished_at or finished_at, finished_at)
        if row["state"] == TaskState.SUCCEEDED:
            self.succeeded += 1
            return
        self.failed += 1
        self.failure_count += 1
        if len(self.failures) < FAILURES_LISTED:
            self.failures.append(
                {
                    "task_id": row["task_id"],
                    "item_id": row.get(item_id_field),
                    "attempts": attempts,
                    "error": (row.get("error") or "")[:ERROR_CHARS],
                }
            )

    def merge(self, other: PartStats) -> None:
        self.rows += other.rows
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.attempts += other.attempts
        self.retried += other.retried
        self.max_attempts = max(self.max_attempts, other.max_attempts)
        firsts = [t for t in (self.first_finished_at, other.first_finished_at) if t]
        lasts = [t for t in (self.last_finished_at, other.last_finished_at) if t]
        self.first_finished_at = min(firsts) if firsts else None
        self.last_finished_at = max(lasts) if lasts else None
        self.csv_columns = None  # a property of one part file, not of a merge
        known = set(self.columns)
        self.columns += [c for c in other.columns if c not in known]
        self.columns_dropped += other.columns_dropped
        self.histogram.merge(other.histogram)
        self.failure_count += other.failure_count
        self.failures.extend(other.failures[: max(FAILURES_LISTED - len(self.failures), 0)])

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "histogram"}, "histogram": self.histogram.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartStats:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["histogram"] = NumericStats.from_dict(data["histogram"])
        return cls(**values)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round(max((_parse_time(end) - _parse_time(start)).total_seconds(), 0.0), 3)


def build_summary(
    *,
    run: RunRecord,
    progress: Progress,
    stats: PartStats,
    histogram: Histogram | None,
    histogram_field: str | None,
    tolerated_failure_pct: float,
    report_uri: str,
    files: dict[str, str],
    reduced_at: str,
) -> dict[str, Any]:
    """The run's summary, before its status is decided (the ledger decides it when the run
    ends; `publishable_summary` adds it). Stored on the run and written as summary.json."""
    tasks_s = _seconds(run.created_at, stats.last_finished_at)
    return {
        "job": run.job,
        "run_id": run.run_id,
        "expected": progress.expected,
        "succeeded": progress.succeeded,
        "failed": progress.failed,
        "rows": stats.rows,
        "rows_succeeded": stats.succeeded,
        "rows_failed": stats.failed,
        "complete": stats.rows == progress.expected and stats.failed == progress.failed,
        "failed_pct": round(100.0 * progress.failed / progress.expected, 3) if progress.expected else 0.0,
        "tolerated_failure_pct": tolerated_failure_pct,
        "attempts": {"total": stats.attempts, "retried_tasks": stats.retried, "max": stats.max_attempts},
        "durations": {
            "started_at": run.created_at,
            "split_finished_at": run.split_finished_at,
            "first_task_at": stats.first_finished_at,
            "last_task_at": stats.last_finished_at,
            "reduced_at": reduced_at,
            "split_s": _seconds(run.created_at, run.split_finished_at),
            "tasks_s": tasks_s,
            "reduce_s": _seconds(stats.last_finished_at, reduced_at),
            "total_s": _seconds(run.created_at, reduced_at),
        },
        "throughput": {"tasks_per_s": round(stats.rows / tasks_s, 3) if tasks_s else None},
        "histogram": None
        if histogram is None
        else {
            "field": histogram_field,
            "count": histogram.stats.count,
            "skipped": histogram.stats.skipped,
            "min": histogram.stats.low,
            "max": histogram.stats.high,
            "mean": histogram.stats.mean,
            "bins": histogram.bins(),
        },
        "columns": list(stats.columns),
        "columns_dropped": stats.columns_dropped,
        "failure_count": stats.failure_count,
        "failures": list(stats.failures),
        "report_uri": report_uri,
        "files": files,
    }


def publishable_summary(run: RunRecord) -> dict[str, Any]:
    """summary.json: the summary stored on the ended run, with the status the ledger decided."""
    return {
        **run.summary,
        "status": str(run.status),
        "finished_at": run.finished_at,
        "error": run.error or None,
        "report_uri": run.report_uri,
    }
