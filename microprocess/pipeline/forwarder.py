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
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from microprocess.chaos.faults import FaultInjector, InjectedCrash
from microprocess.control.adaptive import observe_pushes
from microprocess.control.stop import stop_if_hopeless
from microprocess.declarations import JobRegistry, ReduceMode
from microprocess.ledger import Ledger, RunStatus, TaskOutcome, TaskState
from microprocess.pipeline.admission import (
    RUN_CACHE_TTL_S,
    Acknowledge,
    DeadLetter,
    Defer,
    Lookups,
    Park,
    RunCache,
    Verdict,
    Wait,
    Work,
    admit,
)
from microprocess.pipeline.envelope import SQS_MAX_MESSAGE_BYTES, MalformedEnvelope, TaskEnvelope, TaskKind
from microprocess.pipeline.fanin import enqueue_finalize, enqueue_reduce_parts
from microprocess.pipeline.parking import park
from microprocess.pipeline.push import HttpPusher, PushOutcome, PushResult
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.resend import (
    DEFER_GRACE_S,
    Resender,
    backoff_seconds,
    log_keys,
)
from microprocess.pipeline.shedding import ShedGate
from microprocess.pipeline.tenants import record_group

if TYPE_CHECKING:
    from microprocess.reduce import PlatformReducer

log = logging.getLogger(__name__)

MetricsEmitter = Callable[..., None]  # (name, value, job, *, run_id=None)
REASON_ATTRIBUTE = "microprocess-reason"
#: Reduce pushes may take much longer than a task.
REDUCE_TIMEOUT_S = 600.0


class _Deferred(Exception):
    """A record to retry shortly (its task's page is not accounted yet)."""


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
        run_cache_ttl_s: float = RUN_CACHE_TTL_S,
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
        self.rng = rng or random.Random()
        self.resend = Resender(
            sqs=sqs,
            queue_url_of=self.queue_url_of,
            emit=self.emit,
            rng=self.rng,
            retry_base_s=retry_base_s,
            retry_cap_s=retry_cap_s,
            defer_grace_s=defer_grace_s,
            shed_gate=shed_gate,
        )
        self.lookups = Lookups(
            jobs=jobs,
            runs=self.runs,
            fetch=self._fetch,
            claims_bucket=claims_bucket,
            service_wait=self.resend.within_shed_wait if shed_gate is not None else None,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="push")

    # ------------------------------------------------------------------ entry

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        failures: list[str] = []
        work: list[Work] = []
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
        if work and self.faults:
            self.faults.maybe_crash("before_push")
        self._duplicate_some(work)
        started = time.monotonic()
        for w, result in zip(work, self._pool.map(self._push, work), strict=True):
            w.result = result
        gate = self.resend.shed_gate
        pushed = [
            (w.job.name, w.result.status, gate is not None and gate.sheds(w.job.service, w.result))
            for w in work
            if w.envelope.kind is TaskKind.TASK and w.result
        ]
        if pushed:  # the adaptive concurrency's signals (429/503, shed answers, push time), as EMF metrics
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

    def _admit(self, record: dict[str, Any]) -> Work | None:
        """Pass one record through the admission gates (`pipeline.admission.GATES`) and carry out
        their verdict: dead-letter it, acknowledge it, park it, defer it; or return work to push."""
        decided = admit(record, self.lookups)
        if isinstance(decided, Work):
            return decided
        self._carry_out(record, decided)
        return None

    def _carry_out(self, record: dict[str, Any], verdict: Verdict) -> None:
        """Do what a gate decided for `record` (which is then acknowledged, or raises `_Deferred`)."""
        if isinstance(verdict, DeadLetter):
            self._dead_letter(record, verdict.reason)
        elif isinstance(verdict, Park):
            park(self.ledger, record, verdict.envelope)  # kept until `resume`: no push, no attempt, no DLQ
        elif isinstance(verdict, Defer):
            if not self.resend.defer(record):  # re-sent with a delay: this one is acknowledged
                raise _Deferred
        elif isinstance(verdict, Wait):  # its service sheds load: re-sent for when it ends
            if not self.resend.wait_out(record, verdict.seconds, verdict.job):
                raise _Deferred
        else:
            assert isinstance(verdict, Acknowledge)

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

    def _duplicate_some(self, work: list[Work]) -> None:
        if not self.faults:
            return
        copies = [w for w in work if self.faults.duplicate()]
        tasks: dict[str, list[Work]] = defaultdict(list)
        for w in copies:
            if w.envelope.kind is TaskKind.TASK:
                tasks[w.job.name].append(w)
        reduces = [w.record["body"] for w in copies if w.envelope.kind is not TaskKind.TASK]
        for job_name, same in tasks.items():  # a copy goes where the original came from, in its tenant
            bodies, groups = [w.record["body"] for w in same], [record_group(w.record) for w in same]
            self.sender_for(job_name).send(bodies, delay_s=1, groups=groups)
        if reduces:  # a copy goes where the original came from
            self.reduce_sender.send(reduces, delay_s=1)

    # ------------------------------------------------------------------ push

    def _push(self, w: Work) -> PushResult:
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
            log.exception("push of %s failed before sending", env.idempotency_key, extra=log_keys(w))
            return PushResult(None, error=f"push not sent: {type(exc).__name__}: {exc}", reached=False)

    def _retry_later(self, w: Work, result: PushResult) -> None:
        delay = backoff_seconds(
            w.attempt, result.retry_after_s, base=self.retry_base_s, cap=self.retry_cap_s, rng=self.rng
        )
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url_of(w.record), ReceiptHandle=w.record["receiptHandle"], VisibilityTimeout=delay
            )
        except Exception:  # the message comes back after the queue's own visibility timeout instead
            log.exception("could not set the backoff of %s", w.message_id, extra=log_keys(w))
        log.info(
            "retry %s in %s s (attempt %s): %s",
            w.envelope.idempotency_key,
            delay,
            w.attempt,
            result.describe(),
            extra=log_keys(w),
        )
        self.emit("TasksRetried", 1, w.job.name, run_id=w.envelope.run_id)

    # ----------------------------------------------------------------- tasks

    def _settle_tasks(self, tasks: list[Work]) -> list[str]:
        failures: list[str] = []
        by_run: dict[str, list[tuple[Work, TaskOutcome]]] = defaultdict(list)
        for w in tasks:
            assert w.result is not None
            outcome = w.result.outcome
            if self.resend.uncounted_push(w):
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
    def _task_outcome(w: Work, result: PushResult) -> TaskOutcome:
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

    def _reduce_in_process(self, w: Work) -> PushResult:
        """Run a platform reduce part or finalize here; its answer stands in for a service's."""
        if self.reducer is None:
            return PushResult(None, error=f"job '{w.job.name}' reduces on the platform; this function has no reducer")
        try:
            answer = self.reducer.handle(w.envelope, w.job)
        except Exception as exc:  # retried with backoff like a failed push; the last error fails the run
            log.exception("platform %s of run %s failed", w.envelope.kind, w.envelope.run_id, extra=log_keys(w))
            return PushResult(None, error=f"platform {w.envelope.kind} failed: {type(exc).__name__}: {exc}")
        return PushResult(200, json.dumps(answer, default=str).encode())

    def _settle_completion(self, w: Work) -> list[str]:
        """A completion callback never changes its run: retried like a task, then given up (logged)."""
        assert w.result is not None
        env, job, result = w.envelope, w.job, w.result
        if result.outcome is PushOutcome.SUCCESS:
            log.info("run %s: completion callback delivered", env.run_id, extra=log_keys(w))
            self.emit("CompletionsDelivered", 1, job.name, run_id=env.run_id)
            return []
        if self.resend.uncounted_push(w):
            return []
        if result.outcome is PushOutcome.RETRY and w.attempt < job.max_attempts:
            self._retry_later(w, result)
            return [w.message_id]
        log.error(
            "run %s: completion callback given up after %d attempts: %s",
            env.run_id,
            w.attempt,
            result.describe(),
            extra=log_keys(w),
        )
        self.emit("CompletionsFailed", 1, job.name, run_id=env.run_id)
        return []

    def _settle_reduce(self, w: Work) -> list[str]:
        assert w.result is not None
        env, job, result = w.envelope, w.job, w.result
        if env.kind is TaskKind.COMPLETION:
            return self._settle_completion(w)
        outcome = result.outcome
        try:
            if outcome is PushOutcome.SUCCESS:
                if env.kind is TaskKind.REDUCE_PART:
                    if self.ledger.record_reduce_part(env.run_id, env.shard, w.run.shard_count):
                        log.info("run %s: all reduce parts done; enqueuing finalize", env.run_id, extra=log_keys(w))
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
                        log.info("run %s finished %s", env.run_id, status, extra=log_keys(w))
                        self.emit(
                            "RunsSucceeded" if status is RunStatus.SUCCEEDED else "RunsFailed",
                            1,
                            job.name,
                            run_id=env.run_id,
                        )
                return []
            if self.resend.uncounted_push(w):
                return []
            if outcome is PushOutcome.RETRY and w.attempt < job.max_attempts:
                self._retry_later(w, result)
                return [w.message_id]
            if self.ledger.fail_run(env.run_id, f"{env.kind} {env.task_id} failed: {result.describe()}"):
                self.emit("RunsFailed", 1, job.name, run_id=env.run_id)
            return []
        except Exception:
            log.exception(
                "settling %s of run %s failed; it will be retried", env.task_id, env.run_id, extra=log_keys(w)
            )
            return [w.message_id]
