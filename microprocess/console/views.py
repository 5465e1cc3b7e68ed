"""What the console's pages show, read from the deployment the CLI targets.

Nothing here scans the ledger: a run is its run item and its counters (`Ledger.progress`: one
GetItem and one BatchGetItem), its failures by error are the failure-group items written as
tasks fail (`ledger.failure_groups`: one Query per counter partition), a task or an item is
found by key (`control.lookup`), runs are listed from the runs-by-job index. The cost of a
page is the same for a run of 100 tasks and one of 19 million.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from microprocess.cli.control import cap_in_force
from microprocess.cli.deployment import Deployment
from microprocess.cli.progress import QueueDepth, ReducePhase, queue_depth, reduce_phase
from microprocess.cli.report import report_keys
from microprocess.console.schedule import describe, next_fire
from microprocess.control.lookup import RunTasks, TaskDetail
from microprocess.declarations import JobDeclaration, get_declarations
from microprocess.ledger import Progress, RunRecord, RunStatus
from microprocess.ledger.failure_groups import FailureGroup, read_failure_groups

log = logging.getLogger(__name__)

#: Runs listed per job on the Runs page (newest first), and on the Jobs page.
RUNS_PER_JOB = 20
LAST_RUNS_SHOWN = 5


def parse_time(iso: str | None) -> datetime | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


@lru_cache(maxsize=256)
def _usd_per_task(job: str, items: int) -> float | None:
    """The planner's cost per task of a run of `items` tasks of `job` (its committed prices)."""
    from microprocess.cli.planner import plan_job

    try:
        plan = plan_job(job, max(items, 1))
    except Exception as exc:  # a display never fails on the estimate
        log.warning("no cost estimate for %s (%s)", job, exc)
        return None
    return plan.total_usd / max(items, 1)


def cost_so_far(job: str, expected: int, done: int) -> float | None:
    """The planner's prices applied to what a run has done, USD (None when it cannot plan the job)."""
    per_task = _usd_per_task(job, max(expected, done))
    return None if per_task is None else per_task * done


@dataclass(frozen=True)
class RunRow:
    """One run as the Runs page lists it."""

    run_id: str
    job: str
    status: str
    expected: int
    succeeded: int
    failed: int
    split_done: bool
    started_at: str
    finished_at: str | None
    rate_per_s: float | None
    eta_s: float | None
    cost_usd: float | None
    retry_of: str | None = None
    retries: tuple[str, ...] = ()
    error: str | None = None

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def pending(self) -> int:
        return max(self.expected - self.done, 0)

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.expected if self.expected else (100.0 if self.finished_at else 0.0)

    @property
    def ended(self) -> bool:
        return RunStatus(self.status).terminal


def run_row(progress: Progress, run: RunRecord, *, now: datetime | None = None) -> RunRow:
    """A run's row: its counts, its average rate since it started, the ETA at that rate, its cost."""
    now = now or datetime.now(UTC)
    start, end = parse_time(run.created_at), parse_time(run.finished_at) or now
    done = progress.succeeded + progress.failed
    elapsed = (end - start).total_seconds() if start else 0.0
    rate = done / elapsed if elapsed > 0 and done else None
    remaining = max(progress.expected - done, 0)
    eta = remaining / rate if rate and not progress.status.terminal and progress.split_done else None
    return RunRow(
        run_id=run.run_id,
        job=run.job,
        status=str(progress.status),
        expected=progress.expected,
        succeeded=progress.succeeded,
        failed=progress.failed,
        split_done=progress.split_done,
        started_at=run.created_at,
        finished_at=run.finished_at,
        rate_per_s=rate,
        eta_s=eta,
        cost_usd=cost_so_far(run.job, progress.expected, done),
        retry_of=run.source_run,
        error=run.error or None,
    )


@dataclass(frozen=True)
class JobRow:
    """One declared job as the Jobs page shows it."""

    name: str
    description: str
    service: str
    schedule: str
    schedule_text: str
    next_run: datetime | None
    max_concurrency: int
    concurrency: int | None
    adaptive: bool
    learned_capacity: float | None
    last_runs: tuple[RunRow, ...]


@dataclass(frozen=True)
class Phase:
    """One phase of a run on its timeline: when it started and ended (None: not yet)."""

    name: str
    start: datetime | None
    end: datetime | None

    @property
    def seconds(self) -> float | None:
        if self.start is None:
            return None
        return ((self.end or datetime.now(UTC)) - self.start).total_seconds()

    @property
    def state(self) -> str:
        return "waiting" if self.start is None else "running" if self.end is None else "done"


def phases(run: RunRecord) -> list[Phase]:
    """Split, push, reduce, report, then the email and the completion callback (one claim covers
    both, `email_sent_at`): from the run's own timestamps."""
    t = parse_time
    created, split_end = t(run.created_at), t(run.split_finished_at)
    claimed, finalize, finished = t(run.reduce_claimed_at), t(run.finalize_claimed_at), t(run.finished_at)
    notices = t(run.email_sent_at)
    stop = finished if run.status.terminal else None
    return [
        Phase("split", created, split_end or stop),
        Phase("push", created, claimed or stop),
        Phase("reduce", claimed, finalize or stop),
        Phase("report", finalize, finished),
        Phase("email + callback", finished if notices else None, notices),
    ]


@dataclass(frozen=True)
class RunLive:
    """Everything the run page shows, read at one moment."""

    row: RunRow
    run: RunRecord
    depth: QueueDepth
    phases: list[Phase]
    failure_groups: list[FailureGroup]
    report_files: list[str]
    concurrency: int | None
    reduce: ReducePhase | None
    #: The job's service: its load and shares, "asked to wait until T" while it sheds (`cli.service_load`).
    service_lines: list[str] = field(default_factory=list)
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def in_flight(self) -> int | None:
        return self.depth.in_flight

    def bars(self) -> list[tuple[Phase, float, float]]:
        """Each phase with its bar on the timeline: (phase, left %, width %) of the run's span so far."""
        t0 = self.phases[0].start
        ends = [p.end or self.read_at for p in self.phases if p.start is not None]
        span = max(((max(ends) - t0).total_seconds() if t0 and ends else 0.0), 1e-3)
        out = []
        for p in self.phases:
            if p.start is None or t0 is None:
                out.append((p, 0.0, 0.0))
                continue
            left = (p.start - t0).total_seconds() / span * 100
            width = ((p.end or self.read_at) - p.start).total_seconds() / span * 100
            out.append((p, min(max(left, 0.0), 100.0), min(max(width, 0.5), 100.0 - min(left, 99.5))))
        return out

    @property
    def finished(self) -> bool:
        """Nothing more will change: the run has ended, its report is written and its notices are
        not being sent (sent, or none claimed: a job without recipients or callback)."""
        sending = self.reduce is not None and self.reduce.email == "sending"
        return self.row.ended and (bool(self.report_files) or not self.run.report_uri) and not sending

    @property
    def not_attempted(self) -> int:
        """Tasks that will not be done: the pending ones of a run that has ended (or was stopped)."""
        stopped = self.run.status.terminal or (self.run.status is RunStatus.REDUCING and self.row.pending > 0)
        return self.row.pending if stopped else 0


class ConsoleData:
    """The console's reads over one deployment (its ledger, queues, event sources, report bucket)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="console")

    def declared_jobs(self) -> list[JobDeclaration]:
        return list(get_declarations().jobs)

    def job(self, name: str) -> JobDeclaration:
        return get_declarations().jobs.get(name)

    # ---------------------------------------------------------------- runs

    def _rows(self, runs: list[RunRecord]) -> list[RunRow]:
        ledger = self.dep.ledger()
        progresses = list(self._pool.map(lambda r: ledger.progress(r.run_id), runs))
        rows = [run_row(p, r) for p, r in zip(progresses, runs, strict=True)]
        retries: dict[str, list[str]] = {}
        for row in rows:
            if row.retry_of:
                retries.setdefault(row.retry_of, []).append(row.run_id)
        return [
            RunRow(**{**row.__dict__, "retries": tuple(retries.get(row.run_id, ()))}) if row.run_id in retries else row
            for row in rows
        ]

    def runs(self, *, job: str | None = None, status: str | None = None, limit: int = RUNS_PER_JOB) -> list[RunRow]:
        """The newest runs of one job or of every declared job, newest first, optionally of one status."""
        names = [job] if job else [j.name for j in self.declared_jobs()]
        ledger = self.dep.ledger()
        found = [r for runs in self._pool.map(lambda n: ledger.list_runs(n, limit=limit), names) for r in runs]
        if status:
            found = [r for r in found if str(r.status) == status]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return self._rows(found)

    def jobs(self) -> list[JobRow]:
        """Every declared job: service, schedule, next run, last runs, the cap in force, the learned capacity."""
        from microprocess.control.scheduled import ControllerState

        ledger = self.dep.ledger()
        state = ControllerState(self.dep.client("dynamodb"), ledger.table_name)

        def one(job: JobDeclaration) -> JobRow:
            cap = cap_in_force(self.dep, job.name)
            learned = None
            if job.adaptive:
                try:
                    learned = state.remembered(job.name)[1]
                except Exception as exc:  # a display never fails on the controller's memory
                    log.warning("no controller state for %s (%s)", job.name, exc)
            return JobRow(
                name=job.name,
                description=job.description,
                service=job.service,
                schedule=job.schedule,
                schedule_text=describe(job.schedule),
                next_run=next_fire(job.schedule),
                max_concurrency=job.max_concurrency,
                concurrency=cap.concurrency if cap is not None else None,
                adaptive=job.adaptive,
                learned_capacity=learned,
                last_runs=tuple(self._rows(ledger.list_runs(job.name, limit=LAST_RUNS_SHOWN))),
            )

        return list(self._pool.map(one, self.declared_jobs()))

    def run(self, run_id: str) -> RunLive:
        """A run's live view (raises `RunNotFound` for an unknown run)."""
        ledger = self.dep.ledger()
        run = ledger.require_run(run_id)
        outputs = self.dep.outputs
        sqs = self.dep.client("sqs")
        progress_f = self._pool.submit(ledger.progress, run_id)
        groups_f = self._pool.submit(read_failure_groups, ledger, run_id, run.counter_count)
        depth_f = self._pool.submit(
            queue_depth, sqs, self.dep.job_queue_url(run.job), outputs.get("DeadLetterQueueUrl")
        )
        cap_f = self._pool.submit(cap_in_force, self.dep, run.job)
        reduce_f = self._pool.submit(
            reduce_phase, ledger, run_id, sqs=sqs, reduce_queue_url=outputs.get("ReduceQueueUrl")
        )
        service_f = self._pool.submit(self._service_lines, run.job)
        cap = cap_f.result()
        return RunLive(
            row=run_row(progress_f.result(), run),
            run=run,
            depth=depth_f.result(),
            phases=phases(run),
            failure_groups=groups_f.result(),
            report_files=self.report_files(run),
            concurrency=cap.concurrency if cap is not None else None,
            reduce=reduce_f.result(),
            service_lines=service_f.result(),
        )

    def _service_lines(self, job: str) -> list[str]:
        from microprocess.cli.service_load import service_lines

        declared = get_declarations()
        if job not in declared.jobs.names():
            return []
        return service_lines(self.dep, declared, declared.jobs.get(job).service)

    def report_files(self, run: RunRecord) -> list[str]:
        """The names of the run's report files (relative to its report folder), once written."""
        if not run.report_uri:
            return []
        try:
            _, base, keys = report_keys(self.dep.client("s3"), run.report_uri)
        except Exception as exc:  # a display never fails on the report listing
            log.warning("report of %s not listed (%s)", run.run_id, exc)
            return []
        return sorted(k[len(base) :] for k in keys if k.startswith(base))

    def report_object(self, run_id: str, name: str) -> Any:
        """The S3 object (a `get_object` answer) of one report file, by its name in the listing."""
        run = self.dep.ledger().require_run(run_id)
        if name not in self.report_files(run):
            raise KeyError(name)
        bucket, base, _ = report_keys(self.dep.client("s3"), str(run.report_uri))
        return self.dep.client("s3").get_object(Bucket=bucket, Key=base + name)

    # ---------------------------------------------------------------- tasks

    def task(self, run_id: str, task_id: str) -> TaskDetail | None:
        ledger = self.dep.ledger()
        return RunTasks(ledger).task(ledger.require_run(run_id), task_id)

    def find(self, run_id: str, query: str) -> list[TaskDetail]:
        """The tasks of an item id, or the task of a task id (`<segment>-<seq>`): by key, never a scan."""
        ledger = self.dep.ledger()
        run = ledger.require_run(run_id)
        tasks = RunTasks(ledger)
        found = tasks.item(run, query)
        if not found and run.owns_task(query) is not False:
            detail = tasks.task(run, query)
            found = [detail] if detail is not None else []
        return found
