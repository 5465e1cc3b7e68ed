"""`microprocess demo`: start the local stack, run the demo job over every seeded item, show the
report and the email, stop."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from microprocess.cli.deployment import Deployment, ledger_errors, wait_for
from microprocess.cli.local_stack import stop_on_signals, workspace
from microprocess.cli.options import EXIT_FAILED, EXIT_USAGE, TimeoutOption, err, fail, out, print_status
from microprocess.cli.progress import queue_depth
from microprocess.cli.report import download_report
from microprocess.cli.steer import start_run
from microprocess.declarations import Declarations, JobDeclaration, JobDeclarationError, SourceKind, get_declarations
from microprocess.ledger import RunStatus
from microprocess.pipeline.start import new_run_id


def register(app: typer.Typer) -> None:
    """Add `demo` to the `microprocess` app."""
    app.command()(demo)


def count_report_rows(path: Path) -> int:
    """Data rows of a CSV report (the header is not counted)."""
    with path.open(newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def _email_for(messages: list[dict[str, Any]], run_id: str) -> dict[str, Any] | None:
    def mentions(m: dict[str, Any]) -> bool:
        return any(run_id in (m.get(k) or "") for k in ("Subject", "BodyText", "BodyHtml"))

    matching = [m for m in messages if mentions(m)] or messages
    return matching[-1] if matching else None


def _print_email(email: dict[str, Any] | None) -> None:
    if email is None:
        out.print("[yellow]no email was captured[/]")
        return
    out.print(f"email: [bold]{escape(email.get('Subject') or '')}[/] → {escape(', '.join(email.get('To') or []))}")
    body = email.get("BodyText") or email.get("BodyHtml") or ""
    for line in [ln for ln in body.splitlines() if ln.strip()][:8]:
        out.print(f"  │ {escape(line)}")


def _phases(dep: Deployment, run_id: str) -> str:
    run = dep.ledger().require_run(run_id)

    def at(ts: str | None) -> float | None:
        from datetime import datetime

        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else None

    t0, split, claim, end = (
        at(run.created_at),
        at(run.split_finished_at),
        at(run.reduce_claimed_at),
        at(run.finished_at),
    )
    parts = []
    if t0 and split:
        parts.append(f"split {split - t0:.1f} s ({run.expected / max(split - t0, 1e-3):,.0f} tasks/s enqueued)")
    if t0 and claim:
        parts.append(
            f"all tasks done {claim - t0:.1f} s after the start ({run.expected / max(claim - t0, 1e-3):,.0f}/s)"
        )
    if claim and end:
        parts.append(f"reduce + report + email {end - claim:.1f} s")
    return "; ".join(parts)


def demo_items(declarations: Declarations, items: int | None) -> tuple[JobDeclaration, int]:
    """The demo job (`[local] demo_job`) and how many items its seeded source table will hold."""
    job = declarations.demo_job
    table = declarations.tables.get(job.source.table or "") if job.source.kind is SourceKind.DYNAMODB else None
    if table is None or not table.local_seed:
        fail(
            f"the demo job '{job.name}' must read a declared table with a local_seed (so `local up` can fill it); "
            f"set [local] demo_job in {declarations.path} to such a job",
            EXIT_USAGE,
        )
    return job, table.local_items if items is None else items


def demo(
    items: Annotated[
        int | None,
        typer.Option("--items", min=1, metavar="N", help="Items to seed and run (default: the table's local_items)."),
    ] = None,
    timeout: TimeoutOption = 900.0,
    out_dir: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where the report is downloaded.")] = Path(
        "out"
    ),
) -> None:
    """Start the local stack, run the demo job over every seeded item, show the report and the email, stop."""
    from microprocess.local import LocalStack, LocalStackError, UpOptions, captured_emails

    try:
        declarations = get_declarations()
    except JobDeclarationError as exc:
        fail(str(exc), EXIT_USAGE)
    job, expected_rows = demo_items(declarations, items)
    ws = workspace()
    stack = LocalStack(ws, echo=lambda line: err.print(f"  {escape(line)}"), declarations=declarations)
    stop_on_signals()
    code = EXIT_FAILED
    try:
        err.print(f"starting the local stack with {expected_rows:,} items for {job.name}…")
        try:
            state = stack.up(UpOptions(items=items))
        except LocalStackError as exc:
            fail(str(exc))
        except Exception as exc:  # a deploy or process failure: its message says what to do
            fail(f"the local stack did not start: {exc}")
        out.print(f"set-up time: {stack.timings.line()}")
        endpoint = state.endpoint_url
        dep = Deployment(
            name="local",
            outputs=state.outputs,
            client=lambda service: state.client(service, max_pool_connections=20),
            endpoint_url=endpoint,
            logs_hint=f"see {ws.logs}/ministack.log",
        )
        run_id = new_run_id(job.name)
        started = time.monotonic()
        with ledger_errors(dep):
            start_run(dep, {"job": job.name, "run_id": run_id, "source": "manual"})
            out.print(f"started run [bold]{run_id}[/]")
            final = wait_for(dep, run_id, timeout_s=timeout, show=True, job=job.name)
            run_time = time.monotonic() - started
            print_status(final)
            out.print(f"run time: {run_time:.1f} s ({final.expected / max(run_time, 1e-3):,.0f} tasks/s)")
            phases = _phases(dep, run_id)
            if phases:
                out.print(f"  {phases}")
            depth = queue_depth(dep.client("sqs"), dep.job_queue_url(job.name), dep.outputs.get("DeadLetterQueueUrl"))
            if depth.dead_letters:
                out.print(f"[yellow]{depth.dead_letters} messages in the dead-letter queue[/]")
            rows = None
            if final.report_uri:
                written = download_report(dep, run_id, out_dir)
                csvs = [p for p in written if p.name == "report.csv"]
                out.print(f"report: {escape(str(csvs[0] if csvs else out_dir / run_id))} ({len(written)} files)")
                if csvs:
                    rows = count_report_rows(csvs[0])
                    out.print(f"report.csv: {rows:,} rows for {expected_rows:,} items")
            _print_email(_email_for(captured_emails(endpoint, state.ca_bundle), run_id))
        if final.status is RunStatus.SUCCEEDED and rows == expected_rows:
            code = 0
        else:
            err.print(f"[red]demo failed: run {final.status}, report rows {rows}, items {expected_rows}[/]")
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    finally:
        err.print("stopping the local stack…")
        stack.down()
    raise typer.Exit(code)
