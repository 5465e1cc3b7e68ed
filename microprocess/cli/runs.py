"""The run commands: `run`, `status`, `runs`, `cancel` and `retry-failed`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from microprocess.cli import control, deployment, retries, service_load, steer
from microprocess.cli.deployment import Deployment, ledger_errors, wait_for
from microprocess.cli.options import (
    EXIT_USAGE,
    CombinedOption,
    JsonOption,
    Target,
    TargetOption,
    TimeoutOption,
    WaitOption,
    emit_json,
    err,
    fail,
    finish_waited,
    job_or_fail,
    out,
    print_status,
    status_dict,
)
from microprocess.cli.steer import start_run
from microprocess.declarations import get_declarations
from microprocess.pipeline.start import new_run_id, source_uri_refusal
from microprocess.stacks import MANIFESTS_PREFIX


def register(app: typer.Typer) -> None:
    """Add the run commands to the `microprocess` app."""
    app.command()(run)
    app.command()(status)
    app.command()(runs)
    app.command()(cancel)
    app.command("retry-failed")(retry_failed)


ItemsOption = Annotated[
    Path | None,
    typer.Option(
        "--items",
        metavar="FILE",
        exists=True,
        dir_okay=False,
        help="A JSONL or CSV file of items to run instead of the declared source (uploaded as a manifest).",
    ),
]
SourceUriOption = Annotated[
    str | None,
    typer.Option(
        "--source-uri",
        metavar="S3_URI",
        help="An s3://bucket/key JSONL or CSV manifest to read instead of the declared source.",
    ),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param", metavar="KEY=VALUE", help="key=value passed into every task of the run (`params`); repeatable."
    ),
]


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    """`--param key=value` options as a dict; a pair without `=` or with an empty key is refused."""
    params: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--param {pair!r} must be key=value, e.g. --param region=eu", EXIT_USAGE)
        params[key.strip()] = value
    return params


def manifest_format(path: Path) -> str:
    """`jsonl` or `csv`, from the file's suffix."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    fail(f"--items {path}: name a .jsonl (one JSON item per line) or .csv (a header line) file", EXIT_USAGE)


def check_manifest_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// manifest URI, with its format from the key's suffix."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        fail(f"--source-uri {uri!r} must be s3://bucket/key", EXIT_USAGE)
    return uri, manifest_format(Path(key))


def upload_manifest(dep: Deployment, run_id: str, path: Path) -> tuple[str, str]:
    """Upload `path` to the platform bucket as the run's manifest; returns (s3 uri, format)."""
    fmt = manifest_format(path)
    bucket = dep.output("ReportsBucket")
    key = f"{MANIFESTS_PREFIX}{run_id}.{fmt}"
    dep.client("s3").upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}", fmt


def start_payload(
    dep: Deployment,
    job: str,
    run_id: str,
    *,
    items: Path | None = None,
    source_uri: str | None = None,
    params: dict[str, str] | None = None,
    priority: str | None = None,
) -> dict[str, Any]:
    """The splitter's start event for a manual run (uploading `items` first); a `high` priority is
    recorded on the run (its tasks are spread over more fair-queue tenants: `pipeline.tenants`)."""
    if items is not None and source_uri is not None:
        fail("give --items FILE or --source-uri s3://..., not both", EXIT_USAGE)
    payload: dict[str, Any] = {"job": job, "run_id": run_id, "source": "manual"}
    if items is not None:
        payload["items_uri"], payload["items_format"] = upload_manifest(dep, run_id, items)
    elif source_uri is not None:
        payload["source_uri"], payload["items_format"] = check_manifest_uri(source_uri)
        refusal = source_uri_refusal(get_declarations().jobs.get(job), source_uri, dep.output("ReportsBucket"))
        if refusal:
            fail(f"--source-uri: {refusal}", EXIT_USAGE)
    if params:
        payload["params"] = params
    if priority and priority != "normal":
        payload["priority"] = priority
    return payload


def run(
    job: Annotated[str, typer.Argument(help="A declared job (see microprocess.toml).")],
    items: ItemsOption = None,
    source_uri: SourceUriOption = None,
    param: ParamOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 600.0,
    target: TargetOption = Target.local,
    priority: Annotated[
        service_load.Priority,
        typer.Option(
            metavar="normal/high",
            help="high: priority_weight shares of its job's queue beside its other runs (and of a shared service).",
        ),
    ] = service_load.Priority.normal,
) -> None:
    """Start a run of JOB the way its schedule does (an asynchronous splitter invocation).

    By default the run reads the job's declared source; `--items FILE` runs the items of a local
    JSONL/CSV file instead, `--source-uri s3://...` another manifest. `--param key=value` is passed
    into every task."""
    job = job_or_fail(job)
    params = parse_params(param)
    if source_uri is not None:
        check_manifest_uri(source_uri)
    dep = deployment.connect(target)
    run_id = new_run_id(job)
    with ledger_errors(dep):
        if note := service_load.mark_priority(dep, get_declarations(), job, run_id, priority):
            err.print(note)
        start_run(
            dep,
            start_payload(dep, job, run_id, items=items, source_uri=source_uri, params=params, priority=priority),
        )
        if as_json:
            emit_json({"run_id": run_id})
        else:
            out.print(f"started run [bold]{run_id}[/]")
        if wait:
            finish_waited(wait_for(dep, run_id, timeout_s=timeout, show=True, job=job), as_json)


def status(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run id.")],
    as_json: JsonOption = False,
    combined: CombinedOption = False,
    target: TargetOption = Target.local,
) -> None:
    """Show the progress of RUN: run_id, job, status, expected, succeeded, failed, pending,
    split_done, started_at, finished_at, report_uri."""
    dep = deployment.connect(target)
    with ledger_errors(dep):
        progress = dep.ledger().progress(run_id)
        if combined:
            return retries.show_combined(out, dep, run_id, as_json=as_json)
        if not as_json:
            retries.print_links(out, dep, dep.ledger().require_run(run_id))
    if as_json:
        emit_json(status_dict(progress))
    else:
        print_status(progress)
        control.print_control_status(dep, progress)  # the job's concurrency cap in force; how to resume


def _short_time(iso: str | None) -> str:
    """`2026-11-24T09:31:02.123456Z` → `2026-11-24 09:31:02`."""
    return (iso or "").replace("T", " ").split(".")[0].removesuffix("Z")


def runs(
    job: Annotated[str | None, typer.Option("--job", metavar="JOB", help="Only this job's runs.")] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, metavar="N", help="Newest runs per job.")] = 20,
    target: TargetOption = Target.local,
) -> None:
    """List the newest runs of one job, or of every declared job."""
    jobs = [job_or_fail(job)] if job else get_declarations().jobs.names()
    dep = deployment.connect(target)
    with ledger_errors(dep):
        ledger = dep.ledger()
        records = [r for j in jobs for r in ledger.list_runs(j, limit=limit)]
        found = [status_dict(ledger.progress(r.run_id)) for r in records]
    links = retries.runs_column(records)
    found.sort(key=lambda d: d["started_at"], reverse=True)
    if as_json:
        emit_json(found)
        return
    if not found:
        out.print(f"no runs of {', '.join(jobs)}")
        return
    width = max(len("run"), *(len(d["run_id"]) for d in found))
    out.print(f"{'run':<{width}}  {'status':<9}  {'done':>9}  {'failed':>7}  {'expected':>9}  started")
    for d in found:
        out.print(
            f"{escape(d['run_id']):<{width}}  {d['status']:<9}  {d['succeeded'] + d['failed']:>9,}  "
            f"{d['failed']:>7,}  {d['expected']:>9,}  {_short_time(d['started_at'])}  {links.get(d['run_id'], '')}"
        )
    for service in sorted({get_declarations().jobs.get(j).service for j in jobs}):  # each service's load
        for line in service_load.service_lines(dep, get_declarations(), service):
            out.print(escape(line))


def cancel(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    target: TargetOption = Target.local,
) -> None:
    """Cancel RUN: no more service calls within one visibility timeout; its messages are dropped."""
    dep = deployment.connect(target)
    with ledger_errors(dep):
        steer.cancel_run(dep, run_id)
    out.print(f"cancelled run [bold]{run_id}[/]; its remaining messages are acknowledged without calls")


def retry_failed(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    include_not_attempted: Annotated[
        bool,
        typer.Option("--include-not-attempted", help="Also the tasks RUN never attempted (stopped early, cancelled)."),
    ] = False,
    wait: WaitOption = False,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 600.0,
    target: TargetOption = Target.local,
) -> None:
    """Start a new run over the failed tasks of RUN (and those it never attempted)."""
    dep = deployment.connect(target)
    with ledger_errors(dep):
        started = steer.retry_failed_run(dep, run_id, include_not_attempted=include_not_attempted)
        if as_json:
            extra = {"not_attempted": started.not_attempted} if include_not_attempted else {}
            emit_json({"run_id": started.run_id, "retry_of": run_id, "failed": started.failed, **extra})
        else:
            out.print(escape(steer.retry_message(started, include_not_attempted=include_not_attempted)))
        if started.run_id is None:
            return
        if wait:
            finish_waited(wait_for(dep, started.run_id, timeout_s=timeout, show=True, job=started.job), as_json)
