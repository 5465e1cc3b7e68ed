"""Steering a run: the one code path of `pause`, `resume`, `scale`, `stop`, `cancel` and
`retry-failed`, which the CLI commands and the console's buttons both call.

Each function takes the `Deployment` the CLI or the console works against and raises
`SteerError` with a message that says what is wrong and what to do (and the CLI's exit code);
the CLI turns it into its error line (`deployment.ledger_errors`), the console into its answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from microprocess.control.pause import PauseError, ResumeResult, RunResumer, cancel_paused, pause
from microprocess.control.scale import EventSourceCap, JobScaler, ScaleError, check_concurrency
from microprocess.control.stop import STOPPABLE, enqueue_stopped_reduce, stop_run
from microprocess.declarations import JobDeclaration, UnknownJobError, get_declarations
from microprocess.ledger import RunStatus
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.start import new_run_id

if TYPE_CHECKING:
    from microprocess.cli.deployment import Deployment

#: Exit codes (the same numbers as `options.EXIT_*`).
EXIT_FAILED, EXIT_USAGE, EXIT_NO_STACK = 1, 2, 3


class SteerError(Exception):
    """A steer action that cannot be done; `code` is the CLI's exit code for it."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def start_run(dep: Deployment, payload: dict[str, Any]) -> None:
    """Invoke the splitter asynchronously with `payload`, as the schedule does."""
    resp = dep.client("lambda").invoke(
        FunctionName=dep.output("SplitterFunctionName"),
        InvocationType="Event",
        Payload=json.dumps(payload).encode(),
    )
    if resp.get("StatusCode") != 202:
        raise SteerError(f"the splitter did not accept the start (HTTP {resp.get('StatusCode')}); {dep.logs_hint}")


def scaler(dep: Deployment) -> JobScaler:
    """The scaler of the deployment's per-job event sources (the forwarder's SQS mappings)."""
    urls = {k: str(v) for k, v in dep.json_output("JobQueueUrls").items()}
    return JobScaler(
        lambda_client=dep.client("lambda"),
        sqs=dep.client("sqs"),
        forwarder_function=dep.output("ForwarderFunctionName"),
        job_queue_urls=urls,
    )


def declared_job(name: str) -> JobDeclaration:
    try:
        return get_declarations().jobs.get(name)
    except UnknownJobError as exc:
        raise SteerError(str(exc), EXIT_USAGE) from exc


def pause_run(dep: Deployment, run_id: str) -> RunStatus:
    """Pause RUN; returns the status it was paused from."""
    try:
        return pause(dep.ledger(), run_id)
    except PauseError as exc:
        raise SteerError(str(exc)) from exc


def resume_run(dep: Deployment, run_id: str) -> ResumeResult:
    """Resume a paused RUN: re-send its kept messages; restart its split if it was splitting."""
    ledger = dep.ledger()
    job = declared_job(ledger.require_run(run_id).job)

    def queue_of(name: str) -> str:
        url = dep.job_queue_url(name)
        if not url:
            raise SteerError(f"the stack has no task queue for job '{name}'; deploy it again", EXIT_NO_STACK)
        return url

    resumer = RunResumer(
        ledger=ledger,
        sqs=dep.client("sqs"),
        job_queue_url=queue_of,
        reduce_queue_url=dep.output("ReduceQueueUrl"),
        restart_splitter=lambda event: start_run(dep, event),
    )
    try:
        return resumer.resume(run_id, job)
    except PauseError as exc:
        raise SteerError(str(exc)) from exc


def cancel_run(dep: Deployment, run_id: str) -> None:
    """Cancel RUN: no more service calls within one visibility timeout; its messages are dropped."""
    ledger = dep.ledger()
    if ledger.cancel(run_id) or cancel_paused(ledger, run_id):
        return
    now = ledger.require_run(run_id).status
    if now is RunStatus.REDUCING:
        raise SteerError(f"run {run_id} is already reducing (every task is done); it is too late to cancel it")
    raise SteerError(f"run {run_id} has already ended ({now}); nothing to cancel")


def stop_run_now(dep: Deployment, run_id: str) -> int:
    """Stop RUN early: no more pushes, its reduce starts now and reports what was done, the rest
    listed as not attempted. Returns the tasks not attempted (as counted when it stopped)."""
    ledger = dep.ledger()
    progress = ledger.progress(run_id)
    if progress.status not in STOPPABLE:
        raise SteerError(f"run {run_id} is {progress.status}; only a splitting, running or paused run can be stopped")
    left = max(progress.expected - progress.succeeded - progress.failed, 0)
    error = (
        f"stopped early by the operator after {progress.succeeded + progress.failed} of {progress.expected} tasks; "
        f"the others were not attempted (list them with `microprocess tasks {run_id} --state NOT_ATTEMPTED`)"
    )
    if not stop_run(ledger, run_id, error):
        raise SteerError(f"run {run_id} is {ledger.require_run(run_id).status} now; it was not stopped")
    job = declared_job(progress.job)
    sender = QueueSender(client=dep.client("sqs"), queue_url=dep.output("ReduceQueueUrl"))
    enqueue_stopped_reduce(sender, ledger, job, run_id)
    return left


@dataclass(frozen=True)
class RetryStarted:
    """A retry run: its id (None when there was nothing to retry), the failures it retries and
    the tasks never attempted it retries (0 unless asked for)."""

    run_id: str | None
    retry_of: str
    failed: int
    job: str
    not_attempted: int = 0


def retry_failed_run(dep: Deployment, run_id: str, *, include_not_attempted: bool = False) -> RetryStarted:
    """Start a new run over the failed tasks of an ended RUN (and, with `include_not_attempted`,
    the tasks it never attempted: it was stopped early or cancelled); none when there are none."""
    progress = dep.ledger().progress(run_id)
    if not progress.status.terminal:
        raise SteerError(
            f"run {run_id} is still {progress.status}; retry its failures once it has ended (or cancel it)"
        )
    left = progress.pending if include_not_attempted else 0
    if progress.failed == 0 and left == 0:
        return RetryStarted(None, run_id, 0, progress.job)
    new_id = new_run_id(progress.job)
    event: dict[str, Any] = {"job": progress.job, "run_id": new_id, "retry_of": run_id, "source": "manual"}
    if include_not_attempted:
        event["include_not_attempted"] = True
    start_run(dep, event)
    return RetryStarted(new_id, run_id, progress.failed, progress.job, left)


def retry_message(started: RetryStarted, *, include_not_attempted: bool = False) -> str:
    """What a retry started, in words (the CLI prints it, the console shows it)."""
    if started.run_id is None:
        none = "no failed tasks and no tasks not attempted" if include_not_attempted else "no failed tasks"
        return f"run {started.retry_of} has {none}; nothing to retry"
    what = f"the {started.failed} failed tasks"
    if include_not_attempted:
        what += f" and the {started.not_attempted} tasks not attempted"
    return f"started run {started.run_id} over {what} of {started.retry_of}"


def scale_job(dep: Deployment, job_name: str, concurrency: int) -> tuple[EventSourceCap, EventSourceCap]:
    """Set JOB's concurrency cap (its event source's maximum concurrency); returns (before, after)."""
    job = declared_job(job_name)
    try:
        check_concurrency(job, concurrency)
    except ScaleError as exc:
        raise SteerError(str(exc), EXIT_USAGE) from exc
    try:
        return scaler(dep).set(job, concurrency)
    except ScaleError as exc:
        raise SteerError(str(exc), EXIT_NO_STACK) from exc
