"""The sweeper, run every few minutes: the safety net that makes every run finish.

For each run that has not ended:
* SPLITTING with no split progress for `stuck_after_s`: restart the (resumable) splitter.
* RUNNING with the split done: settle the counter targets if a crash left them unset;
  when the done count has not moved for `stuck_after_s`, recount the task records
  (repairing a crash between a task write and its count) and re-run the completion check.
* REDUCING for longer than `reduce_timeout_s`: re-enqueue the missing reduce parts, or
  the finalize (all idempotent at the service).
Runs still without progress are counted in the `StuckRuns` metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from microprocess.declarations import JobRegistry
from microprocess.ledger import Ledger, LedgerError, RunRecord, RunStatus
from microprocess.pipeline.fanin import enqueue_finalize, enqueue_reduce_parts

log = logging.getLogger(__name__)
MetricsEmitter = Callable[..., None]  # (name, value, job, *, run_id=None)


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SweepReport:
    runs_seen: int = 0
    splitters_restarted: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    reduces_claimed: list[str] = field(default_factory=list)
    reduces_requeued: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Sweeper:
    def __init__(
        self,
        *,
        jobs: JobRegistry,
        ledger: Ledger,
        sender: Any,
        restart_splitter: Callable[[dict[str, Any]], None],
        stuck_after_s: int,
        reduce_timeout_s: int,
        emit: MetricsEmitter | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`sender` sends the re-enqueued reduce parts and finalizes (the reduce queue)."""
        self.jobs, self.ledger, self.sender = jobs, ledger, sender
        self.restart_splitter = restart_splitter
        self.stuck_after = timedelta(seconds=stuck_after_s)
        self.reduce_timeout = timedelta(seconds=reduce_timeout_s)
        self.emit = emit or (lambda name, value, job, **_: None)
        self.now = now

    def sweep(self) -> SweepReport:
        report = SweepReport()
        stuck_by_job: dict[str, int] = {name: 0 for name in self.jobs.names()}
        for run in self.ledger.active_runs(self.jobs.names()):
            report.runs_seen += 1
            try:
                if self._sweep_run(run, report):
                    report.stuck.append(run.run_id)
                    stuck_by_job[run.job] = stuck_by_job.get(run.job, 0) + 1
            except LedgerError as exc:  # e.g. a repair raced a forwarder: next sweep tries again
                log.warning("sweeper: run %s: %s", run.run_id, exc)
        for job, count in stuck_by_job.items():
            self.emit("StuckRuns", count, job)
        return report

    def _sweep_run(self, run: RunRecord, report: SweepReport) -> bool:
        """Sweep one run; True if it is stuck."""
        job = self.jobs.get(run.job)
        now = self.now()
        if run.status is RunStatus.SPLITTING:
            last = _parse(run.updated_at or run.created_at)
            if now - last >= self.stuck_after:
                log.warning("sweeper: run %s split idle since %s; restarting the splitter", run.run_id, last)
                self.restart_splitter({"job": run.job, "run_id": run.run_id, "source": "sweeper"})
                report.splitters_restarted.append(run.run_id)
                return True
            return False
        if run.status is RunStatus.RUNNING:
            if run.split_done and not run.targets_final and self.ledger.finish_split(run.run_id):
                self._claimed(run, report)
                return False
            prog = self.ledger.progress(run.run_id)
            changed = _parse(self.ledger.note_progress(run.run_id, prog.succeeded + prog.failed))
            if self.now() - changed < self.stuck_after:
                return False
            if run.split_done:
                log.warning("sweeper: run %s quiet since %s; recounting its tasks", run.run_id, changed)
                self.ledger.repair_counters(run.run_id)
                report.repaired.append(run.run_id)
                if self.ledger.check_completion(run.run_id):
                    self._claimed(run, report)
                    return False
            return True
        if run.status is RunStatus.REDUCING:
            claimed = _parse(run.reduce_claimed_at or run.created_at)
            if now - claimed < self.reduce_timeout:
                return False
            if not self.ledger.requeue_reduce(run.run_id, claimed_before=_iso(now - self.reduce_timeout)):
                return True
            parts = self.ledger.parts_done(run.run_id)
            missing = {k for k in range(run.shard_count) if f"{k:03d}" not in parts}
            if missing:
                enqueue_reduce_parts(self.sender, job, run.run_id, run.shard_count, only=missing)
            elif self.ledger.claim_finalize(run.run_id, reclaim_before=_iso(now - self.reduce_timeout)):
                enqueue_finalize(self.sender, job, run.run_id)
            log.warning("sweeper: run %s reduce re-enqueued (missing parts: %s)", run.run_id, sorted(missing))
            report.reduces_requeued.append(run.run_id)
            return True
        return False

    def _claimed(self, run: RunRecord, report: SweepReport) -> None:
        self.emit("ReducesClaimed", 1, run.job, run_id=run.run_id)
        enqueue_reduce_parts(self.sender, self.jobs.get(run.job), run.run_id, run.shard_count)
        report.reduces_claimed.append(run.run_id)
