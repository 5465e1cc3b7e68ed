"""Where a run's built-in report lives in the reports bucket.

Under `s3://<bucket>/reports/<job>/<run_id>/`:
`parts/part-<kkk>.jsonl`, `.csv`, `failures-<kkk>.csv`, `values-<kkk>.txt`, `ids-<kkk>.txt` and
`part-<kkk>.json` (one shard's rows, as JSONL and CSV, its failures, its histogram values,
its task ids (a stopped run only) and its statistics; tagged for expiry; a stopped run's part
<shard_count> holds its late completions), then `report.csv`, `report.jsonl`, `failures.csv`, `summary.json`,
`report.html`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

#: Tag of the intermediate part files: the reports bucket's lifecycle rule expires objects
#: with it (`infra.reports.PART_TAG_KEY` / `PART_TAG_VALUE`; a test keeps them equal).
PART_TAG_KEY = "microprocess:lifecycle"
PART_TAG_VALUE = "intermediate"
PART_TAGGING = urlencode({PART_TAG_KEY: PART_TAG_VALUE})


@dataclass(frozen=True)
class ReportLayout:
    """The keys of one run's report files."""

    bucket: str
    job: str
    run_id: str

    @property
    def prefix(self) -> str:
        return f"reports/{self.job}/{self.run_id}/"

    @property
    def uri(self) -> str:
        """The run's report URI (`s3://bucket/reports/<job>/<run>/`), recorded on the run."""
        return f"s3://{self.bucket}/{self.prefix}"

    def part_rows(self, shard: int) -> str:
        return f"{self.prefix}parts/part-{shard:03d}.jsonl"

    def part_csv(self, shard: int) -> str:
        return f"{self.prefix}parts/part-{shard:03d}.csv"

    def part_failures(self, shard: int) -> str:
        return f"{self.prefix}parts/failures-{shard:03d}.csv"

    def part_values(self, shard: int) -> str:
        return f"{self.prefix}parts/values-{shard:03d}.txt"

    def part_ids(self, shard: int) -> str:
        """The task ids of a part's rows, one a line (written for a stopped run only)."""
        return f"{self.prefix}parts/ids-{shard:03d}.txt"

    def part_stats(self, shard: int) -> str:
        return f"{self.prefix}parts/part-{shard:03d}.json"

    @property
    def report_csv(self) -> str:
        return f"{self.prefix}report.csv"

    @property
    def report_jsonl(self) -> str:
        return f"{self.prefix}report.jsonl"

    @property
    def failures_csv(self) -> str:
        return f"{self.prefix}failures.csv"

    @property
    def not_attempted_csv(self) -> str:
        """The tasks of a run stopped before they ran (stop early): one task id per row."""
        return f"{self.prefix}not_attempted.csv"

    @property
    def summary_json(self) -> str:
        return f"{self.prefix}summary.json"

    @property
    def report_html(self) -> str:
        return f"{self.prefix}report.html"

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
