"""A run with its retries in the CLI: `status RUN` names them and shows the combined outcome,
`status RUN --combined --json` prints it, `runs` marks which run retries which, and
`report RUN --combined` writes one CSV with the latest outcome of every item across the run and
its retries (`combined.csv`).

The combined report downloads the report of each run of the chain (the run, its latest retry,
that retry's latest retry, ...; `ledger.retries.combined_progress`) and joins them on the item
id: a later run's row replaces the earlier ones of the same item; the original's
`not_attempted.csv` rows are its tasks never attempted (state NOT_ATTEMPTED). Items without an
id cannot be matched and keep their own row. The retries' rows are held in memory (they are the
failures and the tasks not attempted); the original's rows are streamed.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from microprocess.ledger import RunRecord
from microprocess.ledger.retries import CombinedProgress, combined_progress, retries_of

if TYPE_CHECKING:
    from microprocess.cli.deployment import Deployment

#: The state of a task listed in a run's not_attempted.csv, in the combined report.
NOT_ATTEMPTED = "NOT_ATTEMPTED"
COMBINED_CSV = "combined.csv"


def print_links(out: Console, dep: Deployment, run: RunRecord) -> None:
    """`status RUN`'s lines on retries: the run it retries, its retries and their combined outcome."""
    if run.source_run:
        out.print(f"{'retry of':<12} {escape(run.source_run)}")
    if not retries_of(dep.ledger(), run.run_id):
        return
    print_combined(out, combined_progress(dep.ledger(), run.run_id))


def print_combined(out: Console, combined: CombinedProgress) -> None:
    out.print(f"{'retries':<12} {escape(', '.join(combined.retries)) or '-'}")
    out.print(
        f"{'combined':<12} {combined.items:,} items: {combined.succeeded:,} succeeded, {combined.failed:,} failed, "
        f"{combined.not_attempted:,} not attempted, {combined.pending:,} pending "
        f"(latest outcome across {escape(' → '.join(combined.runs))})"
    )


def runs_column(records: list[RunRecord]) -> dict[str, str]:
    """`runs`' last column: which listed run retries which (from the runs' own records)."""
    note: dict[str, str] = {}
    retried: dict[str, list[str]] = {}
    for r in records:
        if r.source_run:
            note[r.run_id] = f"retry of {r.source_run}"
            retried.setdefault(r.source_run, []).append(r.run_id)
    for original, retries in retried.items():
        mark = f"retried by {', '.join(sorted(retries))}"
        note[original] = f"{note[original]}; {mark}" if original in note else mark
    return note


def write_combined(dep: Deployment, run_id: str, out_dir: Path, download: Any) -> tuple[Path, CombinedProgress]:
    """Download the reports of RUN's chain with `download(dep, run, out_dir)` and write
    `OUT/<run>/combined.csv`; returns its path and the combined counts."""
    combined = combined_progress(dep.ledger(), run_id)
    job = dep.ledger().require_run(run_id).job
    from microprocess.cli.steer import declared_job

    id_field = declared_job(job).item_id_field
    files = {r: [Path(p) for p in download(dep, r, out_dir)] for r in combined.runs}
    later: dict[str, dict[str, str]] = {}  # item id → row, the latest run first
    for r in reversed(combined.runs[1:]):
        for row in _rows(files[r], r, id_field):
            key = row.get(id_field) or ""
            if key and key not in later:
                later[key] = row
    head = [id_field, "state", "run_id", "task_id", "attempts", "error"]
    header = head + [c for c in _columns(p for paths in files.values() for p in paths) if c not in head]
    target = out_dir / run_id / COMBINED_CSV
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in _rows(files[run_id], run_id, id_field):
            key = row.get(id_field) or ""
            writer.writerow(later.pop(key, row) if key else row)
        for row in later.values():  # retried items the original did not list (none, normally)
            writer.writerow(row)
    return target, combined


REPORT_FILES = ("report.csv", "not_attempted.csv")


def _columns(paths: Iterable[Path]) -> list[str]:
    """The column names of the report files among `paths`, in order, once each."""
    columns: list[str] = []
    for path in paths:
        if path.name in REPORT_FILES:
            with path.open(newline="") as fh:
                columns.extend(c for c in next(csv.reader(fh), []) if c not in columns)
    return columns


def _rows(paths: list[Path], run_id: str, id_field: str) -> Iterator[dict[str, str]]:
    """The rows of a run's report.csv and not_attempted.csv (state NOT_ATTEMPTED), with the run's id."""
    for path in paths:
        if path.name not in REPORT_FILES:
            continue
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if path.name == "not_attempted.csv":
                    row = {"task_id": row.get("task_id", ""), id_field: row.get(id_field, ""), "state": NOT_ATTEMPTED}
                yield {**row, "run_id": run_id}


def show_combined(out: Console, dep: Deployment, run_id: str, *, as_json: bool) -> None:
    """`status RUN --combined`: the combined outcome, as JSON or lines."""
    combined = combined_progress(dep.ledger(), run_id)
    if as_json:
        from microprocess.cli.options import emit_json

        emit_json(combined.as_dict())
    else:
        print_combined(out, combined)
