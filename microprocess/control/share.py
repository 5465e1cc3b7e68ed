"""One service, many jobs: its declared capacity split between the jobs that push to it, by weight.

Each job has its own task queue and event source mapping on the shared forwarder, and a batch
pushes its (up to `batch_size`) tasks concurrently, so the pushes in flight to a service are
at most the sum, over its jobs, of cap x batch size. The service's controller (`ServiceShare`,
one per service, every interval) keeps that sum within the service's capacity:

* **the capacity** in pushes at once: the declared `concurrent_pushes`, `pushes_per_second`
  turned into pushes at once by Little's law (rate x the healthy push time; 50 ms until one is
  measured), and, when one of the service's jobs is `adaptive`, the capacity the service's one
  AIMD controller learned from all its jobs' pushes together (`AimdController` in units of
  pushes, remembered in the ledger across runs): the least of those;
* **the activity** of each job: a job whose queue holds a message (visible, in flight or
  delayed) is active; an idle one's mapping is disabled, so its share goes to the others at
  once, and it starts at the next interval when work arrives (a run waits at most one interval);
  a draining one (messages in flight only, none visible or delayed) can use no more batches
  than it runs, so the rest of its share goes to the others too (P9: the last seconds of a job);
* **the split** (`allocate`): water-filling by weight (a job's weight x `priority_weight` while
  it has a `--priority high` run), each job at most its `max_concurrency`, then whole batches:
  each job gets floor(share / batch size) batches, and the batches left go to the largest
  remainders while they fit. The sum of cap x batch size stays within the capacity, except that
  an SQS event source takes no fewer than 2 batches (`MIN_CONCURRENCY`): a capacity below the
  active jobs' floors is reported (`below_floor`) and each gets 2.

Why the event-source caps and not a token bucket or a lease table in DynamoDB: a lease per push
is two writes per push on the items that hold the service's tokens (a hot key at 50,000 pushes
a second, ARCHITECTURE invariant 5, or a sharded bucket whose shards drift apart), and a
forwarder that dies between taking and returning a lease leaks it; the caps cost a few calls a
minute per job, nothing per push, and the service can never be above its capacity by more than
the batches a cap change lets finish (docs/capacity.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from microprocess.control.scale import MIN_CONCURRENCY
from microprocess.declarations import JobDeclaration, ServiceDeclaration

#: The push time assumed for `pushes_per_second` until one is measured, ms.
ASSUMED_PUSH_MS = 50.0
#: Partition key prefix of a service's items in the ledger table (its controller's state, its
#: shedding mark); one item each, written a few times a minute at most.
SERVICE_PK_PREFIX = "SVC#"
SHARE_SK = "SHARE"


@dataclass(frozen=True)
class JobDemand:
    """One job on a service, as the split sees it.

    Attributes:
        job: the job name.
        weight: its weight (x `priority_weight` while it has a high-priority run).
        batch_size: pushes per batch.
        max_batches: its declared `max_concurrency`.
        active: it has work (a message visible, in flight or delayed).
    """

    job: str
    weight: float
    batch_size: int
    max_batches: int
    active: bool = True

    @classmethod
    def of(
        cls, job: JobDeclaration, *, active: bool, high_priority: bool = False, draining: int | None = None
    ) -> JobDemand:
        """`draining`: the job's messages in flight when none waits to be received (its queue is
        draining: it can use no more batches than those, so the rest of its share goes to the others)."""
        weight = job.weight * (job.priority_weight if high_priority else 1.0)
        most = job.max_concurrency
        if active and draining is not None:
            most = min(most, max(MIN_CONCURRENCY, math.ceil(draining / job.batch_size)))
        return cls(job.name, weight, job.batch_size, most, active)


@dataclass(frozen=True)
class Allocation:
    """The split of a service's capacity.

    Attributes:
        capacity: the pushes at once split.
        caps: each job's batches (0: idle, its mapping disabled).
        shares: each active job's share of the capacity by weight (0..1), before whole batches.
        below_floor: the active jobs' least caps (2 batches each) are above the capacity.
    """

    capacity: int
    caps: dict[str, int]
    shares: dict[str, float]
    below_floor: bool = False

    def pushes(self, demands: Iterable[JobDemand]) -> int:
        """The most pushes at once the caps allow."""
        return sum(self.caps.get(d.job, 0) * d.batch_size for d in demands)


def allocate(capacity: int, demands: Iterable[JobDemand]) -> Allocation:
    """Split `capacity` pushes at once between the active jobs by weight, in whole batches."""
    demands = list(demands)
    active = [d for d in demands if d.active]
    caps = {d.job: 0 for d in demands}
    if not active:
        return Allocation(capacity, caps, {})
    ideal: dict[str, float] = {}
    pool, left = list(active), float(capacity)
    while pool:  # water-filling: a job whose maximum is below its weighted share takes its maximum
        total = sum(d.weight for d in pool)
        full = [d for d in pool if d.max_batches * d.batch_size <= left * d.weight / total]
        if not full:
            ideal.update({d.job: left * d.weight / total for d in pool})
            break
        for d in full:
            ideal[d.job] = float(d.max_batches * d.batch_size)
            left -= ideal[d.job]
            pool.remove(d)
    total_weight = sum(d.weight for d in active)
    shares = {d.job: d.weight / total_weight for d in active}
    floors = sum(MIN_CONCURRENCY * d.batch_size for d in active)
    if floors > capacity:
        caps.update({d.job: MIN_CONCURRENCY for d in active})
        return Allocation(capacity, caps, shares, below_floor=True)
    for d in active:
        caps[d.job] = min(d.max_batches, max(MIN_CONCURRENCY, math.floor(ideal[d.job] / d.batch_size)))
    # Each floor of 2 may have taken more than a job's share: take the excess back from the others.
    while sum(caps[d.job] * d.batch_size for d in active) > capacity:
        over = max(
            (d for d in active if caps[d.job] > MIN_CONCURRENCY),
            key=lambda d: caps[d.job] * d.batch_size - ideal[d.job],
        )
        caps[over.job] -= 1
    # The batches left go to the largest remainders, while a whole batch fits.
    while True:
        room = capacity - sum(caps[d.job] * d.batch_size for d in active)
        fits = [d for d in active if d.batch_size <= room and caps[d.job] < d.max_batches]
        if not fits:
            break
        best = max(fits, key=lambda d: (ideal[d.job] - caps[d.job] * d.batch_size) / d.batch_size)
        caps[best.job] += 1
    return Allocation(capacity, caps, shares)


def pushes_at_once(targets: Mapping[str, int], running: Mapping[str, int], batch_sizes: Mapping[str, int]) -> int:
    """The most pushes at once once every job is at its `targets` cap, while the batches `running`
    under the caps before still run (a lowered cap stops no batch: each finishes)."""
    jobs = set(targets) | set(running)
    return sum(max(targets.get(j, 0), running.get(j, 0)) * batch_sizes.get(j, 1) for j in jobs)


def raise_steps(
    targets: Mapping[str, int],
    granted: Mapping[str, int],
    running: Mapping[str, int],
    batch_sizes: Mapping[str, int],
    bound: int,
) -> dict[str, int]:
    """The caps the jobs can have now, on the way to `targets`: a job below its target (`granted`:
    the caps in force, 0 for a disabled mapping) takes whole batches of the room left within `bound`
    pushes while every job runs the larger of its cap and its batches still `running`; the largest
    shortfall first; a disabled one only once `MIN_CONCURRENCY` batches fit (its event source's floor)."""
    caps = dict(granted)
    room = bound - pushes_at_once(caps, running, batch_sizes)
    for job in sorted((j for j in targets if caps.get(j, 0) < targets[j]), key=lambda j: caps.get(j, 0) - targets[j]):
        size, now, busy = batch_sizes.get(job, 1), caps.get(job, 0), running.get(job, 0)
        new = min(targets[job], max(now, busy) + max(room, 0) // size)
        if new <= now or (now == 0 and new < MIN_CONCURRENCY):
            continue
        room -= (max(new, busy) - max(now, busy)) * size
        caps[job] = new
    return caps


def batches_running(messages_in_flight: int, batch_size: int, cap: int) -> int:
    """The batches a job may still be running: its messages in flight (received, not yet deleted) in
    whole batches, at most its cap in force (messages backing off after a 429 are in flight too)."""
    return min(math.ceil(messages_in_flight / batch_size), cap)


def declared_capacity(service: ServiceDeclaration, push_ms: float | None) -> int | None:
    """The service's declared capacity in pushes at once (None: none declared).

    `pushes_per_second` x the push time (Little's law; `ASSUMED_PUSH_MS` until one is
    measured), at least 1; the lesser of that and `concurrent_pushes` when both are declared."""
    declared = service.capacity
    if declared is None:
        return None
    bounds: list[int] = []
    if declared.concurrent_pushes is not None:
        bounds.append(declared.concurrent_pushes)
    if declared.pushes_per_second is not None:
        seconds = (push_ms if push_ms else ASSUMED_PUSH_MS) / 1000
        bounds.append(max(1, math.floor(declared.pushes_per_second * seconds)))
    return min(bounds)


def jobs_by_service(jobs: Iterable[JobDeclaration]) -> dict[str, list[JobDeclaration]]:
    """The jobs of each service, in declaration order."""
    grouped: dict[str, list[JobDeclaration]] = {}
    for job in jobs:
        grouped.setdefault(job.service, []).append(job)
    return grouped


def shared_services(
    jobs: Iterable[JobDeclaration], services: Iterable[ServiceDeclaration]
) -> dict[str, list[JobDeclaration]]:
    """The services a controller shares: those declaring a `capacity`, and those with two or more
    `adaptive` jobs (one learned capacity for all of them), with their jobs. A service with one
    adaptive job and no capacity keeps that job's own controller (the same thing: one job, one share)."""
    declared = {s.name: s for s in services}
    shared: dict[str, list[JobDeclaration]] = {}
    for name, on in jobs_by_service(jobs).items():
        service = declared.get(name)
        if (service is not None and service.capacity is not None) or sum(j.adaptive for j in on) >= 2:
            shared[name] = on
    return shared


@dataclass(frozen=True)
class ServiceLoad:
    """What a service's controller last decided and saw, for `status`, `runs` and the console.

    Attributes:
        service: its name.
        capacity: the pushes at once it was given (None: none known).
        caps: each job's batches.
        shares: each active job's share by weight.
        in_flight: each job's messages in flight (received, not yet deleted: pushing or backing off).
        batch_sizes: each job's batch size.
        learned: the capacity its AIMD controller learned, pushes (None: not adaptive, or not yet).
        reason: why (e.g. the floors are above the capacity).
        at: when, epoch seconds.
    """

    service: str
    capacity: int | None
    caps: Mapping[str, int] = field(default_factory=dict)
    shares: Mapping[str, float] = field(default_factory=dict)
    in_flight: Mapping[str, int] = field(default_factory=dict)
    batch_sizes: Mapping[str, int] = field(default_factory=dict)
    learned: float | None = None
    reason: str = ""
    at: float = 0.0

    @property
    def allowed_pushes(self) -> int:
        return sum(cap * self.batch_sizes.get(job, 1) for job, cap in self.caps.items())

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "capacity": self.capacity,
            "allowed_pushes": self.allowed_pushes,
            "learned_capacity": self.learned,
            "jobs": {
                job: {
                    "cap_batches": cap,
                    "share": round(self.shares.get(job, 0.0), 3),
                    "in_flight": self.in_flight.get(job, 0),
                }
                for job, cap in self.caps.items()
            },
            "reason": self.reason,
            "at": self.at,
        }

    def describe(self) -> str:
        """One line: the capacity, the pushes the caps allow, each job's share."""
        capacity = "no declared capacity" if self.capacity is None else f"capacity {self.capacity} pushes at once"
        parts = [
            f"{job} {cap} batch(es), share {self.shares.get(job, 0.0):.0%}, {self.in_flight.get(job, 0)} in flight"
            if cap
            else f"{job} idle"
            for job, cap in sorted(self.caps.items())
        ]
        return f"service {self.service}: {capacity}, caps allow {self.allowed_pushes}; " + "; ".join(parts)


def job_capacity_batches(service: ServiceDeclaration | None, job: JobDeclaration, task_seconds: float) -> int | None:
    """The most batches at once `job` can have on `service` alone (its whole declared capacity, for the
    planner's wall time); None when the service declares no capacity. At least the event source's floor."""
    if service is None or service.capacity is None:
        return None
    pushes = declared_capacity(service, task_seconds * 1000 if task_seconds > 0 else None)
    assert pushes is not None
    return max(MIN_CONCURRENCY, pushes // job.batch_size)
