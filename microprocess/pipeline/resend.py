"""Sending a message again later: the backoff of a counted retry, and the re-sends that do not count.

A push that never reached its service (it could not connect: a restart, a deploy), one refused
with 401 (its signature: perhaps a rotation not taken up yet), and one the service asked to slow
down (429/503 with `Retry-After`) are not attempts: the message is re-sent with a delay, carrying
its attempts so far and since when this has lasted, and acknowledged, each for up to its grace
(`Resender.uncounted_push`, in that order). A task whose page is not accounted yet is deferred
the same way (`Resender.defer`). Past a grace, or when the re-send fails, the ordinary counted
backoff applies (runs always finish; nothing is lost).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from microprocess.declarations import JobDeclaration
from microprocess.pipeline.admission import Work
from microprocess.pipeline.attempts import PRIOR_ATTEMPTS_ATTRIBUTE, attempt_of, epoch_attribute, receive_count
from microprocess.pipeline.envelope import TaskKind
from microprocess.pipeline.push import PushOutcome, PushResult
from microprocess.pipeline.settings import DEFAULT_STUCK_AFTER_S, DEFAULT_SWEEP_PERIOD_S, defer_grace_s
from microprocess.pipeline.shedding import ShedGate
from microprocess.pipeline.tenants import group_field, record_group

log = logging.getLogger(__name__)

MetricsEmitter = Callable[..., None]  # (name, value, job, *, run_id=None)
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
#: Message attribute of a task re-sent because its service asked it to slow down (429/503 with
#: `Retry-After`): since when (epoch seconds) its pushes have been throttled.
THROTTLED_SINCE_ATTRIBUTE = "microprocess-throttled-since"
#: SQS's longest message delay, seconds: a `Retry-After` above it is waited out by a counted backoff.
MAX_DELAY_S = 900
#: Tasks re-sent, not counted, because their service asked every job to wait (load shedding).
TASKS_SHED = "TasksShed"
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


def throttled(result: PushResult) -> bool:
    """The service asked to slow down: 429 or 503 with a `Retry-After` (ARCHITECTURE invariant 11)."""
    return result.status in (429, 503) and result.retry_after_s is not None


def unreachable_since(record: dict[str, Any]) -> float | None:
    """When the outage the record's pushes are in began (None: not in one).

    The mark is set on the copy re-sent after a refused push, and holds for that copy's first
    receive only: a copy received again was kept by an ordinary backoff (its push reached the
    service and was told to retry, or it counted), so that outage is over and the next refused
    push starts a new one. The grace belongs to an outage, not to a task's life."""
    return epoch_attribute(record, UNREACHABLE_SINCE_ATTRIBUTE) if receive_count(record) <= 1 else None


def log_keys(w: Work) -> dict[str, str]:
    """Structured-log keys of a message: its run and job (Powertools puts them in the JSON)."""
    env = w.envelope
    return {"run_id": env.run_id, "job": env.job, "task_id": env.task_id}


class Resender:
    """Sends a message again later without counting its receive as an attempt.

    Args:
        sqs: a boto3 SQS client.
        queue_url_of: the URL of the queue a record came from (the copy goes back there).
        emit: the metrics emitter (name, value, job, *, run_id).
        rng: jitter.
        retry_base_s, retry_cap_s: the counted backoff's base and cap (a `Retry-After` wins).
        defer_grace_s: how long a task whose page is not accounted yet is deferred uncounted, s.
        shed_gate: the services' load shedding (`shedding.ShedGate`; None: none).
    """

    def __init__(
        self,
        *,
        sqs: Any,
        queue_url_of: Callable[[dict[str, Any]], str],
        emit: MetricsEmitter,
        rng: random.Random,
        retry_base_s: float,
        retry_cap_s: float,
        defer_grace_s: float,
        shed_gate: ShedGate | None = None,
    ) -> None:
        self.sqs, self.queue_url_of, self.emit, self.rng = sqs, queue_url_of, emit, rng
        self.shed_gate = shed_gate
        self.retry_base_s, self.retry_cap_s, self.defer_grace_s = retry_base_s, retry_cap_s, defer_grace_s

    def uncounted_push(self, w: Work) -> bool:
        """A push that did not count as an attempt (its service shedding load, unreachable, its
        signature refused during a rotation, or asking it to slow down) re-sent for later; True when re-sent."""
        return self.shed(w) or self.unreached(w) or self.refused(w) or self.throttled(w)

    def shed(self, w: Work) -> bool:
        """A push answered "not now" for the whole service (`shedding.shed_seconds`): the wait is
        recorded for every job, and this task re-sent for when it ends, uncounted within the job's
        `throttle_budget_s`; True when re-sent. A 2xx carrying the shedding header is recorded, and
        the task settles as done."""
        if self.shed_gate is None or w.result is None or w.envelope.kind is not TaskKind.TASK:
            return False
        seconds = self.shed_gate.observe(w.job.service, w.result)
        if seconds is None or w.result.outcome is PushOutcome.SUCCESS:
            return False
        delay = self._after_wait(seconds)
        return self._in_grace(
            w,
            mark=THROTTLED_SINCE_ATTRIBUTE,
            grace_s=w.job.throttle_budget_s,
            delay_of=lambda _waited: delay,
            what=f"its service sheds load (HTTP {w.result.status})",
            metric=TASKS_SHED,
        )

    def within_shed_wait(self, record: dict[str, Any], job: JobDeclaration) -> float | None:
        """Seconds left of the wait `job`'s service asked every job for, when `record` should wait it
        out (None: push it: no wait, or the task has been throttled for its whole `throttle_budget_s`,
        so it counts again and a service that never stops shedding still ends the run)."""
        left = self.shed_gate.wait_s(job.service) if self.shed_gate is not None else None
        since = epoch_attribute(record, THROTTLED_SINCE_ATTRIBUTE)
        if left is None or (since is not None and time.time() - since >= job.throttle_budget_s):
            return None
        return left

    def wait_out(self, record: dict[str, Any], seconds: float, job: str) -> bool:
        """Re-send `record` (not pushed) to arrive when its service's wait ends, uncounted; False
        when the send failed (the message comes back after its visibility timeout)."""
        now = time.time()
        since = epoch_attribute(record, THROTTLED_SINCE_ATTRIBUTE)
        since = now if since is None or since > now else since
        delay = self._after_wait(seconds)
        if not self.send_copy(record, delay, marks={THROTTLED_SINCE_ATTRIBUTE: since}):
            return False
        log.info("%s: its service asked every job to wait; re-sent with a %s s delay, not pushed", job, delay)
        self.emit(TASKS_SHED, 1, job)
        return True

    def _after_wait(self, seconds: float) -> int:
        # Up to 2 s of jitter after the wait, so that the tasks held do not all arrive at once.
        return max(1, min(MAX_DELAY_S, math.ceil(seconds + self.rng.uniform(0, 2))))

    def unreached(self, w: Work) -> bool:
        """Re-send (delayed) a message whose push never reached its service, without counting that
        push as an attempt; True when it was re-sent (the caller acknowledges the original).

        False when the push did reach the service, when the task has been unreachable for longer
        than its job's grace (it then counts, so a service that stays down still ends the run), or
        when the re-send failed (the ordinary backoff applies: the message is not lost)."""
        result = w.result
        if result is None or result.reached or result.outcome is not PushOutcome.RETRY:
            return False
        # Waits grow with the time unreachable (≈ half of it, so about 1.5x each time), 1..60 s.
        return self._in_grace(
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

    def refused(self, w: Work) -> bool:
        """Re-send (delayed) a message whose push was refused with 401, without counting that push
        as an attempt, for up to `SIGNATURE_REFUSED_GRACE_S` from its first 401: the service may
        not have taken up a rotated secret yet. True when re-sent (the caller acknowledges the
        original); False past the grace (the 401 then counts: FAILED) or when the send failed."""
        if w.result is None or w.result.status != 401:
            return False
        return self._in_grace(
            w,
            mark=SIGNATURE_REFUSED_SINCE_ATTRIBUTE,
            grace_s=SIGNATURE_REFUSED_GRACE_S,
            delay_of=lambda _waited: max(1, round(SIGNATURE_REFUSED_DELAY_S * self.rng.uniform(0.5, 1.0))),
            what="signature refused (a rotation not yet taken up?)",
            metric="TasksSignatureRefused",
        )

    def throttled(self, w: Work) -> bool:
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
        return self._in_grace(
            w,
            mark=THROTTLED_SINCE_ATTRIBUTE,
            grace_s=w.job.throttle_budget_s,
            delay_of=lambda _waited: delay,
            what=f"throttled (HTTP {result.status})",
            metric="TasksThrottled",
        )

    def _in_grace(
        self,
        w: Work,
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
        assert w.result is not None
        now = time.time()
        since = since_of(w.record) if since_of else epoch_attribute(w.record, mark)
        since = now if since is None or since > now else since
        if now - since >= grace_s:
            return False
        delay = delay_of(now - since)
        if not self.send_copy(w.record, delay, marks={mark: since}):
            return False
        log.info(
            "%s: %s for %.0f s; re-sent with a %s s delay, attempt %s not counted: %s",
            w.envelope.idempotency_key,
            what,
            now - since,
            delay,
            w.attempt,
            w.result.describe(),
            extra=log_keys(w),
        )
        self.emit(metric, 1, w.job.name, run_id=w.envelope.run_id)
        return True

    def defer(self, record: dict[str, Any]) -> bool:
        """Bring a record back in a second without counting this receive as an attempt: re-sent
        (True; the caller acknowledges it) for up to `defer_grace_s` from its first deferral, else
        (past it, or the send failed) made visible again in 1 s, a counted receive."""
        now = time.time()
        since = epoch_attribute(record, DEFERRED_SINCE_ATTRIBUTE)
        since = now if since is None or since > now else since
        if now - since < self.defer_grace_s and self.send_copy(record, 1, marks={DEFERRED_SINCE_ATTRIBUTE: since}):
            return True
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url_of(record), ReceiptHandle=record["receiptHandle"], VisibilityTimeout=1
            )
        except Exception:
            log.exception("could not defer %s", record.get("messageId"))
        return False

    def send_copy(self, record: dict[str, Any], delay_s: int, *, marks: Mapping[str, float]) -> bool:
        """Send a copy of `record` to its queue after `delay_s`, carrying the attempts made so far
        without this receive (its next receive is this same attempt again), the record's own
        since-when marks, and `marks` (attribute name -> epoch seconds) over them, in the record's
        fair-queue tenant (its `MessageGroupId`: its run's; none if it came without). False (logged)
        when the send failed."""
        attributes = {PRIOR_ATTEMPTS_ATTRIBUTE: {"DataType": "Number", "StringValue": str(attempt_of(record) - 1)}}
        kept = {
            UNREACHABLE_SINCE_ATTRIBUTE: unreachable_since(record),
            DEFERRED_SINCE_ATTRIBUTE: epoch_attribute(record, DEFERRED_SINCE_ATTRIBUTE),
            THROTTLED_SINCE_ATTRIBUTE: epoch_attribute(record, THROTTLED_SINCE_ATTRIBUTE),
            SIGNATURE_REFUSED_SINCE_ATTRIBUTE: epoch_attribute(record, SIGNATURE_REFUSED_SINCE_ATTRIBUTE),
        }
        for name, epoch in {**{n: e for n, e in kept.items() if e is not None}, **marks}.items():
            attributes[name] = {"DataType": "String", "StringValue": f"{epoch:.3f}"}
        try:
            self.sqs.send_message(
                QueueUrl=self.queue_url_of(record),
                MessageBody=record["body"],
                DelaySeconds=delay_s,
                MessageAttributes=attributes,
                **group_field(record_group(record)),
            )
        except Exception:
            log.exception("could not re-send %s; it comes back as a counted receive", record.get("messageId"))
            return False
        return True
