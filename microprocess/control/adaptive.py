"""Adaptive concurrency: a job backs off by itself when its service is overloaded.

Signals, per job and per interval (a minute): how many pushes the forwarder made, how many
the service answered 429 or 503 (it asks us to slow down), and the p90 of a batch's push time
(the pushes of a batch run concurrently, so a batch takes about its slowest push). The
forwarder emits them as EMF metrics (`observe_pushes`); `CloudWatchSignals` reads them back.

`AimdController.decide` (pure, unit-tested), additive increase / multiplicative decrease
refined with an estimate of the service's capacity:

* **throttled** (share of 429/503 ≥ `throttle_ratio`): the batches the service took is
  estimated two ways and the larger is taken (`capacity_estimate`). By Little's law from what
  it took: accepted pushes (pushes - throttled) per second x a batch's time = the pushes it
  served at once, / the batch size = batches; the batch time is the larger of the interval's
  p90 and the healthy baseline (all-429 batches end at once and pull the p90 down). It counts
  a batch's push time only, while the cap counts whole invocations, so for a fast service it
  reads low; the cap's accepted share (cap x accepted / pushes) counts whole invocations. The
  cap goes to the estimate, rounded to the nearest batch and at least one below the throttled
  cap, and is remembered as the capacity, when the batch time is known to be a served push's:
  a healthy baseline exists, or, before any healthy interval, fewer than `SERVED_P90_BELOW`
  (90 %) of the pushes were 429/503, so fewer than 90 % of the (full) batches can be all-429
  ones and the interval's p90 is a batch with a push served. Otherwise the estimate is only a
  lower bound and the cut is never deeper than `decrease_factor`. An estimate from an interval
  the job pushed in for part of the time only (a run that began late in it) is low: the cut is
  then deeper than needed and the healthy intervals climb back (a cap above the estimate taken
  without a 429 becomes the capacity). Throttled while the estimate shows room (a shared or
  slowing service), the cap is multiplied by `decrease_factor`;
* **slow** (p90 above `latency_factor` x the healthy baseline, or above `latency_limit_ms`):
  cap x `decrease_factor` (nothing tells the capacity);
* **healthy**: below the remembered capacity, + `step` (a twentieth of the declared maximum)
  up to it; at or above it, + 1 (a gentle probe) once the cap has had `probe_wait` healthy
  intervals in a row, at least `MIN_PROBE_WAIT` (2): the interval right after a change still
  shows part of the old cap (on AWS a mapping update takes effect within about a minute), so a
  single healthy interval does not yet tell the new cap holds. A probe that goes through
  becomes the capacity and the wait goes back to 2 (a growing service is climbed a batch every
  2 intervals); a throttled probe goes back to the capacity and doubles the wait (up to
  `MAX_PROBE_WAIT`, 16), so a steady service is probed less and less often (each failed probe
  costs an interval of 429s). No capacity known yet: doubled (slow start, below); a few 429s
  below `throttle_ratio`: hold (at the service's capacity);
* **slow start**: an idle interval (no push: between runs, or paused) lowers the cap to where
  the next run starts: the known capacity, or else a quarter of the declared maximum
  (`SLOW_START_DIVISOR`); until a throttled interval tells the capacity, each healthy interval
  doubles the cap (TCP's slow start), so the maximum is reached two healthy intervals into a
  run. A run against a full service then meets its first 429s at a few times its capacity
  only if the quarter is already above it, and not at the whole maximum: the first interval,
  which no decision can come before, held most of the rejections when runs started at the
  maximum (`make bench`, P7);
* **load shedding** (the service asked every job to wait: `pipeline.shedding`): its shed answers
  (`ServiceShed`) are not throttling, and the quiet window they start is not idleness: an
  interval with a shed answer, or while the service's wait holds (`Signals.waiting`), holds the
  cap and the capacity (neither cut nor grown); the decisions resume after the wait;
* never below `floor` (2, the least an SQS event source takes) nor above the job's declared
  `max_concurrency`; hold when too few pushes to judge (`min_pushes`).

The healthy baseline is an exponentially weighted mean of the p90 of healthy intervals, so a
slow drift of the service is followed, a sudden climb is not.

`AdaptiveConcurrency.tick` applies one decision per job to the job's event source mapping
(`scale.JobScaler`), logs it as one JSON line and emits `EffectiveConcurrency` and
`ConcurrencyDecreased`/`ConcurrencyIncreased` metrics.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from microprocess.control.scale import MIN_CONCURRENCY, JobScaler
from microprocess.declarations import JobDeclaration

log = logging.getLogger(__name__)

#: Must match infra/contract.py (METRIC_NAMESPACE, SERVICE_DIMENSION/POWERTOOLS_SERVICE): a test checks.
METRIC_NAMESPACE = "Microprocess"
SERVICE_DIMENSION = ("service", "microprocess")
#: The fewest healthy intervals (minutes on AWS) at a cap before a probe above the capacity: the
#: interval right after a change still shows part of the old cap (on AWS a mapping update takes
#: effect within about a minute; a batch started before it runs on), so one healthy interval does
#: not yet tell the new cap holds.
MIN_PROBE_WAIT = 2
#: The most healthy intervals (minutes on AWS) between two probes above a steady capacity.
MAX_PROBE_WAIT = 16
#: Below this share of 429/503 pushes, fewer than 90 % of (full) batches can be all-429 ones, so the
#: interval's p90 batch time is that of a batch with a push served: a served push's time.
SERVED_P90_BELOW = 0.9
#: With no capacity known, a run starts at this fraction of the declared maximum (slow start).
SLOW_START_DIVISOR = 4
#: HTTP statuses with which a service asks its callers to slow down.
THROTTLE_STATUSES = frozenset({429, 503})

MetricsEmitter = Callable[..., None]  # (name, value, job, *, run_id=None)


@dataclass(frozen=True)
class Signals:
    """What one interval showed of a job's service.

    Attributes:
        pushes: pushes made.
        throttled: pushes answered 429 or 503 asking this push to slow down (not shed answers).
        p90_latency_ms: the p90 of the batches' push time, ms (None: no batch).
        interval_s: the interval the counts cover, s.
        shed: pushes answered "not now" for the whole service (load shedding: a 429/503 with a
            `Retry-After` of at least the service's `shed_after_s`, or its `shed_header`). The
            service asked to wait, not for less concurrency: not throttling.
        waiting: the service asks every job to wait now (its shedding mark holds).
    """

    pushes: int
    throttled: int = 0
    p90_latency_ms: float | None = None
    interval_s: float = 60.0
    shed: int = 0
    waiting: bool = False

    @property
    def throttled_ratio(self) -> float:
        return self.throttled / self.pushes if self.pushes else 0.0

    @property
    def accepted(self) -> int:
        """Pushes the service took (not answered 429/503)."""
        return self.pushes - self.throttled - self.shed


@dataclass(frozen=True)
class AimdSettings:
    """The controller's knobs (defaults suit a service that answers in tens to hundreds of ms)."""

    ceiling: int
    floor: int = MIN_CONCURRENCY
    step: int | None = None  # None: max(1, ceiling // 20)
    decrease_factor: float = 0.5
    throttle_ratio: float = 0.02
    latency_factor: float = 2.0
    latency_limit_ms: float | None = None
    min_pushes: int = 20
    baseline_weight: float = 0.2
    batch_size: int = 1  # pushes per batch: turns the service's concurrent pushes into batches

    @classmethod
    def for_job(cls, job: JobDeclaration) -> AimdSettings:
        # A batch close to the task timeout is about to time out: back off before it does.
        return cls(
            ceiling=job.max_concurrency,
            latency_limit_ms=0.8 * job.task_timeout_s * 1000,
            batch_size=job.batch_size,
        )

    @property
    def increase(self) -> int:
        return self.step if self.step is not None else max(1, self.ceiling // 20)


@dataclass(frozen=True)
class Decision:
    """One decision: the cap before and after, what was done and why."""

    previous: int
    concurrency: int
    action: str  # "decrease", "increase" or "hold"
    reason: str
    baseline_ms: float | None
    capacity: float | None = None  # the service's estimated capacity, in batches
    probe_wait: int = MIN_PROBE_WAIT  # healthy intervals at the capacity before the next probe above it
    streak: int = 0  # healthy intervals at this cap so far

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AimdController:
    """One job's concurrency cap: a decrease to the service's estimated capacity, a gentle probe above it.

    Attributes:
        settings: the knobs.
        baseline_ms: the healthy p90 batch time (EWMA), ms; None until a healthy interval.
        capacity: the batches the service took at its last throttled interval (Little's law), or
            more since: a cap that had a healthy interval; None until a throttled one.
        probe_wait: healthy intervals at the capacity before a probe 1 above it; doubles (up to
            `MAX_PROBE_WAIT`) each time a probe is throttled, back to `MIN_PROBE_WAIT` when a probe
            goes through (the service grows: climb a batch every 2 intervals) or the estimate is
            taken, so a service at a steady capacity is probed less and less often.
        streak: healthy intervals in a row at the current cap.
    """

    settings: AimdSettings
    baseline_ms: float | None = None
    capacity: float | None = None
    probe_wait: int = MIN_PROBE_WAIT
    streak: int = 0

    def capacity_estimate(self, signals: Signals, current: int) -> float:
        """The batches in flight the service took in this interval: the larger of two views.

        * Little's law: accepted pushes per second x a batch's time = the pushes in flight the
          service took; / the batch size = batches. The batch time is the larger of this
          interval's p90 and the healthy baseline: under heavy throttling most batches are
          all-429 and end at once, so the interval's p90 alone underestimates how long a served
          push takes. It counts only the time a batch spends pushing, while a cap counts whole
          invocations (reading the batch, recording its outcomes), so for a fast service it
          reads low (on the local stack 2 where 3 fit).
        * The cap's accepted share, `current` x accepted / pushes: the cap at which the pushes
          made would have fitted, whole invocations counted (0 for an interval without pushes).
        """
        share = current * signals.accepted / signals.pushes if signals.pushes else 0.0
        times = [t for t in (signals.p90_latency_ms, self.baseline_ms) if t is not None]
        if not times or signals.interval_s <= 0:
            return share
        return max(share, signals.accepted / signals.interval_s * max(times) / 1000 / self.settings.batch_size)

    def decide(self, current: int, signals: Signals) -> Decision:
        s = self.settings
        current = min(max(current, s.floor), s.ceiling)
        p90 = signals.p90_latency_ms
        if signals.waiting or signals.shed:
            # The service asked every job to wait (load shedding): its answers say "not now", not
            # "fewer at once", and the quiet window is not idleness: neither cut nor grow; the
            # decisions resume with the first interval after the wait.
            why = "the service asks every job to wait" if signals.waiting else f"{signals.shed} pushes answered shed"
            return self._decision(current, current, "hold", f"{why} (load shedding): the capacity is held")
        if signals.pushes == 0:  # idle (between runs, or paused): the next run starts where it is safe
            start = self.start_cap()
            if current > start:
                return self._decision(current, start, "decrease", f"idle: the next run starts at {start} (slow start)")
            return self._decision(current, current, "hold", "idle")
        if signals.pushes < s.min_pushes:
            return self._decision(current, current, "hold", f"{signals.pushes} pushes: too few to judge")
        if signals.throttled_ratio >= s.throttle_ratio:
            return self._throttled(current, signals)
        overload = None
        if p90 is not None and s.latency_limit_ms is not None and p90 > s.latency_limit_ms:
            overload = f"p90 push time {p90:.0f} ms is above {s.latency_limit_ms:.0f} ms (near the task timeout)"
        elif p90 is not None and self.baseline_ms is not None and p90 > s.latency_factor * self.baseline_ms:
            overload = (
                f"p90 push time {p90:.0f} ms is above {s.latency_factor:g} x the healthy {self.baseline_ms:.0f} ms"
            )
        if overload is not None:  # the service slows down: its capacity is unknown, back off multiplicatively
            new = max(s.floor, math.floor(current * s.decrease_factor))
            return self._decision(current, new, "decrease" if new < current else "hold", overload)
        if p90 is not None:  # a healthy interval: follow the service's slow drift
            w = s.baseline_weight
            self.baseline_ms = p90 if self.baseline_ms is None else (1 - w) * self.baseline_ms + w * p90
        if signals.throttled:
            return self._decision(
                current,
                current,
                "hold",
                f"{signals.throttled} of {signals.pushes} pushes answered 429/503 ({signals.throttled_ratio:.1%}): "
                "at the service's capacity",
            )
        self.streak += 1
        if self.capacity is not None and current > self.capacity:
            # The service took this many batches without a 429 (a probe went through: it may be
            # growing, so the next probe comes at once again).
            self.capacity, self.probe_wait = float(current), MIN_PROBE_WAIT
        if current >= s.ceiling:
            return self._decision(current, current, "hold", "healthy, at the declared maximum")
        if self.capacity is not None and current + 1 > self.capacity and self.streak < self.probe_wait:
            return self._decision(
                current,
                current,
                "hold",
                f"healthy at the estimated capacity of {self.capacity:.1f}: probing above it after "
                f"{self.probe_wait} healthy intervals ({self.streak} so far)",
            )
        if self.capacity is not None and current + 1 > self.capacity:
            new, why = current + 1, f"healthy: probing 1 above the estimated capacity of {self.capacity:.1f}"
        elif self.capacity is not None:
            new = min(current + s.increase, max(current + 1, math.floor(self.capacity)))
            why = f"healthy: back towards the estimated capacity of {self.capacity:.1f}"
        else:  # slow start: nothing known of the service's capacity yet
            new, why = max(current + s.increase, 2 * current), "healthy, capacity not known yet: doubling"
        return self._decision(current, min(s.ceiling, new), "increase", why)

    def start_cap(self) -> int:
        """Where a run starts: the service's known capacity, or else a quarter of the declared maximum."""
        s = self.settings
        start = math.floor(self.capacity) if self.capacity is not None else s.ceiling // SLOW_START_DIVISOR
        return min(s.ceiling, max(s.floor, start))

    def _throttled(self, current: int, signals: Signals) -> Decision:
        s = self.settings
        self.streak = 0
        reason = f"{signals.throttled} of {signals.pushes} pushes answered 429/503 ({signals.throttled_ratio:.1%})"
        estimate = self.capacity_estimate(signals, current)
        halved = max(s.floor, math.floor(current * s.decrease_factor))
        if self.baseline_ms is None and signals.throttled_ratio >= SERVED_P90_BELOW:
            # Mostly all-429 batches, which end at once: the p90 may be one of them, so the estimate is
            # only a lower bound: cut at most multiplicatively.
            reason += f"; the service took at least ~{estimate:.1f} batches"
            new = max(halved, min(current - 1, math.floor(estimate)))
        elif self.capacity is not None and current == math.floor(self.capacity) + 1 and current - 1 >= s.floor:
            # A probe 1 above a capacity the service took without a 429 was throttled: back to that
            # capacity (an interval's estimate is noisy; if the capacity itself is throttled next, the
            # estimate is taken then), and probe half as often from now on.
            self.probe_wait = min(self.probe_wait * 2, MAX_PROBE_WAIT)
            reason += (
                f"; the service took ~{estimate:.1f} batches: back to its known capacity of "
                f"{math.floor(self.capacity)}, next probe after {self.probe_wait} healthy intervals"
            )
            new = math.floor(self.capacity)
        elif estimate >= current + 1:  # throttled with room to spare (a shared or slowing service?): halve
            self.capacity, self.probe_wait = float(math.floor(estimate + 0.5)), MIN_PROBE_WAIT
            reason += f"; the service took ~{estimate:.1f} batches, yet throttled"
            new = halved
        else:  # the batch time is a served push's: the estimate is trusted and remembered
            # to the nearest batch (at a few batches, rounding 2.9 down would leave a third unused),
            # and at least one below the cap that was throttled
            new = max(s.floor, min(current - 1, math.floor(estimate + 0.5)))
            self.capacity, self.probe_wait = float(new), MIN_PROBE_WAIT
            reason += f"; the service took ~{estimate:.1f} batches"
        return self._decision(current, new, "decrease" if new < current else "hold", reason)

    def _decision(self, previous: int, new: int, action: str, reason: str) -> Decision:
        if new != previous:
            self.streak = 0
        return Decision(
            previous,
            new,
            action,
            reason,
            None if self.baseline_ms is None else round(self.baseline_ms, 1),
            None if self.capacity is None else round(self.capacity, 2),
            self.probe_wait,
            self.streak,
        )


# ------------------------------------------------------------------------------ signals


def observe_pushes(emit: MetricsEmitter, batch: Iterable[tuple[str, int | None, bool]], seconds: float) -> None:
    """The forwarder's hook: emit one batch's push signals per job.

    Args:
        emit: the metrics emitter.
        batch: (job name, HTTP status or None when no answer, the answer sheds load for the whole
            service) of each push of the batch. A shed answer counts as `ServiceShed`, not `ServiceThrottled`.
        seconds: how long the batch's (concurrent) pushes took, s.
    """
    by_job: dict[str, list[tuple[int | None, bool]]] = {}
    for job, status, shed in batch:
        by_job.setdefault(job, []).append((status, shed))
    for job, answers in by_job.items():
        emit("ServicePushes", len(answers), job)
        emit("ServiceThrottled", sum(1 for s, shed in answers if s in THROTTLE_STATUSES and not shed), job)
        emit("ServiceShed", sum(1 for _, shed in answers if shed), job)
        emit("PushBatchMilliseconds", round(seconds * 1000, 1), job)


@dataclass
class CloudWatchSignals:
    """Reads a job's signals of the last `window_s` seconds from the forwarder's EMF metrics."""

    cloudwatch: Any
    window_s: int = 60
    namespace: str = METRIC_NAMESPACE
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __call__(self, job: str) -> Signals:
        end = self.now()
        dims = [{"Name": "job", "Value": job}, {"Name": SERVICE_DIMENSION[0], "Value": SERVICE_DIMENSION[1]}]

        def query(qid: str, name: str, stat: str) -> dict[str, Any]:
            return {
                "Id": qid,
                "MetricStat": {
                    "Metric": {"Namespace": self.namespace, "MetricName": name, "Dimensions": dims},
                    "Period": self.window_s,
                    "Stat": stat,
                },
                "ReturnData": True,
            }

        resp = self.cloudwatch.get_metric_data(
            MetricDataQueries=[
                query("pushes", "ServicePushes", "Sum"),
                query("throttled", "ServiceThrottled", "Sum"),
                query("shed", "ServiceShed", "Sum"),
                query("p90", "PushBatchMilliseconds", "p90"),
            ],
            StartTime=end - timedelta(seconds=self.window_s),
            EndTime=end,
        )
        values = {r["Id"]: (r.get("Values") or [None])[0] for r in resp.get("MetricDataResults", [])}
        return Signals(
            pushes=int(values.get("pushes") or 0),
            throttled=int(values.get("throttled") or 0),
            p90_latency_ms=float(values["p90"]) if values.get("p90") is not None else None,
            interval_s=float(self.window_s),
            shed=int(values.get("shed") or 0),
        )


# ------------------------------------------------------------------------------ actuator


class AdaptiveConcurrency:
    """Applies the controller's decisions to the jobs' event source mappings.

    Args:
        jobs: the jobs to control.
        scaler: reads and sets a job's cap.
        signals: a job's signals for the last interval (e.g. `CloudWatchSignals`).
        emit: the metrics emitter.
    """

    def __init__(
        self,
        *,
        jobs: Iterable[JobDeclaration],
        scaler: JobScaler,
        signals: Callable[[str], Signals],
        emit: MetricsEmitter | None = None,
        settings: Callable[[JobDeclaration], AimdSettings] = AimdSettings.for_job,
    ) -> None:
        self.jobs = list(jobs)
        self.scaler = scaler
        self.signals = signals
        self.emit = emit or (lambda name, value, job, **_: None)
        self.controllers = {job.name: AimdController(settings(job)) for job in self.jobs}

    def tick(self) -> dict[str, Decision]:
        """One decision per job, applied; returns them."""
        decisions: dict[str, Decision] = {}
        for job in self.jobs:
            cap = self.scaler.cap(job)
            current = cap.concurrency if cap.concurrency is not None else job.max_concurrency
            decision = self.controllers[job.name].decide(current, self.signals(job.name))
            if decision.concurrency != cap.concurrency:
                self.scaler.set(job, decision.concurrency)
            if decision.action == "hold" and decision.concurrency != current:
                decision = replace(decision, action="clamp")
            log.info(json.dumps({"adaptive_concurrency": job.name, **decision.as_dict()}))
            self.emit("EffectiveConcurrency", decision.concurrency, job.name)
            if decision.concurrency < current:
                self.emit("ConcurrencyDecreased", 1, job.name)
            elif decision.concurrency > current:
                self.emit("ConcurrencyIncreased", 1, job.name)
            decisions[job.name] = decision
        return decisions
