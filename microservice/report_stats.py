"""Statistics of a run's task records, built part by part and merged (ARCHITECTURE §5).

A reduce part accumulates `ReportStats` over one ledger shard while it streams the
shard's rows; finalize merges the parts' stats. Everything here is small and bounded:
counts, sums, ten histogram buckets and a capped list of failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from microprocess.ledger import TaskRecord, TaskState
from microprocess.reduce.rows import task_columns
from microprocess.service.report import failure_columns
from microservice.declared import JOB
from microservice.domain import BAND_NAMES

#: Columns of report.csv and of every part CSV, one row per task record: the platform's report
#: columns (`task_columns`), then the result fields this service reports.
REPORT_COLUMNS: tuple[str, ...] = (*task_columns(JOB), "score", "band")
#: Columns of failures.csv: the platform's.
FAILURE_COLUMNS: tuple[str, ...] = failure_columns(JOB)
#: Failures listed by name in a part's stats and in the summary (all of them are in failures.csv).
FAILURES_LISTED = 100
#: Longest error text kept in the JSON statistics (failures.csv keeps the whole text).
ERROR_CHARS = 500
#: Width of a score histogram bucket: 0-99, 100-199, ..., 900-1000.
BUCKET_WIDTH = 100
BUCKETS = 10


@dataclass(frozen=True)
class ReportRow:
    """One task record as a report row."""

    task_id: str
    company_id: str
    state: str
    score: int | None
    band: str | None
    attempts: int
    error: str

    @classmethod
    def of(cls, task: TaskRecord) -> ReportRow:
        result = task.result if isinstance(task.result, dict) else {}
        item = task.item if isinstance(task.item, dict) else {}
        company_id = task.item_id or result.get("company_id") or item.get("company_id") or ""
        score: int | None = None
        band: str | None = None
        if task.state is TaskState.SUCCEEDED:
            try:
                score = int(result["score"])
            except (KeyError, TypeError, ValueError):
                score = None
            band = result.get("band") if isinstance(result.get("band"), str) else None
        return cls(
            task_id=task.task_id,
            company_id=str(company_id),
            state=str(task.state),
            score=score,
            band=band,
            attempts=task.attempts,
            error=task.error or "",
        )


@dataclass
class ReportStats:
    """Counts and score statistics over some task records (one shard, or the whole run)."""

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    bands: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAND_NAMES, 0))
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    scored: int = 0
    score_sum: int = 0
    score_min: int | None = None
    score_max: int | None = None
    failure_count: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: ReportRow) -> None:
        self.rows += 1
        if row.state == TaskState.SUCCEEDED:
            self.succeeded += 1
        else:
            self.failed += 1
            self.failure_count += 1
            if len(self.failures) < FAILURES_LISTED:
                self.failures.append(
                    {
                        "task_id": row.task_id,
                        "company_id": row.company_id,
                        "attempts": row.attempts,
                        "error": row.error[:ERROR_CHARS],
                    }
                )
        if row.band:
            self.bands[row.band] = self.bands.get(row.band, 0) + 1
        if row.score is not None:
            self.scored += 1
            self.score_sum += row.score
            self.score_min = row.score if self.score_min is None else min(self.score_min, row.score)
            self.score_max = row.score if self.score_max is None else max(self.score_max, row.score)
            self.buckets[min(max(row.score, 0) // BUCKET_WIDTH, BUCKETS - 1)] += 1

    def merge(self, other: ReportStats) -> None:
        self.rows += other.rows
        self.succeeded += other.succeeded
        self.failed += other.failed
        for band, n in other.bands.items():
            self.bands[band] = self.bands.get(band, 0) + n
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.scored += other.scored
        self.score_sum += other.score_sum
        if other.score_min is not None:
            self.score_min = other.score_min if self.score_min is None else min(self.score_min, other.score_min)
        if other.score_max is not None:
            self.score_max = other.score_max if self.score_max is None else max(self.score_max, other.score_max)
        self.failure_count += other.failure_count
        self.failures.extend(other.failures[: max(FAILURES_LISTED - len(self.failures), 0)])

    @property
    def score_mean(self) -> float | None:
        return round(self.score_sum / self.scored, 2) if self.scored else None

    def histogram(self) -> list[dict[str, int]]:
        """The score histogram: ten buckets of 100 points (the last one is 900..1000)."""
        return [
            {"from": i * BUCKET_WIDTH, "to": (i + 1) * BUCKET_WIDTH - 1 if i < BUCKETS - 1 else 1000, "count": n}
            for i, n in enumerate(self.buckets)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "bands": dict(self.bands),
            "score_buckets": list(self.buckets),
            "scored": self.scored,
            "score_sum": self.score_sum,
            "score_min": self.score_min,
            "score_max": self.score_max,
            "failure_count": self.failure_count,
            "failures": list(self.failures),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportStats:
        return cls(
            rows=int(data["rows"]),
            succeeded=int(data["succeeded"]),
            failed=int(data["failed"]),
            bands={str(k): int(v) for k, v in data["bands"].items()},
            buckets=[int(n) for n in data["score_buckets"]],
            scored=int(data["scored"]),
            score_sum=int(data["score_sum"]),
            score_min=data.get("score_min"),
            score_max=data.get("score_max"),
            failure_count=int(data["failure_count"]),
            failures=list(data.get("failures", [])),
        )
