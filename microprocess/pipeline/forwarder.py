"""The forwarder: pushes each queued task to the queue service and records the outcome.

One invocation takes a batch of SQS records and answers with a partial batch
response: only records that should be retried are listed in `batchItemFailures`.

* Malformed records (not JSON, wrong schema, unknown job, unknown run, missing S3
  payload) go straight to the DLQ with the reason and are acknowledged: never
  retried forever, never failing the others.
* Records of a cancelled run, or task records of a run already reducing or ended
  (late duplicates), are acknowledged without calling the service.
* Pushes in a batch run concurrently. 2xx: SUCCEEDED; 4xx but 408/429: FAILED, no
  retry; else retried with exponential backoff and jitter (visibility timeout),
  honouring `Retry-After`, until the job's max attempts, then FAILED with the last error.
  A push that never reached the service (no byte of it left: it could not connect, a restart,
  a deploy) is not an attempt: the message is re-sent with a delay (≤ 60 s) carrying its
  attempts so far and since when it has been unreachable, and acknowledged, for up to the job's
  `unreachable_grace_s` per outage (a push that reaches the service ends the outage); past
  that, such pushes count as attempts again (runs always finish). Likewise a 429 or 503 with
  `Retry-After` (the service asks to slow down) is re-sent after it without counting, for up
  to the job's `throttle_budget_s` from the task's first such answer; past it they count.
  A push refused with 401 (its signature: perhaps a rotation not taken up yet) is re-sent the
  same way, uncounted, for up to `SIGNATURE_REFUSED_GRACE_S`; past that it is FAILED.
* Outcomes are recorded in the ledger (counted once, one counter write per batch);
  the completion that finishes the run claims the reduce and enqueues its parts;
  the last part enqueues the finalize; the finalize ends the run.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from microprocess.chaos.faults import FaultInjector, InjectedCrash
from microprocess.control.adaptive import observe_pushes
from microprocess.control.pause import PRIOR_ATTEMPTS_ATTRIBUTE, park, prior_attempts
from microprocess.control.stop import stop_if_hopeless
from microprocess.declarations import JobDeclaration, JobRegistry, ReduceMode, UnknownJobError
from microprocess.ledger import Ledger, RunRecord, RunStatus, TaskOutcome, TaskState
from microprocess.pipeline.envelope import (
    CLAIMS_PREFIX,
    SQS_MAX_MESSAGE_BYTES,
    MalformedEnvelope,
    TaskEnvelope,
    TaskKind,
    outside_run,
)
from microprocess.pipeline.fanin import enqueue_finalize, enqueue_reduce_parts
from microprocess.pipeline.push import HttpPusher, PushOutcome, PushResult
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.settings import DEFAULT_STUCK_AFTER_S, DEFAULT_SWEEP_PERIOD_S, defer_grace_s
from microprocess.pipeline.shedding import ShedGate

if TYPE_CHECKING:
    from microprocess.reduce import PlatformReducer

log = logging.getLogger(__name__)

MetricsEmitter = Callable[..., None]  # (name, value, job, *, run_id=None)
REASON_ATTRIBUTE = "microprocess-reason"
#: Reduce pushes may take much longer than a task.
REDUCE_TIMEOUT_S = 600.0
MAX_VISIBILITY_S = 43_200
#: Message attribute of a task re-sent because its service could not be reached: since when
#: (epoch seconds) its pushes have found the service unreachable.
UNREACHABLE_SINCE_ATTRIBUTE = "microprocess-unreachable-since"
#: The longest wait between two pushes to an unreachable service, seconds (a service coming
#: back is found within this).
UNREACHABLE_MAX_DELAY_S = 60
#: Message attribute of a task re-sent because its service refused the signature (401): since when.
SIGNATURE_REFUSED_SINCE_ATTRIBUTE = "microprocess-refused-since"
#: How long pushes refused with 401 are re-sent without counting as attempts, seconds: a rotation
#: the service has not taken up yet (it re-reads its secret at least every minute, whatever the
#: traffic: `microprocess.service.rotation.DEFAULT_MAX_AGE_S`) or this process has not (5 s).
#: Past it, a 401 is the permanent failure it says (a wrong secret): the task is FAILED.
SIGNATURE_REFUSED_GRACE_S = 300
#: The wait before a push refused with 401 is sent again, seconds (jittered down to half).
SIGNATURE_REFUSED_DELAY_S = 20
#: How many runs back a claim check may come from (a retry of a retry of ...; each retry-failed
#: run re-sends the first run's claims).
MAX_RETRY_CHAIN = 32
#: Message attribute of a task re-sent because its service asked it to slow down (429/503 with
#: `Retry-After`): since when (epoch seconds) its pushes have been throttled.
THROTTLED_SINCE_ATTRIBUTE = "microprocess-throttled-since"
#: SQS's longest message delay, seconds: a `Retry-After` above it is waited out by a counted backoff.
MAX_DELAY_S = 900
#: Message attribute of a task re-sent because its page was not accounted yet: since when.
DEFERRED_SINCE_ATTRIBUTE = "microprocess-deferred-since"
#: How long a task is deferred without counting its receives, with the sweeper's cloud timing
#: (its splitter's page is normally accounted within a second; a splitter that died is
#: restarted by the sweeper within this: `settings.defer_grace_s`). Past it, each deferral is
#: a counted receive again, towards the queue's redrive.
DEFER_GRACE_S = defer_grace_s(DEFAULT_STUCK_AFTER_S, DEFAULT_SWEEP_PERIOD_S)


def backoff_seconds(attempt: int, retry_after: float | None, *, base: float, cap: float, rng: random.Random) -> int:
    """Visibility timeout before the next attempt: `Retry-After` when the service gave one,
    else exponential (base * 2^(attempt-1), capped) with jitter in [0.5, 1]."""
    if retry_after is not None:
        delay = retry_after + rng.uniform(0, 1)
    else:
        delay = min(cap, base * 2 ** max(attempt - 1, 0)) * rng.uniform(0.5, 1.0)
    return int(min(max(round(delay), 1), MAX_VISIBILITY_S))


@dataclass
class _Work:
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

    @property
    def unreachable_since(self) -> float | None:
        """When this task's pushes began to find the service unreachable (None: not re-sent for that)."""
        return unreachable_since(self.record)


def attempt_of(record: dict[str, Any]) -> int:
    """This receive's attempt number: the receives of this message plus the attempts made before it
    was re-sent (parked by a pause, deferred, or its service unreachable)."""
    receives = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1") or 1)
    return receives + prior_attempts(record)


def throttled(result: PushResult) -> bool:
    """The service asked to slow down: 429 or 503 with a `Retry-After` (ARCHITECTURE invariant 11)."""
    return result.status in (429, 503) and result.retry_after_s is not None


def unreachable_since(record: dict[str, Any]) -> float | None:
    """When the outage the record's pushes are in began (None: not in one).

    The mark is set on the copy re-sent after a refused push, and holds for that copy's first
    receive only: a copy received again was kept by an ordinary backoff (its push reached the
    service and was told to retry, or it counted), so that outage is over and the next refused
    push starts a new one. The grace belongs to an outage, not to a task's life."""
    receives = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1") or 1)
    return _epoch_attribute(record, UNREACHABLE_SINCE_ATTRIBUTE) if receives <= 1 else None


def _epoch_attribute(record: dict[str, Any], name: str) -> float | None:
    """A message attribute holding epoch seconds (None when absent or not a number)."""
    attr = (record.get("messageAttributes") or {}).get(name) or {}
    value = attr.get("stringValue") or attr.get("StringValue")
    try:
        since = float(value) if value is not None else None
    except ValueError:
        return None
    return since if since is not None and since == since else None  # not NaN


def _keys(env: TaskEnvelope) -> dict[str, str]:
    """Structured-log keys of a message: its run and job (Powertools puts them in the JSON)."""
    return {"run_id": env.run_id, "job": env.job, "task_id": env.task_id}


class _Deferred(Exception):
    """A record to retry shortly (its task's page is not accounted yet)."""


class RunCache:
    """Run records by id, re-read after `ttl_s` (so a cancel takes effect within it)."""

    def __init__(self, ledger: Ledger, ttl_s: float = 2.0) -> None:
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


class Forwarder:
    """Pushes queued tasks to their job's service and records the outcomes.

    Args:
        jobs: the declared jobs.
        ledger: the run ledger.
        pusher_for: the signed pusher to a service, by service name (one per service).
        pusher: one pusher for every service (tests, single-service tools); instead of `pusher_for`.
        sqs, s3: boto3 clients.
        job_queue_urls: each job's task queue (so a record's queue is known from its ARN).
        task_queue_url: a default task queue (tests, single-queue tools).
        dead_letter_queue_url: where malformed records go.
        sender_for: the sender of a job's task queue, by job name (chaos duplicates).
        sender: one sender for every job (tests); instead of `sender_for`.
        reduce_sender: the reduce queue's sender.
        reducer: the built-in reduce, for jobs with `reduce = "platform"` (the reducer function's).
        claims_bucket: the platform bucket whose `claims/` prefix holds claim-checked items; a
            reference elsewhere is dead-lettered (empty: any bucket, tests).
        defer_grace_s: how long a task whose page is not accounted yet is deferred without
            counting its receives, s (deployed: `RuntimeSettings.defer_grace_s`, from the sweeper's timing).
        shed_gate: the services' load shedding (`shedding.ShedGate`; None: none).
    """

    def __init__(
        self,
        *,
        jobs: JobRegistry,
        ledger: Ledger,
        sqs: Any,
        s3: Any,
        dead_letter_queue_url: str,
        pusher_for: Callable[[str], HttpPusher] | None = None,
        pusher: HttpPusher | None = None,
        job_queue_urls: Mapping[str, str] | None = None,
        task_queue_url: str = "",
        sender_for: Callable[[str], QueueSender] | None = None,
        sender: QueueSender | None = None,
        reduce_sender: QueueSender | None = None,
        reducer: PlatformReducer | None = None,
        claims_bucket: str = "",
        faults: FaultInjector | None = None,
        emit: MetricsEmitter | None = None,
        retry_base_s: float = 2.0,
        retry_cap_s: float = 900.0,
        run_cache_ttl_s: float = 2.0,
        rng: random.Random | None = None,
        max_workers: int = 10,
        defer_grace_s: float = DEFER_GRACE_S,
        shed_gate: ShedGate | None = None,
    ) -> None:
        if (pusher_for is None) == (pusher is None):
            raise ValueError("give the Forwarder exactly one of pusher_for (per service) and pusher")
        if (sender_for is None) == (sender is None):
            raise ValueError("give the Forwarder exactly one of sender_for (per job) and sender")
        self.jobs = jobs
        self.ledger = ledger
        self.pusher_for: Callable[[str], HttpPusher] = pusher_for or (lambda _service: pusher)  # type: ignore[assignment,return-value]
        self.sqs = sqs
        self.s3 = s3
        self.job_queue_urls = dict(job_queue_urls or {})
        self.task_queue_url = task_queue_url
        self.dead_letter_queue_url = dead_letter_queue_url
        self.sender_for: Callable[[str], QueueSender] = sender_for or (lambda _job: sender)  # type: ignore[assignment,return-value]
        #: Reduce parts and finalizes go to the reduce queue (the default sender's when not given).
        if reduce_sender is None and sender is None:
            raise ValueError("give the Forwarder a reduce_sender (the reduce queue)")
        self.reduce_sender: QueueSender = reduce_sender or sender  # type: ignore[assignment]
        self.reducer = reducer
        self.claims_bucket = claims_bucket
        self.faults = faults
        self.emit = emit or (lambda name, value, job, **_: None)
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.runs = RunCache(ledger, run_cache_ttl_s)
        self.defer_grace_s = defer_grace_s
        self.shed_gate = shed_gate
        self.rng = rng or random.Random()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="push")

    # ------------------------------------------------------------------ entry

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        failures: list[str] = []
        work: list[_Work] = []
        for record in event.get("Records", []):
            try:
                item = self._admit(record)
            except _Deferred:
                failures.append(str(record.get("messageId")))
                continue
            except Exception:  # a bug while looking at one record fails only that record
                log.exception("forwarder: could not admit record %s", record.get("messageId"))
                failures.append(str(record.get("messageId")))
                continue
            if item is not None:
                work.append(item)
        work = [w for w in work if not self._wait_for_shedding(w)]  # acknowledged: re-sent for when it ends
        if work and self.faults:
            self.faults.maybe_crash("before_push")
        self._duplicate_some(work)
        started = time.monotonic()
        for w, result in zip(work, self._pool.map(self._push, work), strict=True):
            w.result = result
        pushed = [(w.job.name, w.result.status) for w in work if w.envelope.kind is TaskKind.TASK and w.result]
        if pushed:  # the adaptive concurrency's signals (429/503, push time), as EMF metrics
            observe_pushes(self.emit, pushed, time.monotonic() - started)
        if work and self.faults:
            self.faults.maybe_crash("after_push")
        tasks = [w for w in work if w.envelope.kind is TaskKind.TASK]
        failures += self._settle_tasks(tasks)
        for w in work:
            if w.envelope.kind is not TaskKind.TASK:
                failures += self._settle_reduce(w)
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}

    # ------------------------------------------------------------- admission

    def _admit(self, record: dict[str, Any]) -> _Work | None:
        """Parse and check one record; dead-letter or acknowledge it, or return work to push."""
        try:
            env = TaskEnvelope.parse(record.get("body", ""))
        except MalformedEnvelope as exc:
            self._dead_letter(record, f"malformed message: {exc}")
            return None
        try:
            job = self.jobs.get(env.job)
        except UnknownJobError as exc:
            self._dead_letter(record, f"malformed message: {exc}")
            return None
        run = self.runs.get(env.run_id)
        if run is None:
            self._dead_letter(record, f"malformed message: unknown run '{env.run_id}' (not in the ledger)")
            return None
        if run.status is RunStatus.CANCELLED:
            log.info(
                "run %s is cancelled: acknowledging task %s without a call",
                run.run_id,
                env.task_id,
                extra=_keys(env),
            )
            return None
        if run.status is RunStatus.PAUSED:
            run = self.runs.get(env.run_id, fresh=True) or run  # resumed since the cached read?
            if run.status is RunStatus.PAUSED:
                # Checked as outside a pause first: parked under a shard the run does not have, it
                # would never be re-sent by `resume`.
                outside = outside_run(env, run)
                if outside is not None:
                    self._dead_letter(record, f"malformed message: {outside}")
                    return None
                park(self.ledger, record, env)  # kept until `resume`: no push, no attempt, no DLQ
                return None
        if env.kind is TaskKind.TASK and run.status in (RunStatus.REDUCING, RunStatus.SUCCEEDED, RunStatus.FAILED):
            return None  # every task was terminal when the reduce was claimed: a late duplicate
        if env.kind is TaskKind.TASK:
            if not run.owns_task(env.task_id):  # the cached run may be behind the splitter's accounting
                run = self.runs.get(env.run_id, fresh=True) or run
            outside = outside_run(env, run)
            if outside is not None:
                self._dead_letter(record, f"malformed message: {outside}")
                return None
            if run.owns_task(env.task_id) is None:  # sent, not yet accounted: try again in a moment (not an attempt)
                if self._defer(record):
                    return None  # re-sent with a delay: this one is acknowledged
                raise _Deferred
        if env.kind is not TaskKind.TASK and run.status in (RunStatus.SPLITTING, RunStatus.RUNNING):
            run = self.runs.get(env.run_id, fresh=True) or run  # statuses only move on: the cache is behind
        if env.kind is not TaskKind.TASK and (outside := outside_run(env, run)) is not None:
            self._dead_letter(record, f"malformed message: {outside}")
            return None
        if env.kind is not TaskKind.TASK and run.status is not RunStatus.REDUCING and not _after_end(env, job, run):
            return None  # the run has already ended
        item = env.item
        if env.item_ref:
            refused = self._foreign_claim(env, run)
            if refused:
                self._dead_letter(record, f"malformed message: item_ref {env.item_ref} {refused}")
                return None
            try:
                item = self._fetch(env.item_ref)
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if code in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "403"):
                    self._dead_letter(record, f"malformed message: S3 payload {env.item_ref} unreadable ({code})")
                    return None
                raise
        return _Work(record, env, job, run, item)

    def _fetch(self, ref: str) -> Any:
        bucket, _, key = ref.removeprefix("s3://").partition("/")
        return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def _dead_letter(self, record: dict[str, Any], reason: str) -> None:
        log.warning("dead-lettering message %s: %s", record.get("messageId"), reason)
        body = record.get("body") or "<empty>"
        if len(body.encode()) + len(reason) + 64 > SQS_MAX_MESSAGE_BYTES:
            # No room for the reason beside a body this large: the body moves as it came
            # (nothing lost), the reason is in this log line.
            self.sqs.send_message(QueueUrl=self.dead_letter_queue_url, MessageBody=body)
            return
        self.sqs.send_message(
            QueueUrl=self.dead_letter_queue_url,
            MessageBody=body,
            MessageAttributes={REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:2000]}},
        )

    @property
    def reduce_queue_url(self) -> str:
        """The reduce queue: where the reduce sender sends (the task queue without one)."""
        return self.reduce_sender.queue_url

    def queue_url_of(self, record: dict[str, Any]) -> str:
        """The URL of the queue a record came from, from its `eventSourceARN`
        (arn:aws:sqs:<region>:<account>:<name>; a queue URL ends with /<account>/<name>).
        The task queue when the ARN is missing or names neither known queue."""
        parts = str(record.get("eventSourceARN") or "").split(":")
        known = [self.reduce_queue_url, *self.job_queue_urls.values(), self.task_queue_url]
        if len(parts) == 6 and parts[0] == "arn" and parts[2] == "sqs":
            suffix = f"/{parts[4]}/{parts[5]}"
            for url in known:
                if url and url.rstrip("/").endswith(suffix):
                    return url
        try:  # a record without a known ARN: its job's queue
            job = TaskEnvelope.parse(record.get("body", "")).job
            return self.job_queue_urls.get(job) or self.task_queue_url
        except MalformedEnvelope:
            return self.task_queue_url

    def _foreign_claim(self, env: TaskEnvelope, run: RunRecord) -> str | None:
        """Why `env.item_ref` is not this task's claim check (None when it is): it must be in the
        platform bucket's `claims/<job>/<run>/`, for the task's own job and its own run or a run
        it retries (a `retry-failed` run re-sends the original run's claims), so a message can
        never make the forwarder read, and send to a service, another job's or run's items."""
        bucket, _, key = env.item_ref.removeprefix("s3://").partition("/") if env.item_ref else ("", "", "")
        if (self.claims_bucket and bucket != self.claims_bucket) or not key.startswith(CLAIMS_PREFIX):
            return f"is outside the platform's claims (s3://{self.claims_bucket or '<bucket>'}/{CLAIMS_PREFIX}...)"
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
            current = self.runs.get(current.source_run) if current.source_run else None
        return f"belongs to run '{owner}', neither run {env.run_id} nor a run it retries"

    def _defer(self, record: dict[str, Any]) -> bool:
        """Bring a record back in a second without counting this receive as an attempt: re-sent
        (True; the caller acknowledges it) for up to `defer_grace_s` from its first deferral, else
        (past it, or the send failed) made visible again in 1 s, a counted receive."""
        now = time.time()
        since = _epoch_attribute(record, DEFERRED_SINCE_ATTRIBUTE)
        since = now if since is None or since > now else since
        if now - since < self.defer_grace_s and self._resend_uncounted(
            record, 1, marks={DEFERRED_SINCE_ATTRIBUTE: since}
        ):
            return True
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url_of(record), ReceiptHandle=record["receiptHandle"], VisibilityTimeout=1
            )
        except Exception:
            log.exception("could not defer %s", record.get("messageId"))
        return False

    def _resend_uncounted(self, record: dict[str, Any], delay_s: int, *, marks: Mapping[str, float]) -> bool:
        """Send a copy of `record` to its queue after `delay_s`, carrying the attempts made so far
        without this receive (its next receive is this same attempt again), the record's own
        since-when marks, and `marks` (attribute name -> epoch seconds) over them. False (logged)
        when the send failed."""
        attributes = {PRIOR_ATTEMPTS_ATTRIBUTE: {"DataType": "Number", "StringValue": str(attempt_of(record) - 1)}}
        kept = {
            UNREACHABLE_SINCE_ATTRIBUTE: unreachable_since(record),
            DEFERRED_SINCE_ATTRIBUTE: _epoch_attribute(record, DEFERRED_SINCE_ATTRIBUTE),
            THROTTLED_SINCE_ATTRIBUTE: _epoch_attribute(record, THROTTLED_SINCE_ATTRIBUTE),
            SIGNATURE_REFUSED_SINCE_ATTRIBUTE: _epoch_attribute(record, SIGNATURE_REFUSED_SINCE_ATTRIBUTE),
        }
        for name, epoch in {**{n: e for n, e in kept.items() if e is not None}, **marks}.items():
            attributes[name] = {"DataType": "String", "StringValue": f"{epoch:.3f}"}
        try:
            self.sqs.send_message(
                QueueUrl=self.queue_url_of(record),
                MessageBody=record["body"],
                DelaySeconds=delay_s,
                MessageAttributes=attributes,
            )
        except Exception:
            log.exception("could not re-send %s; it comes back as a counted receive", record.get("messageId"))
            return False
        return True

    def _duplicate_some(self, work: list[_Work]) -> None:
        if not self.faults:
            return
        copies = [w for w in work if self.faults.duplicate()]
        tasks: dict[str, list[str]] = defaultdict(list)
        for w in copies:
            if w.envelope.kind is TaskKind.TASK:
                tasks[w.job.name].append(w.record["body"])
        reduces = [w.record["body"] for w in copies if w.envelope.kind is not TaskKind.TASK]
        for job_name, bodies in tasks.items():  # a copy goes where the original came from
            self.sender_for(job_name).send(bodies, delay_s=1)
        if reduces:  # a copy goes where the original came from
            self.reduce_sender.send(reduces, delay_s=1)

    # ------------------------------------------------------------------ push

    def _push(self, w: _Work) -> PushResult:
        env, job = w.envelope, w.job
        if env.kind in (TaskKind.REDUCE_PART, TaskKind.FINALIZE) and job.reduce is ReduceMode.PLATFORM:
            return self._reduce_in_process(w)
        if env.kind is TaskKind.TASK:
            path, timeout = job.task_path, job.task_timeout_s
        elif env.kind is TaskKind.REDUCE_PART:
            path, timeout = job.reduce_part_path or "", REDUCE_TIMEOUT_S
        elif env.kind is TaskKind.FINALIZE:
            path, timeout = job.reduce_finalize_path or "", REDUCE_TIMEOUT_S
        else:
            if not job.completion_path:
                return PushResult(None, error=f"job '{job.name}' declares no completion_path")
            path, timeout = job.completion_path, job.task_timeout_s
        payload = {
            "run_id": env.run_id,
            "task_id": env.task_id,
            "attempt": w.attempt,
            "item": w.item,
            "job": env.job,
            "shard": env.shard,
            "kind": str(env.kind),
            "params": w.run.params,
        }
        if env.kind is TaskKind.COMPLETION:
            # {run_id, job, status, expected, succeeded, failed, report_uri}, named as the contract does
            payload = {**dict(env.item), "task_id": env.task_id, "kind": str(env.kind)}
        try:
            return self.pusher_for(job.service).push(
                path, payload, idempotency_key=env.idempotency_key, timeout=timeout
            )
        except Exception as exc:  # signing or secret fetch failed: retry later, do not lose the task
            log.exception("push of %s failed before sending", env.idempotency_key, extra=_keys(env))
            return PushResult(None, error=f"push not sent: {type(exc).__name__}: {exc}", reached=False)

    def _resend_unreached(self, w: _Work) -> bool:
        """Re-send (delayed) a message whose push never reached its service, without counting that
        push as an attempt; True when it was re-sent (the caller acknowledges the original).

        False when the push did reach the service, when the task has been unreachable for longer
        than its job's grace (it then counts, so a service that stays down still ends the run), or
        when the re-send failed (the ordinary backoff applies: the message is not lost)."""
        result = w.result
        if result is None or result.reached or result.outcome is not PushOutcome.RETRY:
            return False
        # Waits grow with the time unreachable (≈ half of it, so about 1.5x each time), 1..60 s.
        return self._resend_in_grace(
            w,
            mark=UNREACHABLE_SINCE_ATTRIBUTE,
            grace_s=w.job.unreachable_grace_s,
            delay_of=lambda waited: max(
                1, round(min(UNREACHABLE_MAX_DELAY_S, max(1.0, waited / 2)) * self.rng.uniform(0.5, 1.0))
            ),
            what="service unreachable",
            metric="TasksUnreachable",
            since_of=unreachable_since,  # per outage: the mark holds for its copy's first receive only
        )

    def _resend_refused(self, w: _Work) -> bool:
        """Re-send (delayed) a message whose push was refused with 401, without counting that push
        as an attempt, for up to `SIGNATURE_REFUSED_GRACE_S` from its first 401: the service may
        not have taken up a rotated secret yet. True when re-sent (the caller acknowledges the
        original); False past the grace (the 401 then counts: FAILED) or when the send failed."""
        if w.result is None or w.result.status != 401:
            return False
        return self._resend_in_grace(
            w,
            mark=SIGNATURE_REFUSED_SINCE_ATTRIBUTE,
            grace_s=SIGNATURE_REFUSED_GRACE_S,
            delay_of=lambda _waited: max(1, round(SIGNATURE_REFUSED_DELAY_S * self.rng.uniform(0.5, 1.0))),
            what="signature refused (a rotation not yet taken up?)",
            metric="TasksSignatureRefused",
        )

    def _resend_in_grace(
        self,
        w: _Work,
        *,
        mark: str,
        grace_s: float,
        delay_of: Callable[[float], int],
        what: str,
        metric: str,
        since_of: Callable[[dict[str, Any]], float | None] | None = None,
    ) -> bool:
        """Re-send `w`'s message after `delay_of(seconds since its first such push)`, carrying
        that first time in the `mark` attribute, while it is less than `grace_s` ago; True when
        re-sent. False past the grace or when the re-send failed (the ordinary backoff applies:
        counted, but not lost). `since_of` reads when this began from the record, when not simply
        its `mark` (the unreachable grace is per outage: `unreachable_since`)."""
        now = time.time()
        since = since_of(w.record) if since_of else _epoch_attribute(w.record, mark)
        since = now if since is None or since > now else since
        if now - since >= grace_s:
            return False
        delay = delay_of(now - since)
        if not self._resend_uncounted(w.record, delay, marks={mark: since}):
            return False
        log.info(
            "%s: %s for %.0f s; re-sent with a %s s delay, attempt %s not counted: %s",
            w.envelope.idempotency_key,
            what,
            now - since,
            delay,
            w.attempt,
            w.result.describe() if w.result is not None else "not pushed",
            extra=_keys(w.envelope),
        )
        self.emit(metric, 1, w.job.name, run_id=w.envelope.run_id)
        return True

    def _resend_uncounted_push(self, w: _Work) -> bool:
        """A push that did not count as an attempt (its service shedding load, unreachable, its
        signature refused during a rotation, or asking it to slow down) re-sent for later; True when re-sent."""
        return self._resend_shed(w) or self._resend_unreached(w) or self._resend_refused(w) or self._resend_throttled(w)

    def _wait_for_shedding(self, w: _Work) -> bool:
        """The shedding gate: while `w`'s service asks every job to wait, re-send its task to arrive
        when the wait ends, not pushed and not counted (within the job's `throttle_budget_s`); True
        when re-sent (the caller acknowledges it)."""
        if self.shed_gate is None or w.envelope.kind is not TaskKind.TASK:
            return False
        left = self.shed_gate.wait_s(w.job.service)
        return left is not None and self._resend_for_shedding(w, left, "not pushed: its service asked to wait")

    def _resend_shed(self, w: _Work) -> bool:
        """A push answered with "not now" for the whole service (`shedding.shed_seconds`): the wait
        recorded for every job, and this task re-sent for when it ends, uncounted; True when re-sent
        (a 2xx carrying the shedding header is recorded, and the task settles as done)."""
        if self.shed_gate is None or w.result is None or w.envelope.kind is not TaskKind.TASK:
            return False
        seconds = self.shed_gate.observe(w.job.service, w.result)
        if seconds is None or w.result.outcome is PushOutcome.SUCCESS:
            return False
        return self._resend_for_shedding(w, seconds, f"its service sheds load (HTTP {w.result.status})")

    def _resend_for_shedding(self, w: _Work, seconds: float, what: str) -> bool:
        # Up to 2 s of jitter after the wait, so that the tasks held do not all arrive at once.
        delay = max(1, min(MAX_DELAY_S, math.ceil(seconds + self.rng.uniform(0, 2))))
        return self._resend_in_grace(
            w,
            mark=THROTTLED_SINCE_ATTRIBUTE,
            grace_s=w.job.throttle_budget_s,
            delay_of=lambda _waited: delay,
            what=what,
            metric="TasksShed",
        )

    def _resend_throttled(self, w: _Work) -> bool:
        """Re-send (after its `Retry-After`) a task whose service answered 429 or 503 with
        `Retry-After`, without counting that push as an attempt; True when it was re-sent (the
        caller acknowledges the original).

        False for any other answer, once the task has been throttled for the job's
        `throttle_budget_s` (it then counts: a run against a service that never stops throttling
        still ends), for a `Retry-After` longer than SQS can delay a message, or when the re-send
        failed (the ordinary backoff applies, honouring the `Retry-After`)."""
        result = w.result
        if result is None or not throttled(result):
            return False
        delay = backoff_seconds(
            w.attempt, result.retry_after_s, base=self.retry_base_s, cap=self.retry_cap_s, rng=self.rng
        )
        if delay > MAX_DELAY_S:
            return False
        return self._resend_in_grace(
            w,
            mark=THROTTLED_SINCE_ATTRIBUTE,
            grace_s=w.job.throttle_budget_s,
            delay_of=lambda _waited: delay,
            what=f"throttled (HTTP {result.status})",
            metric="TasksThrottled",
        )

    def _retry_later(self, w: _Work, result: PushResult) -> None:
        delay = backoff_seconds(
            w.attempt, result.retry_after_s, base=self.retry_base_s, cap=self.retry_cap_s, rng=self.rng
        )
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url_of(w.record), ReceiptHandle=w.record["receiptHandle"], VisibilityTimeout=delay
            )
        except Exception:  # the message comes back after the queue's own visibility timeout instead
            log.exception("could not set the backoff of %s", w.message_id, extra=_keys(w.envelope))
        log.info(
            "retry %s in %s s (attempt %s): %s",
            w.envelope.idempotency_key,
            delay,
            w.attempt,
            result.describe(),
            extra=_keys(w.envelope),
        )
        self.emit("TasksRetried", 1, w.job.name, run_id=w.envelope.run_id)

    # ----------------------------------------------------------------- tasks

    def _settle_tasks(self, tasks: list[_Work]) -> list[str]:
        failures: list[str] = []
        by_run: dict[str, list[tuple[_Work, TaskOutcome]]] = defaultdict(list)
        for w in tasks:
            assert w.result is not None
            outcome = w.result.outcome
            if self._resend_uncounted_push(w):
                continue  # acknowledged: its copy comes back after the delay
            if outcome is PushOutcome.RETRY and w.attempt < w.job.max_attempts:
                self._retry_later(w, w.result)
                failures.append(w.message_id)
                continue
            by_run[w.envelope.run_id].append((w, self._task_outcome(w, w.result)))
        for run_id, pairs in by_run.items():
            run, job = pairs[0][0].run, pairs[0][0].job
            try:
                res = self.ledger.record_outcomes(run_id, run.counter_count, [o for _, o in pairs])
            except InjectedCrash:
                raise  # chaos: behave as the process dying here would
            except Exception:
                log.exception(
                    "recording %d outcomes of run %s failed; they will be retried",
                    len(pairs),
                    run_id,
                    extra={"run_id": run_id, "job": job.name},
                )
                failures += [w.message_id for w, _ in pairs]
                continue
            new = set(res.newly_recorded)
            ok = sum(1 for _, o in pairs if o.task_id in new and o.state is TaskState.SUCCEEDED)
            self.emit("TasksSucceeded", ok, job.name, run_id=run_id)
            self.emit("TasksFailed", len(new) - ok, job.name, run_id=run_id)
            self.emit("DuplicatesAbsorbed", len(res.duplicates), job.name, run_id=run_id)
            if len(new) > ok:  # new failures: has the run become unable to succeed? (stop_early)
                stop_if_hopeless(self.ledger, run_id, job, emit=self.emit, reduce_sender=self.reduce_sender)
            if res.claimed_reduce:
                log.info(
                    "run %s: last task done, reduce claimed; enqueuing %d parts",
                    run_id,
                    run.shard_count,
                    extra={"run_id": run_id, "job": job.name},
                )
                self.emit("ReducesClaimed", 1, job.name, run_id=run_id)
                enqueue_reduce_parts(self.reduce_sender, job, run_id, run.shard_count)
        return failures

    @staticmethod
    def _task_outcome(w: _Work, result: PushResult) -> TaskOutcome:
        env = w.envelope
        item_id = None
        if isinstance(w.item, dict) and w.job.item_id_field in w.item:
            item_id = str(w.item[w.job.item_id_field])
        if result.outcome is PushOutcome.SUCCESS:
            return TaskOutcome(env.task_id, env.shard, TaskState.SUCCEEDED, w.attempt, item_id, result=result.json())
        return TaskOutcome(
            env.task_id,
            env.shard,
            TaskState.FAILED,
            w.attempt,
            item_id,
            error=result.describe(),
            item=env.item,
            item_ref=env.item_ref,
        )

    # ---------------------------------------------------------------- reduce

    def _reduce_in_process(self, w: _Work) -> PushResult:
        """Run a platform reduce part or finalize here; its answer stands in for a service's."""
        if self.reducer is None:
            return PushResult(None, error=f"job '{w.job.name}' reduces on the platform; this function has no reducer")
        try:
            answer = self.reducer.handle(w.envelope, w.job)
        except Exception as exc:  # retried with backoff like a failed push; the last error fails the run
            log.exception("platform %s of run %s failed", w.envelope.kind, w.envelope.run_id, extra=_keys(w.envelope))
            return PushResult(None, error=f"platform {w.envelope.kind} failed: {type(exc).__name__}: {exc}")
        return PushResult(200, json.dumps(answer, default=str).encode())

    def _settle_completion(self, w: _Work) -> list[str]:
        """A completion callback never changes its run: retried like a task, then given up (logged)."""
        assert w.result is not None
        env, job, result = w.envelope, w.job, w.result
        if result.outcome is PushOutcome.SUCCESS:
            log.info("run %s: completion callback delivered", env.run_id, extra=_keys(env))
            self.emit("CompletionsDelivered", 1, job.name, run_id=env.run_id)
            return []
        if self._resend_uncounted_push(w):
            return []
        if result.outcome is PushOutcome.RETRY and w.attempt < job.max_attempts:
            self._retry_later(w, result)
            return [w.message_id]
        log.error(
            "run %s: completion callback given up after %d attempts: %s",
            env.run_id,
            w.attempt,
            result.describe(),
            extra=_keys(env),
        )
        self.emit("CompletionsFailed", 1, job.name, run_id=env.run_id)
        return []

    def _settle_reduce(self, w: _Work) -> list[str]:
        assert w.result is not None
        env, job, result = w.envelope, w.job, w.result
        if env.kind is TaskKind.COMPLETION:
            return self._settle_completion(w)
        outcome = result.outcome
        try:
            if outcome is PushOutcome.SUCCESS:
                if env.kind is TaskKind.REDUCE_PART:
                    if self.ledger.record_reduce_part(env.run_id, env.shard, w.run.shard_count):
                        log.info("run %s: all reduce parts done; enqueuing finalize", env.run_id, extra=_keys(env))
                        enqueue_finalize(self.reduce_sender, job, env.run_id)
                else:
                    body = result.json() or {}
                    if job.reduce is ReduceMode.PLATFORM:  # the in-process finalize ended the run itself
                        status = RunStatus(body["ended"]) if body.get("ended") else None
                    else:
                        status = self.ledger.finish_run(
                            env.run_id,
                            tolerated_failure_pct=job.tolerated_failure_pct,
                            report_uri=str(body.get("report_uri", "")),
                            summary=body.get("summary") or {},
                        )
                    if status is not None:
                        log.info("run %s finished %s", env.run_id, status, extra=_keys(env))
                        self.emit(
                            "RunsSucceeded" if status is RunStatus.SUCCEEDED else "RunsFailed",
                            1,
                            job.name,
                            run_id=env.run_id,
                        )
                return []
            if self._resend_uncounted_push(w):
                return []
            if outcome is PushOutcome.RETRY and w.attempt < job.max_attempts:
                self._retry_later(w, result)
                return [w.message_id]
            if self.ledger.fail_run(env.run_id, f"{env.kind} {env.task_id} failed: {result.describe()}"):
                self.emit("RunsFailed", 1, job.name, run_id=env.run_id)
            return []
        except Exception:
            log.exception("settling %s of run %s failed; it will be retried", env.task_id, env.run_id, extra=_keys(env))
            return [w.message_id]


def _after_end(env: TaskEnvelope, job: JobDeclaration, run: RunRecord) -> bool:
    """Reduce-queue messages still handled once their run has ended: its completion callback,
    and a platform finalize delivered again (it publishes and notifies what a crash left undone)."""
    if run.status not in (RunStatus.SUCCEEDED, RunStatus.FAILED):
        return False
    return env.kind is TaskKind.COMPLETION or (env.kind is TaskKind.FINALIZE and job.reduce is ReduceMode.PLATFORM)
