"""The forwarder's admission: the ordered gates a queue message passes before it is pushed.

Each gate is a small function `gate(admission, lookups) -> Verdict | None`. None lets the
message on to the next gate (a gate may fill in what it found: the envelope, the job, the run,
the item); a verdict ends the message's admission: dead-letter it, acknowledge it without a call,
park it (a paused run's), or defer it (its page not accounted yet). A message that passes every
gate is pushed. The forwarder carries out the verdicts (`Forwarder._admit`).

The order is the point (`GATES`): a paused run's message is checked like any other (cancelled?
its shard and its task the run's own?) *before* it is parked, so nothing that `resume` could
never re-send, or that is not the run's, waits in the ledger. A gate that needs a fresh run re-reads
it (the run cache may be behind: a pause, the splitter's accounting); statuses only move on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from microprocess.declarations import JobDeclaration, JobRegistry, ReduceMode, UnknownJobError
from microprocess.ledger import Ledger, RunRecord, RunStatus
from microprocess.pipeline.attempts import attempt_of
from microprocess.pipeline.envelope import CLAIMS_PREFIX, MalformedEnvelope, TaskEnvelope, TaskKind, outside_run
from microprocess.pipeline.push import PushResult

log = logging.getLogger(__name__)

#: How many runs back a claim check may come from (a retry of a retry of ...; each retry-failed
#: run re-sends the first run's claims).
MAX_RETRY_CHAIN = 32
#: S3 error codes of a claim-checked item that cannot be read: dead-lettered (anything else is retried).
UNREADABLE_CODES = ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "403")


#: How long a forwarder trusts a run record it read (a cancel or a stop reaches it within this).
RUN_CACHE_TTL_S = 2.0


class RunCache:
    """Run records by id, re-read after `ttl_s` (so a cancel takes effect within it)."""

    def __init__(self, ledger: Ledger, ttl_s: float = RUN_CACHE_TTL_S) -> None:
        self.ledger, self.ttl_s = ledger, ttl_s
        self._runs: dict[str, tuple[float, RunRecord | None]] = {}
        self._lock = threading.Lock()

    def get(self, run_id: str, *, fresh: bool = False) -> RunRecord | None:
        now = time.monotonic()
        with self._lock:
            hit = self._runs.get(run_id)
        if hit and now - hit[0] < self.ttl_s and not fresh:
            return hit[1]
        run = self.ledger.get_run(run_id)
        with self._lock:
            self._runs[run_id] = (now, run)
        return run


@dataclass
class Work:
    """An admitted message: what is pushed, and (once pushed) the service's answer."""

    record: dict[str, Any]
    envelope: TaskEnvelope
    job: JobDeclaration
    run: RunRecord
    item: Any = None
    result: PushResult | None = None

    @property
    def message_id(self) -> str:
        return str(self.record["messageId"])

    @property
    def attempt(self) -> int:
        return attempt_of(self.record)


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class DeadLetter:
    """To the dead-letter queue with the reason, and acknowledged (never retried)."""

    reason: str


@dataclass(frozen=True)
class Acknowledge:
    """Acknowledged without a call (a cancelled run's message, a late duplicate, an ended run's)."""

    why: str


@dataclass(frozen=True)
class Park:
    """A paused run's message: kept in the ledger until `resume`, and acknowledged (no attempt)."""

    envelope: TaskEnvelope


@dataclass(frozen=True)
class Defer:
    """A task sent but not accounted yet: back in a moment, not counted as an attempt."""


@dataclass(frozen=True)
class Wait:
    """A task whose service asked every job to wait (load shedding, `pipeline.shedding`): re-sent
    to arrive when the wait ends, not pushed, not counted."""

    seconds: float
    job: str


Verdict = DeadLetter | Acknowledge | Park | Defer | Wait


@dataclass(frozen=True)
class Lookups:
    """What the gates read: the declared jobs, the runs (cached), the claims bucket, an item by reference."""

    jobs: JobRegistry
    runs: RunCache
    fetch: Callable[[str], Any]
    #: The platform bucket whose `claims/` prefix holds claim-checked items (empty: any bucket, tests).
    claims_bucket: str = ""
    #: Seconds left of a service's ask to wait that this record should wait out (None: push it;
    #: the forwarder's `shedding.ShedGate`, within the job's throttle budget); None: no shedding.
    service_wait: Callable[[dict[str, Any], JobDeclaration], float | None] | None = None


@dataclass
class Admission:
    """A message on its way through the gates, and what they found out so far."""

    record: dict[str, Any]
    parsed: TaskEnvelope | None = None
    declared: JobDeclaration | None = None
    current: RunRecord | None = None
    #: The pause gate re-read the run and found it paused (the park gate parks the message).
    paused: bool = False
    item: Any = None

    @property
    def envelope(self) -> TaskEnvelope:
        assert self.parsed is not None, "the parse gate comes first"
        return self.parsed

    @property
    def job(self) -> JobDeclaration:
        assert self.declared is not None, "the known_job gate comes before"
        return self.declared

    @property
    def run(self) -> RunRecord:
        assert self.current is not None, "the known_run gate comes before"
        return self.current

    def reread(self, lookups: Lookups) -> RunRecord:
        """The run read again from the ledger (kept as it was should it have vanished)."""
        self.current = lookups.runs.get(self.envelope.run_id, fresh=True) or self.current
        return self.run


Gate = Callable[[Admission, Lookups], Verdict | None]


# ---------------------------------------------------------------- the gates, in order


def parse(a: Admission, _: Lookups) -> Verdict | None:
    """The body is a valid task envelope."""
    try:
        a.parsed = TaskEnvelope.parse(a.record.get("body", ""))
    except MalformedEnvelope as exc:
        return DeadLetter(f"malformed message: {exc}")
    return None


def known_job(a: Admission, lookups: Lookups) -> Verdict | None:
    """It names a declared job."""
    try:
        a.declared = lookups.jobs.get(a.envelope.job)
    except UnknownJobError as exc:
        return DeadLetter(f"malformed message: {exc}")
    return None


def known_run(a: Admission, lookups: Lookups) -> Verdict | None:
    """It names a run the ledger has."""
    a.current = lookups.runs.get(a.envelope.run_id)
    if a.current is None:
        return DeadLetter(f"malformed message: unknown run '{a.envelope.run_id}' (not in the ledger)")
    return None


def not_cancelled(a: Admission, _: Lookups) -> Verdict | None:
    """A cancelled run's messages are acknowledged without a call (one cancelled while paused
    too: the pause gate's fresh read shows the cancel)."""
    if a.run.status is RunStatus.CANCELLED:
        log.info(
            "run %s is cancelled: acknowledging task %s without a call",
            a.run.run_id,
            a.envelope.task_id,
            extra={"run_id": a.envelope.run_id, "job": a.envelope.job, "task_id": a.envelope.task_id},
        )
        return Acknowledge("run cancelled")
    return None


def confirm_pause(a: Admission, lookups: Lookups) -> Verdict | None:
    """A run the cache says is paused is re-read (resumed or cancelled since?); still paused,
    its message is parked by `park_paused`, after the checks between the two."""
    if a.run.status is RunStatus.PAUSED:
        a.paused = a.reread(lookups).status is RunStatus.PAUSED
    return None


def not_late(a: Admission, _: Lookups) -> Verdict | None:
    """A task of a run already reducing or ended is a late duplicate: every task was terminal
    when the reduce was claimed."""
    if a.envelope.kind is TaskKind.TASK and a.run.status in (RunStatus.REDUCING, RunStatus.SUCCEEDED, RunStatus.FAILED):
        return Acknowledge("late duplicate of a task")
    return None


def shard_and_ownership(a: Admission, lookups: Lookups) -> Verdict | None:
    """Its shard is one the run has, and a task is the run's own (`outside_run`): else it is
    dead-lettered, paused or not. The run is re-read first when the cache may be behind (a task
    not owned yet: the splitter's accounting; a reduce message of a splitting or running run)."""
    env = a.envelope
    task = env.kind is TaskKind.TASK
    behind = not a.run.owns_task(env.task_id) if task else a.run.status in (RunStatus.SPLITTING, RunStatus.RUNNING)
    if behind and not a.paused:  # a paused run was just re-read
        a.reread(lookups)
    outside = outside_run(env, a.run)
    if outside is not None:
        return DeadLetter(f"malformed message: {outside}")
    return None


def park_paused(a: Admission, _: Lookups) -> Verdict | None:
    """A paused run's message waits in the ledger until `resume`: no push, no attempt, no DLQ."""
    return Park(a.envelope) if a.paused else None


def accounted(a: Admission, _: Lookups) -> Verdict | None:
    """A task sent but not yet accounted by its splitter is tried again in a moment (not an attempt)."""
    if a.envelope.kind is TaskKind.TASK and a.run.owns_task(a.envelope.task_id) is None:
        return Defer()
    return None


def service_not_waiting(a: Admission, lookups: Lookups) -> Verdict | None:
    """A task whose service asked every job to wait (it sheds load) waits until then: re-sent for
    when the wait ends, not pushed, its attempt not counted (`pipeline.shedding`)."""
    if lookups.service_wait is None or a.envelope.kind is not TaskKind.TASK:
        return None
    left = lookups.service_wait(a.record, a.job)
    return Wait(left, a.job.name) if left is not None else None


def reduce_in_time(a: Admission, _: Lookups) -> Verdict | None:
    """A reduce-queue message is handled while its run is reducing; once it has ended only its
    completion callback and a platform finalize delivered again (it publishes and notifies what a
    crash left undone) are. Anything else is acknowledged: the run has already ended."""
    env, run = a.envelope, a.run
    if env.kind is TaskKind.TASK or run.status is RunStatus.REDUCING:
        return None
    ended = run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED)
    if ended and (
        env.kind is TaskKind.COMPLETION or (env.kind is TaskKind.FINALIZE and a.job.reduce is ReduceMode.PLATFORM)
    ):
        return None
    return Acknowledge("the run has already ended")


def own_claim(a: Admission, lookups: Lookups) -> Verdict | None:
    """An item by reference is one of the platform's claims for this task's job and its run (or
    a run it retries), so a message can never make the forwarder read, and send to a service,
    another job's or run's items."""
    env = a.envelope
    if not env.item_ref:
        return None
    refused = foreign_claim(env, a.run, lookups)
    return DeadLetter(f"malformed message: item_ref {env.item_ref} {refused}") if refused else None


def fetch_item(a: Admission, lookups: Lookups) -> Verdict | None:
    """The item: inline, or read by reference (an unreadable reference is dead-lettered; any other
    error is raised, and the record retried)."""
    env = a.envelope
    a.item = env.item
    if env.item_ref:
        try:
            a.item = lookups.fetch(env.item_ref)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in UNREADABLE_CODES:
                return DeadLetter(f"malformed message: S3 payload {env.item_ref} unreadable ({code})")
            raise
    return None


#: The gates in the order a message passes them.
GATES: tuple[Gate, ...] = (
    parse,
    known_job,
    known_run,
    confirm_pause,
    not_cancelled,
    not_late,
    shard_and_ownership,
    park_paused,
    accounted,
    service_not_waiting,
    reduce_in_time,
    own_claim,
    fetch_item,
)


def admit(record: dict[str, Any], lookups: Lookups, gates: tuple[Gate, ...] = GATES) -> Work | Verdict:
    """Pass `record` through `gates` in order: the first verdict, or the work to push."""
    a = Admission(record)
    for gate in gates:
        verdict = gate(a, lookups)
        if verdict is not None:
            return verdict
    return Work(record, a.envelope, a.job, a.run, a.item)


def foreign_claim(env: TaskEnvelope, run: RunRecord, lookups: Lookups) -> str | None:
    """Why `env.item_ref` is not this task's claim check (None when it is): it must be in the
    platform bucket's `claims/<job>/<run>/`, for the task's own job and its own run or a run
    it retries (a `retry-failed` run re-sends the original run's claims)."""
    claims_bucket = lookups.claims_bucket
    bucket, _, key = env.item_ref.removeprefix("s3://").partition("/") if env.item_ref else ("", "", "")
    if (claims_bucket and bucket != claims_bucket) or not key.startswith(CLAIMS_PREFIX):
        return f"is outside the platform's claims (s3://{claims_bucket or '<bucket>'}/{CLAIMS_PREFIX}...)"
    job_prefix = f"{CLAIMS_PREFIX}{env.job}/"
    if not key.startswith(job_prefix):
        return f"is not a claim of job '{env.job}' ({CLAIMS_PREFIX}{env.job}/<run>/...)"
    owner = key[len(job_prefix) :].split("/", 1)[0]
    current: RunRecord | None = run
    for _ in range(MAX_RETRY_CHAIN):
        if current is None:
            break
        if owner == current.run_id:
            return None
        current = lookups.runs.get(current.source_run) if current.source_run else None
    return f"belongs to run '{owner}', neither run {env.run_id} nor a run it retries"
