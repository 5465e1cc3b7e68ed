"""The controller of one service shared by several jobs: one tick per interval (`microprocess.control.share`).

Per tick: each job's activity (its queue's messages) and last interval's signals; the
service's capacity (declared, and learned by one AIMD controller over all its jobs' pushes
when a job is `adaptive`); the split by weight (`allocate`), applied to the jobs' event source
mappings (an idle job's disabled, an active one's enabled at its cap); what it decided saved
on the service's own ledger item (`SVC#<service>`, sk `SHARE`): the learned capacity survives
from run to run, and `status`, `runs` and the console read the service's load from it. While the
service sheds load (it asked every job to wait: `pipeline.shedding`), the learned capacity is
held: its shed answers are not throttling, and the quiet window is not idleness.

A `microprocess run JOB --priority high` leaves a mark (`SVC#<service>`, sk `HIGH#<run>`): the
job's weight is multiplied by its `priority_weight` while its queue has work; the first tick
that finds the job idle ends the mark (the run has drained).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from microprocess.control.adaptive import AimdController, AimdSettings, MetricsEmitter, Signals
from microprocess.control.scale import JobScaler
from microprocess.control.share import (
    SERVICE_PK_PREFIX,
    SHARE_SK,
    Allocation,
    JobDemand,
    ServiceLoad,
    allocate,
    batches_running,
    declared_capacity,
    pushes_at_once,
    raise_steps,
)
from microprocess.declarations import JobDeclaration, ServiceDeclaration
from microprocess.pipeline.shedding import ServiceWaits

log = logging.getLogger(__name__)

HIGH_SK_PREFIX = "HIGH#"
#: The longest a tick waits for the batches of lowered caps to finish before it raises others, s
#: (the scheduled function has 50 s for every service's tick; a batch lasts about its push time).
ROOM_WAIT_S = 15.0
#: What one scheduled tick gives all its services' waits together, s: the function's 50 s timeout
#: (`infra/adaptive.py`) less the reads, writes and adaptive jobs' decisions (`scheduled.tick`).
ROOM_BUDGET_S = 30.0
ROOM_POLL_S = 0.5
_QUEUE_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def service_key(service: str, sk: str = SHARE_SK) -> dict[str, Any]:
    return {"pk": {"S": f"{SERVICE_PK_PREFIX}{service}"}, "sk": {"S": sk}}


class ServiceState:
    """A service's controller state and its high-priority marks, in the ledger table.

    Args:
        dynamodb: a boto3 DynamoDB client.
        table: the ledger table's name.
    """

    def __init__(self, dynamodb: Any, table: str) -> None:
        self.dynamodb, self.table = dynamodb, table

    def load(self, service: str) -> dict[str, Any]:
        """The saved state (`{}` when none): `memory` (the AIMD's), `pushes` (the caps' pushes), `load`."""
        item = self.dynamodb.get_item(TableName=self.table, Key=service_key(service), ConsistentRead=True).get("Item")
        return json.loads(item["state"]["S"]) if item else {}

    def save(self, service: str, state: dict[str, Any]) -> None:
        self.dynamodb.put_item(TableName=self.table, Item={**service_key(service), "state": {"S": json.dumps(state)}})

    def waits(self, clock: Callable[[], float] = time.time) -> ServiceWaits:
        """The services' shedding marks (`pipeline.shedding`), in the same table."""
        return ServiceWaits(self.dynamodb, self.table, clock=clock)

    def mark_high(self, service: str, job: str, run_id: str) -> None:
        """`run --priority high`: the job takes its larger share while its queue has work."""
        self.dynamodb.put_item(
            TableName=self.table,
            Item={**service_key(service, f"{HIGH_SK_PREFIX}{run_id}"), "job": {"S": job}, "ended": {"BOOL": False}},
        )

    def high_marks(self, service: str) -> list[tuple[str, str]]:
        """(sk, job) of each high-priority mark not yet ended."""
        resp = self.dynamodb.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :high)",
            ExpressionAttributeValues={
                ":pk": {"S": f"{SERVICE_PK_PREFIX}{service}"},
                ":high": {"S": HIGH_SK_PREFIX},
            },
            ConsistentRead=True,
        )
        return [
            (item["sk"]["S"], item["job"]["S"])
            for item in resp.get("Items", [])
            if not item.get("ended", {}).get("BOOL", False)
        ]

    def end_high(self, service: str, sk: str, job: str) -> None:
        self.dynamodb.put_item(
            TableName=self.table, Item={**service_key(service, sk), "job": {"S": job}, "ended": {"BOOL": True}}
        )

    def service_load(self, service: str) -> ServiceLoad | None:
        """What the service's controller last decided (None: it has not run)."""
        saved = self.load(service).get("load")
        if not saved:
            return None
        return ServiceLoad(
            service=service,
            capacity=saved.get("capacity"),
            caps=saved.get("caps", {}),
            shares=saved.get("shares", {}),
            in_flight=saved.get("in_flight", {}),
            batch_sizes=saved.get("batch_sizes", {}),
            learned=saved.get("learned"),
            reason=saved.get("reason", ""),
            at=float(saved.get("at", 0.0)),
        )


def queue_activity(scaler: JobScaler, job: JobDeclaration) -> tuple[bool, int, int]:
    """(the job has work: a message visible, in flight or delayed; its messages in flight; its
    messages waiting to be received: visible or delayed)."""
    url = scaler.job_queue_urls.get(job.name)
    if not url:
        raise ValueError(f"the stack has no task queue for job '{job.name}'; deploy the stack again")
    attrs = scaler.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(_QUEUE_COUNTS))["Attributes"]
    counts = [int(attrs.get(name, 0)) for name in _QUEUE_COUNTS]
    return sum(counts) > 0, counts[1], counts[0] + counts[2]


def combined(signals: Iterable[Signals]) -> Signals:
    """One interval of a service: the sums of its jobs' pushes, 429/503s and shed answers, the slowest
    p90; waiting when any job's signals say the service asks to wait."""
    signals = list(signals)
    p90s = [s.p90_latency_ms for s in signals if s.p90_latency_ms is not None]
    return Signals(
        pushes=sum(s.pushes for s in signals),
        throttled=sum(s.throttled for s in signals),
        p90_latency_ms=max(p90s) if p90s else None,
        interval_s=max((s.interval_s for s in signals), default=60.0),
        shed=sum(s.shed for s in signals),
        waiting=any(s.waiting for s in signals),
    )


class ServiceShare:
    """One service's controller.

    Args:
        service: the service.
        jobs: the jobs that push to it.
        scaler: reads and sets the jobs' mappings.
        signals: a job's signals of the last interval.
        state: where the controller's state lives.
        emit: the metrics emitter.
        clock: epoch seconds.
    """

    def __init__(
        self,
        *,
        service: ServiceDeclaration,
        jobs: Iterable[JobDeclaration],
        scaler: JobScaler,
        signals: Callable[[str], Signals],
        state: ServiceState,
        emit: MetricsEmitter | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        room_wait_s: float = ROOM_WAIT_S,
    ) -> None:
        self.service, self.jobs = service, list(jobs)
        if not self.jobs:
            raise ValueError(f"service '{service.name}' has no job to share it")
        self.scaler, self.signals, self.state = scaler, signals, state
        self.emit = emit or (lambda name, value, job, **_: None)
        self.clock, self.sleep, self.room_wait_s = clock, sleep, room_wait_s

    def aimd_settings(self) -> AimdSettings:
        """The service's AIMD in pushes at once: up to its declared capacity, or its jobs' maxima together."""
        declared = declared_capacity(self.service, None) if self.service.capacity else None
        ceiling = declared or sum(j.max_concurrency * j.batch_size for j in self.jobs)
        floor = min(2 * j.batch_size for j in self.jobs)
        return AimdSettings(
            ceiling=max(ceiling, floor),
            floor=floor,
            latency_limit_ms=0.8 * min(j.task_timeout_s for j in self.jobs) * 1000,
            batch_size=1,
        )

    def tick(self) -> ServiceLoad:
        """One decision for the service, applied to its jobs' mappings and saved."""
        saved = self.state.load(self.service.name)
        interval = combined(self.signals(job.name) for job in self.jobs)
        if not interval.waiting and self.state.waits(self.clock).until(self.service.name) is not None:
            interval = replace(interval, waiting=True)  # shedding: the AIMD holds (`AimdController.decide`)
        activity = {job.name: queue_activity(self.scaler, job) for job in self.jobs}
        learned, memory, reason = None, saved.get("memory", {}), ""
        if any(job.adaptive for job in self.jobs):
            controller = AimdController(self.aimd_settings(), **memory)
            current = int(saved.get("learned") or controller.start_cap())
            decision = controller.decide(current, interval)
            learned, reason = float(decision.concurrency), decision.reason
            memory = {
                "baseline_ms": controller.baseline_ms,
                "capacity": controller.capacity,
                "probe_wait": controller.probe_wait,
                "streak": controller.streak,
            }
        push_ms = interval.p90_latency_ms or memory.get("baseline_ms")
        bounds = [b for b in (declared_capacity(self.service, push_ms), learned) if b is not None]
        capacity = int(min(bounds))
        high = self._high_priority(activity)
        demands = [
            JobDemand.of(job, active=seen[0], high_priority=job.name in high, draining=None if seen[2] else seen[1])
            for job, seen in ((job, activity[job.name]) for job in self.jobs)
        ]
        split = allocate(capacity, demands)
        if split.below_floor:
            reason = (
                f"capacity {capacity} pushes is below the active jobs' least caps (2 batches each, "
                f"{sum(2 * d.batch_size for d in demands if d.active)} pushes): lower their batch_size"
            )
        self._apply(split, capacity, {name: seen[1] for name, seen in activity.items()})
        load = ServiceLoad(
            service=self.service.name,
            capacity=capacity,
            caps=split.caps,
            shares=split.shares,
            in_flight={name: seen[1] for name, seen in activity.items()},
            batch_sizes={job.name: job.batch_size for job in self.jobs},
            learned=learned,
            reason=reason,
            at=self.clock(),
        )
        self.state.save(
            self.service.name,
            {"memory": memory, "learned": learned, "load": {**load.as_dict(), **_load_fields(load)}},
        )
        log.info(json.dumps({"service_share": self.service.name, **load.as_dict()}))
        for job, cap in split.caps.items():
            self.emit("ServiceShareCap", cap, job)
        return load

    def _high_priority(self, activity: dict[str, tuple[bool, int, int]]) -> set[str]:
        high: set[str] = set()
        for sk, job in self.state.high_marks(self.service.name):
            if activity.get(job, (False, 0))[0]:
                high.add(job)
            else:  # the job has drained: its high-priority run is over
                self.state.end_high(self.service.name, sk, job)
        return high

    def _apply(self, split: Allocation, capacity: int, in_flight: dict[str, int]) -> None:
        """The caps, lowered first and raised as the room frees: a lowered cap stops no batch, so a raise
        applied at once would put the service above its capacity while the lowered jobs' batches finish
        (measured in P9: a job enabled while the others ran at their old caps had most of its pushes
        answered 429, and each all-429 batch ended at once and took the next). A raise goes up in whole
        batches as the lowered jobs' batches end (`share.raise_steps`), waiting at most `room_wait_s`."""
        targets = {job.name: min(split.caps[job.name], job.max_concurrency) for job in self.jobs}
        caps = {job.name: self.scaler.cap(job) for job in self.jobs}
        granted: dict[str, int] = {}
        for job in self.jobs:
            cap, target = caps[job.name], targets[job.name]
            enabled = cap.state not in ("Disabled", "Disabling")
            now = (cap.concurrency or job.max_concurrency) if enabled else 0
            if target == 0 and enabled:
                self.scaler.lambda_client.update_event_source_mapping(UUID=cap.uuid, Enabled=False)
            elif 0 < target < now or (0 < target == now and cap.concurrency != target):
                self.scaler.lambda_client.update_event_source_mapping(
                    UUID=cap.uuid, ScalingConfig={"MaximumConcurrency": target}
                )
            granted[job.name] = min(now, target)
        sizes = {job.name: job.batch_size for job in self.jobs}
        bound = max(capacity, pushes_at_once(targets, {}, sizes))
        deadline = self.clock() + self.room_wait_s
        while any(granted[j] < targets[j] for j in targets):
            running = {
                job.name: batches_running(in_flight.get(job.name, 0), job.batch_size, caps[job.name].concurrency or 0)
                for job in self.jobs
            }
            late = self.clock() >= deadline
            steps = dict(targets) if late else raise_steps(targets, granted, running, sizes, bound)
            if late:
                log.warning(
                    "service %s: raising caps while batches under the caps before still run (%s); the service "
                    "may be above its capacity until they finish",
                    self.service.name,
                    running,
                )
            for job in self.jobs:
                if steps[job.name] > granted[job.name]:
                    changes: dict[str, Any] = {"ScalingConfig": {"MaximumConcurrency": steps[job.name]}}
                    if granted[job.name] == 0:
                        changes["Enabled"] = True
                    self.scaler.lambda_client.update_event_source_mapping(UUID=caps[job.name].uuid, **changes)
                    granted[job.name] = steps[job.name]
            if late or all(granted[j] >= targets[j] for j in targets):
                return
            self.sleep(ROOM_POLL_S)
            in_flight = {job.name: queue_activity(self.scaler, job)[1] for job in self.jobs if in_flight.get(job.name)}


def _load_fields(load: ServiceLoad) -> dict[str, Any]:
    """The fields `ServiceState.service_load` reads back."""
    return {
        "caps": dict(load.caps),
        "shares": dict(load.shares),
        "in_flight": dict(load.in_flight),
        "batch_sizes": dict(load.batch_sizes),
        "learned": load.learned,
    }
