"""Run control commands: `tasks`, `pause`, `resume` and `scale` (see `microprocess.control`).

`register(app)` adds them to the `microprocess` Typer app.
"""

# No `from __future__ import annotations`: Typer reads the annotations of the commands, defined
# inside `register`, at run time.
import json
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from microprocess.cli import deployment, options
from microprocess.cli.options import JsonOption, Target, TargetOption
from microprocess.cli.progress import reduce_phase
from microprocess.cli.steer import pause_run, resume_run, scale_job, scaler, stop_run_now
from microprocess.control.adaptive import AdaptiveConcurrency, CloudWatchSignals
from microprocess.control.lookup import RunTasks, TaskDetail
from microprocess.control.scale import EventSourceCap, ScaleError, check_concurrency
from microprocess.declarations import JobDeclaration, UnknownJobError, get_declarations
from microprocess.ledger import Progress, RunRecord, RunStatus, TaskState

if TYPE_CHECKING:
    from microprocess.cli.deployment import Deployment


class StateChoice(StrEnum):
    FAILED = "FAILED"
    SUCCEEDED = "SUCCEEDED"
    PENDING = "PENDING"
    NOT_ATTEMPTED = "NOT_ATTEMPTED"


def _fail(message: str, code: int | None = None) -> NoReturn:
    options.fail(message, options.EXIT_FAILED if code is None else code)
    raise AssertionError("unreachable")  # pragma: no cover - fail() raises typer.Exit


def _job(name: str) -> JobDeclaration:
    try:
        return get_declarations().jobs.get(name)
    except UnknownJobError as exc:
        _fail(str(exc), options.EXIT_USAGE)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def find_tasks(
    dep: "Deployment",
    run: RunRecord,
    *,
    state: StateChoice | None,
    item: str | None,
    task: str | None,
    limit: int | None,
) -> list[TaskDetail]:
    """The tasks `microprocess tasks` shows."""
    tasks = RunTasks(dep.ledger())
    if item is not None:
        found = tasks.item(run, item)
        if not found:
            job = get_declarations().jobs.get(run.job) if run.job in get_declarations().jobs.names() else None
            hint = (
                f"job '{run.job}' does not index item ids (item_index = false): look it up by --task"
                if job is not None and not job.item_index
                else "check the id (the job's item_id_field), or wait: its page may not be split yet"
            )
            _fail(f"item {item!r} is not in run {run.run_id}; {hint}")
        return [d for d in found if state is None or str(d.state) == str(state)]
    if task is not None:
        detail = tasks.task(run, task)
        if detail is None:
            _fail(f"task {task!r} is not in run {run.run_id} (task ids are <segment>-<seq>, e.g. 0-000000042)")
        return [detail]
    if state in (StateChoice.PENDING, StateChoice.NOT_ATTEMPTED):
        return tasks.unfinished_details(run, limit=limit)
    states = [TaskState(str(state))] if state is not None else [TaskState.FAILED, TaskState.SUCCEEDED]
    found = []
    for s in states:
        for detail in tasks.terminal(run, s):
            found.append(detail)
            if limit is not None and len(found) >= limit:
                return found
    return found


def _print_tasks(details: list[TaskDetail], *, one: bool) -> None:
    out = options.out
    if one:
        for d in details:
            for key, value in d.as_dict().items():
                shown = "" if value is None else (value if isinstance(value, str) else json.dumps(value, default=str))
                out.print(f"{key:<19} {escape(str(shown))}")
            out.print("")
        return
    table = Table()
    for name in ("task", "item", "state", "attempts", "finished", "error / result"):
        table.add_column(name, overflow="fold")
    for d in details:
        table.add_row(
            d.task_id,
            d.item_id or "",
            str(d.state),
            "" if d.attempts is None else str(d.attempts),
            (d.finished_at or "").replace("T", " ").split(".")[0],
            escape(_short(d.error if d.error else d.result) if (d.error or d.result is not None) else ""),
        )
    out.print(table)


def cap_in_force(dep: "Deployment", job_name: str) -> EventSourceCap | None:
    """The job's concurrency cap in force, or None when it cannot be read (status never fails on it)."""
    if not dep.outputs.get("ForwarderFunctionName") or not dep.outputs.get("JobQueueUrls"):
        return None  # a stack without per-job mappings: nothing to show (and nothing to complain about here)
    try:
        return scaler(dep).cap(get_declarations().jobs.get(job_name))
    except Exception:  # a status display never fails on the cap: `scale JOB` says what is wrong
        return None


def print_control_status(dep: "Deployment", progress: Progress) -> None:
    """Extra `status` lines: the cap in force for the run's job, the reduce phase (parts done of
    total, finalize, email, reduce queue depth), and how to resume a paused run."""
    out = options.out
    cap = cap_in_force(dep, progress.job)
    if cap is not None:
        shown = cap.concurrency if cap.concurrency is not None else "unset (1000)"
        out.print(f"{'concurrency':<12} {shown} (declared max {cap.declared})")
    try:
        phase = reduce_phase(
            dep.ledger(), progress.run_id, sqs=dep.client("sqs"), reduce_queue_url=dep.outputs.get("ReduceQueueUrl")
        )
    except Exception:  # a status display never fails on the reduce phase
        phase = None
    if phase is not None:
        out.print(f"{'reduce':<12} {escape(phase.describe())}")
    if progress.status is RunStatus.PAUSED:
        out.print(f"{'paused':<12} resume with `microprocess resume {progress.run_id}`")
    from microprocess.cli.service_load import service_lines
    from microprocess.declarations import get_declarations

    declared = get_declarations()
    if progress.job in declared.jobs.names():
        for line in service_lines(dep, declared, declared.jobs.get(progress.job).service):
            out.print(f"{'service':<12} {escape(line)}")


def signals_of(dep: "Deployment", interval_s: float) -> Any:
    """Where the controller reads a job's signals: CloudWatch on AWS; on the local stack, which
    computes no metrics, the forwarder's EMF log lines of the last interval."""
    if dep.endpoint_url is None:
        return CloudWatchSignals(dep.client("cloudwatch"), window_s=max(int(interval_s), 60))
    from microprocess.local.signals import LogSignals

    return LogSignals.for_function(
        dep.client("lambda"), dep.client("logs"), dep.output("ForwarderFunctionName"), window_s=interval_s
    )


def run_adaptive(dep: "Deployment", job: JobDeclaration, *, interval_s: float, ticks: int, as_json: bool) -> None:
    """Decide and apply JOB's cap every `interval_s` seconds from its metrics of that interval."""
    import time

    adaptive = AdaptiveConcurrency(jobs=[job], scaler=scaler(dep), signals=signals_of(dep, interval_s))
    done = 0
    try:
        while True:
            with deployment.ledger_errors(dep):
                try:
                    decision = adaptive.tick()[job.name]
                except ScaleError as exc:
                    options.fail(str(exc), options.EXIT_NO_STACK)
            if as_json:
                options.emit_json({"job": job.name, **decision.as_dict()})
            else:
                options.out.print(
                    f"{job.name}: {decision.action:<8} {decision.previous} → {decision.concurrency}: "
                    f"{escape(decision.reason)}"
                )
            done += 1
            if ticks and done >= ticks:
                return
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    """Add `tasks`, `pause`, `resume`, `stop` and `scale` to a Typer app."""

    @app.command("tasks")
    def tasks_command(
        run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run id.")],
        state: Annotated[
            StateChoice | None,
            typer.Option(
                "--state",
                case_sensitive=False,
                help="Only tasks in this state (PENDING: split, not terminal; NOT_ATTEMPTED: the same once the "
                "run has ended).",
            ),
        ] = None,
        item: Annotated[str | None, typer.Option("--item", help="The task(s) of this item id (O(1) reads).")] = None,
        task: Annotated[str | None, typer.Option("--task", help="The task of this task id (<segment>-<seq>).")] = None,
        limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many tasks (0: all).")] = 100,
        as_json: JsonOption = False,
        target: TargetOption = Target.local,
    ) -> None:
        """Show tasks of RUN: one item's state, attempts, last error, timings and result, or the tasks in a state."""
        if item is not None and task is not None:
            options.fail("give --item ID or --task TASK_ID, not both", options.EXIT_USAGE)
        dep = deployment.connect(target)
        with deployment.ledger_errors(dep):
            run = dep.ledger().require_run(run_id)
            found = find_tasks(dep, run, state=state, item=item, task=task, limit=limit or None)
        if as_json:
            options.emit_json([d.as_dict() for d in found])
            return
        if not found:
            options.out.print(f"no {str(state) + ' ' if state else ''}tasks in run {run_id} ({run.status})")
            return
        _print_tasks(found, one=item is not None or task is not None)

    @app.command("pause")
    def pause_command(
        run_id: Annotated[str, typer.Argument(metavar="RUN")],
        as_json: JsonOption = False,
        target: TargetOption = Target.local,
    ) -> None:
        """Pause RUN: no pushes within one visibility timeout, its split stops; attempts and messages are kept."""
        dep = deployment.connect(target)
        with deployment.ledger_errors(dep):
            was = pause_run(dep, run_id)
        if as_json:
            options.emit_json({"run_id": run_id, "status": str(RunStatus.PAUSED), "paused_from": str(was)})
        else:
            options.out.print(
                f"paused run [bold]{run_id}[/] (was {was}); its messages are kept until `microprocess resume {run_id}`"
            )

    @app.command("resume")
    def resume_command(
        run_id: Annotated[str, typer.Argument(metavar="RUN")],
        as_json: JsonOption = False,
        target: TargetOption = Target.local,
    ) -> None:
        """Resume a paused RUN: re-send its kept messages with their attempts; restart its split if it was splitting."""
        dep = deployment.connect(target)
        with deployment.ledger_errors(dep):
            result = resume_run(dep, run_id)
        if as_json:
            options.emit_json({"run_id": run_id, **result.as_dict()})
            return
        extra = "; its splitter is restarted" if result.splitter_restarted else ""
        extra += "; its last tasks were done: reduce started" if result.reduce_claimed else ""
        options.out.print(
            f"resumed run [bold]{run_id}[/] ({result.status}); {result.requeued} kept messages re-sent{extra}"
        )

    @app.command("stop")
    def stop_command(
        run_id: Annotated[str, typer.Argument(metavar="RUN")],
        as_json: JsonOption = False,
        target: TargetOption = Target.local,
    ) -> None:
        """Stop RUN early: no more pushes; its report of what was done is built once batches in flight settle (the rest not attempted)."""  # noqa: E501
        dep = deployment.connect(target)
        with deployment.ledger_errors(dep):
            left = stop_run_now(dep, run_id)
        if as_json:
            options.emit_json({"run_id": run_id, "status": str(RunStatus.REDUCING), "not_attempted": left})
        else:
            options.out.print(f"stopped run [bold]{run_id}[/]; {left} tasks not attempted; its report is being built")

    @app.command("scale")
    def scale_command(
        job: Annotated[str, typer.Argument(help="A declared job.")],
        concurrency: Annotated[
            int | None,
            typer.Option("--concurrency", help="New cap on concurrent forwarder batches (2..1000, ≤ declared max)."),
        ] = None,
        adaptive: Annotated[
            bool,
            typer.Option(
                "--adaptive",
                help="Keep adjusting the cap by itself (AIMD on the service's 429/503 answers and push time), "
                "within the declared maximum, until Ctrl-C (or --ticks).",
            ),
        ] = False,
        interval: Annotated[float, typer.Option("--interval", min=10, help="Seconds between decisions.")] = 60.0,
        ticks: Annotated[int, typer.Option("--ticks", min=0, help="Stop after this many decisions (0: never).")] = 0,
        as_json: JsonOption = False,
        target: TargetOption = Target.local,
    ) -> None:
        """Show or change JOB's concurrency cap (its event source's maximum concurrency), mid-run."""
        declared = _job(job)
        if adaptive:
            if concurrency is not None:
                options.fail("give --concurrency N or --adaptive, not both", options.EXIT_USAGE)
            run_adaptive(deployment.connect(target), declared, interval_s=interval, ticks=ticks, as_json=as_json)
            return
        if concurrency is not None:
            try:
                check_concurrency(declared, concurrency)
            except ScaleError as exc:
                options.fail(str(exc), options.EXIT_USAGE)
        dep = deployment.connect(target)
        with deployment.ledger_errors(dep):
            if concurrency is None:
                try:
                    before = after = scaler(dep).cap(declared)
                except ScaleError as exc:
                    options.fail(str(exc), options.EXIT_NO_STACK)
            else:
                before, after = scale_job(dep, job, concurrency)
        if as_json:
            options.emit_json({**after.as_dict(), "previous": before.concurrency})
            return
        if concurrency is None:
            options.out.print(f"{job}: concurrency {after.concurrency} in force (declared max {after.declared})")
        else:
            options.out.print(
                f"{job}: concurrency {before.concurrency} → [bold]{after.concurrency}[/] "
                f"(declared max {after.declared}); new batches follow within about a minute"
            )
