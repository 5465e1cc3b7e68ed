"""The sweeper, run every few minutes: the safety net that makes every run finish.

For each run that has not ended:
* SPLITTING with every segment read to its end (the call that marks the split done died):
  finish the split, and enqueue the reduce if that claims it.
* SPLITTING with no split progress for `stuck_after_s`: restart the (resumable) splitter
  with the run's id only: the splitter reads the run's own recorded source and cursor.
* RUNNING with the split done: settle the counter targets if a crash left them unset;
  when the done count has not moved for `stuck_after_s` (counted from the end of the latest
  wait its service asked for, if later: a run whose service sheds load is waiting, not stuck,
  and a recount racing the completions that resume after the wait would fence them off until
  the next repair), recount the task records
  (repairing a crash between a task write and its count) and re-run the completion check.
  The recount goes shard by shard within `repair_budget_s` per sweep and continues on the
  next sweep (a 19 M-item run does not fit one invocation); a repair that an earlier
  sweeper left half done is taken up where it stopped.
* REDUCING for longer than `reduce_timeout_s`: re-enqueue the missing reduce parts, or
  the finalize (all idempotent at the service).
Runs still without progress, with a repair under way, or whose sweep failed are counted
in the `StuckRuns` metric (the stuck alarm).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from microprocess.declarations import JobRegistry
from microprocess.ledger import CURSOR_DONE, Ledger, RunRecord, RunStatus
from microprocess.pipeline.fanin import enqueue_finalize, enqueue_reduce_parts
from microprocess.pipeline.shedding import ServiceWaits

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
    repairs_continuing: list[str] = field(default_factory=list)
    splits_finished: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
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
        repair_budget_s: float = 300.0,
        waits: ServiceWaits | None = None,
    ) -> None:
        """`sender` sends the re-enqueued reduce parts and finalizes (the reduce queue).
        `repair_budget_s`: seconds of recounting per run per sweep (keep it well under the
        sweeper function's timeout; at least one shard is recounted per sweep). `waits`: the
        services' shedding marks (None: no service ever asks to wait)."""
        self.repair_budget_s, self.waits = repair_budget_s, waits
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
                stuck = self._sweep_run(run, report)
            except Exception as exc:  # e.g. a repair raced a forwarder: next sweep tries again
                # A run whose sweep cannot proceed raises the stuck alarm, never hides.
                log.warning("sweeper: run %s: %s: %s", run.run_id, type(exc).__name__, exc)
                report.errors.append(f"{run.run_id}: {type(exc).__name__}: {exc}")
                stuck = True
            if stuck:
                report.stuck.append(run.run_id)
                stuck_by_job[run.job] = stuck_by_job.get(run.job, 0) + 1
        for job, count in stuck_by_job.items():
            self.emit("StuckRuns", count, job)
        return report

    def _sweep_run(self, run: RunRecord, report: SweepReport) -> bool:
        """Sweep one run; True if it is stuck."""
        job = self.jobs.get(run.job)
        now = self.now()
        if run.status is RunStatus.SPLITTING:
            if run.cursors and all(c == CURSOR_DONE for c in run.cursors.values()):
                log.warning("sweeper: run %s read to its end but not marked split; finishing the split", run.run_id)
                report.splits_finished.append(run.run_id)
                if self.ledger.finish_split(run.run_id):
                    self._claimed(run, report)
                return False
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
            underway = self.ledger.repair_state(run.run_id)
            if underway is None:
                prog = self.ledger.progress(run.run_id)
                changed = _parse(self.ledger.note_progress(run.run_id, prog.succeeded + prog.failed))
                if self.now() - changed < self.stuck_after:
                    return False
                wait_ends = self._wait_ends(job.service)  # read only for a run quiet for long enough
                if wait_ends is not None and self.now() - wait_ends < self.stuck_after:
                    return False
                if not run.split_done:
                    return True
                log.warning("sweeper: run %s quiet since %s; recounting its tasks", run.run_id, changed)
            state = self.ledger.repair_step(run.run_id, budget_s=self.repair_budget_s)
            if not state.done:
                log.warning(
                    "sweeper: run %s repair: %d of %d shards recounted; the next sweep goes on",
                    run.run_id,
                    state.shards_counted,
                    state.shard_count,
                )
                report.repairs_continuing.append(run.run_id)
                return True
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

    def _wait_ends(self, service: str) -> datetime | None:
        """When the latest wait `service` asked every job for ends (or ended); None when it never
        asked, or the mark cannot be read (logged: the run is then judged by its progress only)."""
        if self.waits is None:
            return None
        try:
            until = self.waits.asked_until(service)
        except (ClientError, BotoCoreError) as exc:
            log.warning("sweeper: service %s's shedding mark unread (%s); its runs judged by progress", service, exc)
            return None
        return datetime.fromtimestamp(until, UTC) if until is not None else None

    def _claimed(self, run: RunRecord, report: SweepReport) -> None:
        self.emit("ReducesClaimed", 1, run.job, run_id=run.run_id)
        enqueue_reduce_parts(self.sender, self.jobs.get(run.job), run.run_id, run.shard_count)
        report.reduces_claimed.append(run.run_id)
