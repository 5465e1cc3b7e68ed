"""`microprocess`: start, watch, cancel and retry runs; run the embedded local stack.

Against the local stack by default (its endpoint and stack outputs come from
`.microprocess/local.json`), or AWS with `--target aws` (the `Microprocess-Cloud`
stack's outputs, read with CloudFormation).

Exit codes: 0 done (a waited run SUCCEEDED); 1 the operation failed or the run did not
succeed; 2 bad input (unknown job, bad option); 3 no local stack / no deployed stack;
4 `--wait` timed out.
"""

from __future__ import annotations

import csv
import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import boto3
import typer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from rich.console import Console
from rich.markup import escape

from microprocess.cli import check_service, console, control, init, planner, project, steer
from microprocess.cli.progress import RunNeverStarted, WaitTimeout, queue_depth, watch_run
from microprocess.cli.steer import SteerError
from microprocess.declarations import (
    Declarations,
    JobDeclaration,
    JobDeclarationError,
    SourceKind,
    UnknownJobError,
    get_declarations,
)
from microprocess.ledger import Ledger, Progress, RunNotFound, RunStatus
from microprocess.pipeline.splitter import new_run_id, source_uri_refusal
from microprocess.reduce.layout import ReportLayout
from microprocess.stacks import CLOUD_STACK, MANIFESTS_PREFIX

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_STACK = 3
EXIT_TIMEOUT = 4


#: The keys of `status --json` (the ledger's progress without its `error`).
STATUS_KEYS = (
    "run_id",
    "job",
    "status",
    "expected",
    "succeeded",
    "failed",
    "pending",
    "split_done",
    "started_at",
    "finished_at",
    "report_uri",
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="microprocess",
    help="Run background jobs as millions of small pushed tasks, on AWS or on this laptop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
local_app = typer.Typer(help="The embedded local stack (ministack + the CDK app's local stage).", no_args_is_help=True)
app.add_typer(local_app, name="local")
project.register(app)  # --declarations: the one declaration file every command reads
init.register(app)  # microprocess init: a team's own project
planner.register(app)
check_service.register(app)


class Target(StrEnum):
    local = "local"
    aws = "aws"


TargetOption = Annotated[
    Target,
    typer.Option(
        "--target", envvar="MICROPROCESS_TARGET", metavar="local|aws", help="The local stack or the AWS deployment."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Follow the run with a progress bar until it ends.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=1, metavar="SECONDS", help="Give up waiting after this many seconds.")
]


def emit_json(value: Any) -> None:
    """One JSON document on one line of stdout (`--json` output is JSON lines)."""
    typer.echo(json.dumps(value, default=str))


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


# ----------------------------------------------------------------------------- deployments


@dataclass
class Deployment:
    """A deployed stack the CLI works against.

    Attributes:
        name: what to call it in messages.
        outputs: the stack outputs (`LedgerTable`, `SplitterFunctionName`, `JobQueueUrls`, ...).
        client: makes a boto3 client for a service name.
        endpoint_url: the emulator's endpoint (local stack only).
        logs_hint: where to look when a function misbehaves.
    """

    name: str
    outputs: dict[str, str]
    client: Callable[[str], Any]
    endpoint_url: str | None = None
    logs_hint: str = ""

    def output(self, key: str) -> str:
        value = self.outputs.get(key)
        if not value:
            fail(f"the {self.name} stack has no output '{key}' (it has {sorted(self.outputs)})", EXIT_NO_STACK)
        return value

    def ledger(self) -> Ledger:
        return Ledger(self.output("LedgerTable"), client=self.client("dynamodb"))

    def json_output(self, key: str) -> dict[str, Any]:
        """An output that holds a JSON object (`JobQueueUrls`, `SourceTables`, ...)."""
        raw = self.output(key)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            fail(f"the {self.name} stack's output '{key}' is not JSON: {raw[:100]!r}; redeploy it", EXIT_NO_STACK)
        if not isinstance(value, dict):
            fail(f"the {self.name} stack's output '{key}' is not a JSON object; redeploy it", EXIT_NO_STACK)
        return value

    def job_queue_url(self, job: str) -> str | None:
        """The task queue of `job` (None when the stack predates the job: redeploy)."""
        url = self.json_output("JobQueueUrls").get(job)
        return str(url) if url else None


def _local_deployment() -> Deployment:
    from microprocess.local import NoLocalStack, Workspace, read_live_state

    ws = Workspace.discover()
    try:
        state = read_live_state(ws.state_file)
    except NoLocalStack as exc:
        fail(str(exc), EXIT_NO_STACK)
    return Deployment(
        name="local",
        outputs=state.outputs,
        client=lambda service: state.client(service, max_pool_connections=20),
        endpoint_url=state.endpoint_url,
        logs_hint=f"see {ws.logs}/ministack.log",
    )


def _aws_deployment() -> Deployment:
    session = boto3.session.Session()
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    try:
        stacks = session.client("cloudformation", config=config).describe_stacks(StackName=CLOUD_STACK)["Stacks"]
    except NoCredentialsError:
        fail("no AWS credentials found; configure a profile (AWS_PROFILE) or use the local stack (--target local)", 3)
    except ClientError as exc:
        if "does not exist" in str(exc):
            fail(f"stack {CLOUD_STACK} is not deployed in {session.region_name}; deploy it with `cdk deploy`", 3)
        fail(f"cannot read stack {CLOUD_STACK}: {exc}", EXIT_NO_STACK)
    except BotoCoreError as exc:
        fail(f"cannot reach AWS: {exc}", EXIT_NO_STACK)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return Deployment(
        name=f"AWS ({CLOUD_STACK}, {session.region_name})",
        outputs=outputs,
        client=lambda service: session.client(service, config=config),
        logs_hint="see the function's CloudWatch Logs",
    )


def connect(target: Target) -> Deployment:
    """The deployment for `target` (tests replace this)."""
    return _local_deployment() if target is Target.local else _aws_deployment()


# ----------------------------------------------------------------------------- operations


def _job_or_fail(job: str) -> str:
    try:
        return get_declarations().jobs.get(job).name
    except UnknownJobError as exc:
        fail(str(exc), EXIT_USAGE)


@contextmanager
def _ledger_errors(dep: Deployment) -> Iterator[None]:
    try:
        yield
    except SteerError as exc:
        fail(str(exc), exc.code)
    except RunNotFound as exc:
        fail(f"unknown run: {exc}; list runs with `microprocess runs`")
    except NoCredentialsError:
        fail("no AWS credentials found", EXIT_NO_STACK)
    except ClientError as exc:
        fail(f"the {dep.name} stack refused the request: {exc}")
    except BotoCoreError as exc:
        hint = " Is the local stack still running? (`microprocess local up`)" if dep.endpoint_url else ""
        fail(f"cannot reach the {dep.name} stack: {exc}.{hint}", EXIT_NO_STACK)


def start_run(dep: Deployment, payload: dict[str, Any]) -> None:
    """Invoke the splitter asynchronously with `payload`, as the schedule does."""
    resp = dep.client("lambda").invoke(
        FunctionName=dep.output("SplitterFunctionName"),
        InvocationType="Event",
        Payload=json.dumps(payload).encode(),
    )
    if resp.get("StatusCode") != 202:
        raise SteerError(f"the splitter did not accept the start (HTTP {resp.get('StatusCode')}); {dep.logs_hint}")


def status_dict(progress: Progress) -> dict[str, Any]:
    full = progress.as_dict()
    return {k: full[k] for k in STATUS_KEYS}


def wait_for(dep: Deployment, run_id: str, *, timeout_s: float, show: bool, job: str) -> Progress:
    ledger = dep.ledger()
    try:
        return watch_run(
            ledger,
            run_id,
            sqs=dep.client("sqs"),
            queue_url=dep.job_queue_url(job),
            dlq_url=dep.outputs.get("DeadLetterQueueUrl"),
            reduce_queue_url=dep.outputs.get("ReduceQueueUrl"),
            timeout_s=timeout_s,
            console=err,
            show=show,
        )
    except RunNeverStarted as exc:
        fail(f"{exc}; {dep.logs_hint}")
    except WaitTimeout as exc:
        fail(f"{exc}; follow it with `microprocess status {run_id}`", EXIT_TIMEOUT)


def _print_status(progress: Progress) -> None:
    d = progress.as_dict()
    for key in STATUS_KEYS:
        out.print(f"{key:<12} {escape('' if d[key] is None else str(d[key]))}")
    if d.get("error"):
        out.print(f"{'error':<12} [red]{escape(d['error'])}[/]")


def _finish_waited(progress: Progress, as_json: bool) -> None:
    if as_json:
        emit_json(status_dict(progress))
    else:
        _print_status(progress)
    if progress.status is not RunStatus.SUCCEEDED:
        raise typer.Exit(EXIT_FAILED)


# ----------------------------------------------------------------------------- run commands


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
) -> dict[str, Any]:
    """The splitter's start event for a manual run (uploading `items` first)."""
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
    return payload


@app.command()
def run(
    job: Annotated[str, typer.Argument(help="A declared job (see microprocess.toml).")],
    items: ItemsOption = None,
    source_uri: SourceUriOption = None,
    param: ParamOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 600.0,
    target: TargetOption = Target.local,
) -> None:
    """Start a run of JOB the way its schedule does (an asynchronous splitter invocation).

    By default the run reads the job's declared source; `--items FILE` runs the items of a local
    JSONL/CSV file instead, `--source-uri s3://...` another manifest. `--param key=value` is passed
    into every task."""
    job = _job_or_fail(job)
    params = parse_params(param)
    if source_uri is not None:
        check_manifest_uri(source_uri)
    dep = connect(target)
    run_id = new_run_id(job)
    with _ledger_errors(dep):
        start_run(dep, start_payload(dep, job, run_id, items=items, source_uri=source_uri, params=params))
        if as_json:
            emit_json({"run_id": run_id})
        else:
            out.print(f"started run [bold]{run_id}[/]")
        if wait:
            _finish_waited(wait_for(dep, run_id, timeout_s=timeout, show=True, job=job), as_json)


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run id.")],
    as_json: JsonOption = False,
    target: TargetOption = Target.local,
) -> None:
    """Show the progress of RUN: run_id, job, status, expected, succeeded, failed, pending,
    split_done, started_at, finished_at, report_uri."""
    dep = connect(target)
    with _ledger_errors(dep):
        progress = dep.ledger().progress(run_id)
    if as_json:
        emit_json(status_dict(progress))
    else:
        _print_status(progress)
        control.print_control_status(dep, progress)  # the job's concurrency cap in force; how to resume


def _short_time(iso: str | None) -> str:
    """`2026-11-24T09:31:02.123456Z` → `2026-11-24 09:31:02`."""
    return (iso or "").replace("T", " ").split(".")[0].removesuffix("Z")


@app.command()
def runs(
    job: Annotated[str | None, typer.Option("--job", metavar="JOB", help="Only this job's runs.")] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, metavar="N", help="Newest runs per job.")] = 20,
    target: TargetOption = Target.local,
) -> None:
    """List the newest runs of one job, or of every declared job."""
    jobs = [_job_or_fail(job)] if job else get_declarations().jobs.names()
    dep = connect(target)
    with _ledger_errors(dep):
        ledger = dep.ledger()
        found = [status_dict(ledger.progress(r.run_id)) for j in jobs for r in ledger.list_runs(j, limit=limit)]
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
            f"{d['failed']:>7,}  {d['expected']:>9,}  {_short_time(d['started_at'])}"
        )


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    target: TargetOption = Target.local,
) -> None:
    """Cancel RUN: no more service calls within one visibility timeout; its messages are dropped."""
    dep = connect(target)
    with _ledger_errors(dep):
        steer.cancel_run(dep, run_id)
    out.print(f"cancelled run [bold]{run_id}[/]; its remaining messages are acknowledged without calls")


@app.command("retry-failed")
def retry_failed(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    wait: WaitOption = False,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 600.0,
    target: TargetOption = Target.local,
) -> None:
    """Start a new run over the failed tasks of RUN."""
    dep = connect(target)
    with _ledger_errors(dep):
        started = steer.retry_failed_run(dep, run_id)
        if started.run_id is None:
            if as_json:
                emit_json({"run_id": None, "retry_of": run_id, "failed": 0})
            else:
                out.print(f"run {run_id} has no failed tasks; nothing to retry")
            return
        if as_json:
            emit_json({"run_id": started.run_id, "retry_of": run_id, "failed": started.failed})
        else:
            out.print(f"started run [bold]{started.run_id}[/] over the {started.failed} failed tasks of {run_id}")
        if wait:
            _finish_waited(wait_for(dep, started.run_id, timeout_s=timeout, show=True, job=started.job), as_json)


def _split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise SteerError(f"report URI {uri!r} is not s3://bucket/prefix")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


#: The folder, under a run's report prefix, of the intermediate per-shard part files.
PARTS_FOLDER = "parts/"


def download_report(dep: Deployment, run_id: str, out_dir: Path, *, parts: bool = False) -> list[Path]:
    """Download the report files under the run's report prefix to `out_dir/<run_id>/`
    (with `parts`, also the intermediate per-shard part files)."""
    progress = dep.ledger().progress(run_id)
    if not progress.report_uri:
        fail(f"run {run_id} has no report yet (it is {progress.status})")
    bucket, prefix = _split_s3_uri(progress.report_uri)
    # The URI came from a service's finalize answer (reduce = "service"): download only from the
    # platform's own report folder of this run, never wherever the answer pointed.
    own = ReportLayout(dep.output("ReportsBucket"), progress.job, run_id)
    prefix = own.prefix if prefix == own.prefix.rstrip("/") else prefix  # never the r-10 next to r-1
    if bucket != own.bucket or not prefix.startswith(own.prefix):
        fail(
            f"run {run_id}'s report URI {progress.report_uri} is outside the platform's report folder of "
            f"this run ({own.uri}): not downloaded. A service that reduces must write its report there "
            "(docs/push-contract.md §7)"
        )
    s3 = dep.client("s3")
    bucket, base, keys = report_keys(s3, progress.report_uri, parts=parts)
    target_dir = out_dir / run_id
    written: list[Path] = []
    for key in keys:
        rel = key[len(base) :] if key.startswith(base) else key.rsplit("/", 1)[-1]
        path = (target_dir / rel).resolve()
        if target_dir.resolve() not in path.parents:
            continue  # a key with `..` must not write outside the folder
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(path))
        written.append(path)
    return written


def report_keys(s3: Any, report_uri: str, *, parts: bool = False) -> tuple[str, str, list[str]]:
    """(bucket, folder prefix, object keys) of the report files under a run's report URI (with
    `parts`, also the intermediate per-shard part files)."""
    bucket, prefix = _split_s3_uri(report_uri)
    keys = _list_keys(s3, bucket, prefix)
    if not keys and not prefix.endswith("/"):
        # The URI names one object of the report: take its whole folder.
        prefix = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        keys = _list_keys(s3, bucket, prefix)
    elif keys == [prefix] and "/" in prefix:
        prefix = prefix.rsplit("/", 1)[0] + "/"
        keys = _list_keys(s3, bucket, prefix)
    if not keys:
        raise SteerError(f"nothing under {report_uri}")
    base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
    if not parts:
        keys = [k for k in keys if not k[len(base) :].startswith(PARTS_FOLDER)]
    return bucket, base, keys


def _list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    return keys


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Folder to download into (the run gets a subfolder).")
    ] = Path("out"),
    parts: Annotated[bool, typer.Option("--parts", help="Also download the per-shard part files.")] = False,
    target: TargetOption = Target.local,
) -> None:
    """Download the report of RUN to OUT/<run id>/ (the report files; --parts adds the per-shard parts)."""
    dep = connect(target)
    with _ledger_errors(dep):
        written = download_report(dep, run_id, out_dir, parts=parts)
    for path in written:
        out.print(escape(str(path)))


# ----------------------------------------------------------------------------- local stack


def _workspace() -> Any:
    from microprocess.local import Workspace

    return Workspace.discover()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM both end the foreground command through its cleanup.

    SIGINT is set explicitly: a shell starts background jobs with it ignored."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


ServiceUrlOption = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        metavar="NAME=URL",
        help="NAME=URL: point the declared service NAME at a process you run (no process is started for it).",
    ),
]


@local_app.command("up")
def local_up(
    items: Annotated[
        int | None,
        typer.Option(
            "--items",
            min=0,
            metavar="N",
            help="Items to seed into each declared table with a local_seed (default: its local_items).",
        ),
    ] = None,
    service: ServiceUrlOption = None,
    no_example_service: Annotated[
        bool,
        typer.Option("--no-example-service", help="Start no service process: every service needs --service NAME=URL."),
    ] = False,
    chaos: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, metavar="FILE", help="Fault file for the services and functions."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Return once the stack is up (stop it with `local down`).")
    ] = False,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request the services take.")] = False,
) -> None:
    """Start the local stack: ministack, the deployed local stage, the declared services; seed the tables."""
    from microprocess.local import LocalStack, LocalStackError, StackAlreadyRunning, UpOptions
    from microprocess.local.services import ServiceConfigError, parse_service_urls

    ws = _workspace()
    try:
        declarations = get_declarations()
        urls = parse_service_urls(service or [], declarations)
    except (JobDeclarationError, ServiceConfigError) as exc:
        fail(str(exc), EXIT_USAGE)
    stack = LocalStack(ws, echo=lambda line: err.print(escape(line)), declarations=declarations)
    _stop_on_signals()
    options = UpOptions(
        items=items, chaos=chaos, access_log=access_log, service_urls=urls, start_examples=not no_example_service
    )
    try:
        state = stack.up(options)
    except (StackAlreadyRunning, ServiceConfigError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted; stopped what was started")
        raise typer.Exit(130) from None
    except Exception as exc:  # every start failure has a message that says what to do
        fail(f"the local stack did not start: {exc}" if not isinstance(exc, LocalStackError) else str(exc))
    out.print(f"local stack up in {stack.timings.line()}")
    out.print(escape(f"endpoint {state.endpoint_url}; services {state.services}; state in {ws.state_file}"))
    if detach:
        out.print("stop it with `microprocess local down`")
        return
    out.print("Ctrl-C stops it.")
    try:
        exited = stack.wait()
        err.print(f"[red]{escape(stack.exited_message(exited))}[/]")
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 0
    stack.down()
    raise typer.Exit(code)


@local_app.command("down")
def local_down() -> None:
    """Stop the local stack started by `local up` (only the processes it started)."""
    from microprocess.local import LocalStackError, NoLocalStack, stop_recorded

    ws = _workspace()
    try:
        stopped = stop_recorded(ws, echo=lambda line: None)
    except NoLocalStack:
        out.print("no local stack is running")
        return
    except LocalStackError as exc:
        fail(str(exc))
    out.print(f"stopped {', '.join(stopped)}" if stopped else "the local stack had already stopped")


@local_app.command("status")
def local_status(as_json: JsonOption = False) -> None:
    """Show the running local stack (from local.json)."""
    from microprocess.local import NoLocalStack, read_state

    ws = _workspace()
    try:
        state = read_state(ws.state_file)
    except NoLocalStack as exc:
        fail(str(exc), EXIT_NO_STACK)
    running = state.running()
    if as_json:
        emit_json({**state.model_dump(), "running": running})
        return
    out.print(escape(f"endpoint {state.endpoint_url} (region {state.region}); services {state.services}"))
    for name, pid in state.pids.items():
        out.print(f"  {name:<14} pid {pid:<8} {'running' if name in running else '[red]gone[/]'}")
    if len(running) < len(state.pids):
        raise typer.Exit(EXIT_FAILED)


# ----------------------------------------------------------------------------- demo


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


@app.command()
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
    ws = _workspace()
    stack = LocalStack(ws, echo=lambda line: err.print(f"  {escape(line)}"), declarations=declarations)
    _stop_on_signals()
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
        with _ledger_errors(dep):
            start_run(dep, {"job": job.name, "run_id": run_id, "source": "manual"})
            out.print(f"started run [bold]{run_id}[/]")
            final = wait_for(dep, run_id, timeout_s=timeout, show=True, job=job.name)
            run_time = time.monotonic() - started
            _print_status(final)
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


control.register(app)  # tasks, pause, resume, stop, scale (after connect and the options they use)
console.register(app)  # the operator console


def main() -> None:
    app()


if __name__ == "__main__":
    main()
