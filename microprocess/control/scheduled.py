"""The adaptive controller on its own schedule: one tick a minute for every job declared `adaptive = true`.

The deployed stack runs `functions/adaptive` on an EventBridge `rate(1 minute)` rule when a
job opts in (`infra/adaptive.py`). Each invocation is one `AdaptiveConcurrency.tick()`: per
job, the signals of the last minute (`CloudWatchSignals`), one AIMD decision, applied to the
job's event source mapping (`JobScaler`).

A Lambda keeps nothing between invocations for sure, so what the controller remembers (the
healthy p90 push time it compares against) is kept in the ledger table, one small item per
job: pk `JOB#<job>`, sk `ADAPTIVE` (one write a minute per job). The cap itself needs no
memory: it is read back from the mapping every tick.

On the local stack there are no CloudWatch metrics (the EMF lines stay in the logs), so
every interval shows no pushes and the controller holds; `microprocess scale JOB --adaptive`
is the same loop run from a shell.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError

from microprocess.control.adaptive import (
    MIN_PROBE_WAIT,
    AdaptiveConcurrency,
    AimdController,
    CloudWatchSignals,
    Decision,
    MetricsEmitter,
    Signals,
)
from microprocess.control.scale import JobScaler
from microprocess.control.service_controller import ROOM_BUDGET_S, ROOM_WAIT_S, ServiceShare, ServiceState
from microprocess.control.share import shared_services
from microprocess.declarations import JobDeclaration, ServiceDeclaration
from microprocess.pipeline.settings import RuntimeSettings
from microprocess.pipeline.shedding import ServiceWaits

log = logging.getLogger(__name__)

#: The variable naming the task forwarder (`RuntimeSettings.forwarder_function_name`); the rest
#: (the ledger table, the jobs' task queues) are the pipeline's own variables.
FORWARDER_FUNCTION_NAME = "FORWARDER_FUNCTION_NAME"
#: The controller's interval, s: the schedule's rate and the metrics window it reads.
INTERVAL_S = 60
#: Partition key prefix of a job's controller state in the ledger table.
STATE_PK_PREFIX = "JOB#"
STATE_SK = "ADAPTIVE"


class AdaptiveSetupError(ValueError):
    """The scheduled controller is missing a setting; the message names it and the fix."""


def adaptive_jobs(jobs: Iterable[JobDeclaration]) -> list[JobDeclaration]:
    """The jobs that opted in (`adaptive = true`), in declaration order."""
    return [job for job in jobs if job.adaptive]


def controlled_jobs(
    jobs: Iterable[JobDeclaration], services: Iterable[ServiceDeclaration] = ()
) -> list[JobDeclaration]:
    """The jobs whose caps the scheduled controller moves: the adaptive ones and those of a shared
    service (`share.shared_services`), in declaration order."""
    jobs = list(jobs)
    shared = {job.name for on in shared_services(jobs, services).values() for job in on}
    return [job for job in jobs if job.adaptive or job.name in shared]


class ControllerState:
    """The controllers' memory between invocations, in the ledger table: the healthy p90 baseline and
    the service's estimated capacity.

    Args:
        dynamodb: a boto3 DynamoDB client.
        table: the ledger table's name.
    """

    def __init__(self, dynamodb: Any, table: str) -> None:
        self.dynamodb, self.table = dynamodb, table

    @staticmethod
    def key(job: str) -> dict[str, Any]:
        return {"pk": {"S": f"{STATE_PK_PREFIX}{job}"}, "sk": {"S": STATE_SK}}

    def remembered(self, job: str) -> tuple[float | None, float | None]:
        """(the healthy p90 baseline in ms, the service's estimated capacity in batches), None when unknown."""
        memory = self.memory(job)
        return memory["baseline_ms"], memory["capacity"]

    def memory(self, job: str) -> dict[str, Any]:
        """Everything the job's controller remembers: `baseline_ms` and `capacity` (None when
        unknown), `probe_wait` (`MIN_PROBE_WAIT` when unknown) and `streak` (0)."""
        item = self.dynamodb.get_item(TableName=self.table, Key=self.key(job), ConsistentRead=True).get("Item") or {}
        values = {name: item.get(name, {}).get("N") for name in ("baseline_ms", "capacity", "probe_wait", "streak")}
        return {
            "baseline_ms": float(values["baseline_ms"]) if values["baseline_ms"] is not None else None,
            "capacity": float(values["capacity"]) if values["capacity"] is not None else None,
            "probe_wait": int(values["probe_wait"]) if values["probe_wait"] is not None else MIN_PROBE_WAIT,
            "streak": int(values["streak"]) if values["streak"] is not None else 0,
        }

    def restore(self, job: str, controller: AimdController) -> None:
        """Give `controller` what its job's controller remembered at the last tick."""
        memory = self.memory(job)
        controller.baseline_ms, controller.capacity = memory["baseline_ms"], memory["capacity"]
        controller.probe_wait, controller.streak = memory["probe_wait"], memory["streak"]

    def baseline_ms(self, job: str) -> float | None:
        return self.remembered(job)[0]

    def save(self, job: str, decision: Decision) -> None:
        item: dict[str, Any] = {
            **self.key(job),
            "concurrency": {"N": str(decision.concurrency)},
            "action": {"S": decision.action},
            "reason": {"S": decision.reason},
            "probe_wait": {"N": str(decision.probe_wait)},
            "streak": {"N": str(decision.streak)},
        }
        if decision.baseline_ms is not None:
            item["baseline_ms"] = {"N": repr(float(decision.baseline_ms))}
        if decision.capacity is not None:
            item["capacity"] = {"N": repr(float(decision.capacity))}
        self.dynamodb.put_item(TableName=self.table, Item=item)


def tick(
    *,
    jobs: Iterable[JobDeclaration],
    scaler: JobScaler,
    signals: Callable[[str], Signals],
    state: ControllerState,
    emit: MetricsEmitter | None = None,
    services: Iterable[ServiceDeclaration] = (),
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    room_budget_s: float = ROOM_BUDGET_S,
) -> dict[str, dict[str, Any]]:
    """One decision for every adaptive job among `jobs` and one for every shared service (keyed
    `service:<name>`: `share.shared_services`, whose jobs it decides for), applied and remembered.

    A job whose decision fails (its mapping is missing, a throttled API call) is reported and
    the others still get theirs; the errors are raised together at the end, so the invocation
    fails visibly (its error metric and log) instead of holding a cap silently.

    A service's raise waits for its lowered jobs' batches to finish (`ServiceShare._apply`); the
    services of one tick share `room_budget_s` for those waits (each at most `ROOM_WAIT_S`), so the
    last of many services is still decided within the function's timeout.

    Returns each job's decision as a dict (`Decision.as_dict()`).
    """
    decisions: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    jobs = list(jobs)
    declared = {s.name: s for s in services}
    shared = shared_services(jobs, declared.values())
    deadline = clock() + room_budget_s
    for left, (name, on) in zip(range(len(shared), 0, -1), shared.items(), strict=True):
        share = ServiceShare(
            service=declared.get(name) or ServiceDeclaration(name=name, local_app="unknown:app"),
            jobs=on,
            scaler=scaler,
            signals=signals,
            state=ServiceState(state.dynamodb, state.table),
            emit=emit,
            clock=clock,
            sleep=sleep,
            room_wait_s=min(ROOM_WAIT_S, max(0.0, deadline - clock()) / left),
        )
        try:
            decisions[f"service:{name}"] = share.tick().as_dict()
        except (ClientError, ValueError) as exc:
            log.exception("the share of service %s failed", name)
            errors.append(f"service {name}: {exc}")
    in_shared = {job.name for on in shared.values() for job in on}
    waits = ServiceState(state.dynamodb, state.table).waits()
    for job in adaptive_jobs(j for j in jobs if j.name not in in_shared):
        adaptive = AdaptiveConcurrency(jobs=[job], scaler=scaler, signals=waiting_too(signals, waits, job), emit=emit)
        try:
            state.restore(job.name, adaptive.controllers[job.name])
            decision = adaptive.tick()[job.name]
            state.save(job.name, decision)
        except (ClientError, ValueError) as exc:
            log.exception("adaptive concurrency of job %s failed", job.name)
            errors.append(f"{job.name}: {exc}")
            continue
        decisions[job.name] = decision.as_dict()
    if errors:
        raise RuntimeError(
            f"adaptive concurrency failed for {len(errors)} job(s), their caps unchanged this minute: "
            + "; ".join(errors)
        )
    return decisions


def waiting_too(
    signals: Callable[[str], Signals], waits: ServiceWaits, job: JobDeclaration
) -> Callable[[str], Signals]:
    """`signals`, marked `waiting` while `job`'s service asks every job to wait (load shedding): the
    AIMD holds then (`AimdController.decide`) instead of reading the quiet window as idle."""

    def read(name: str) -> Signals:
        seen = signals(name)
        return replace(seen, waiting=True) if not seen.waiting and waits.until(job.service) is not None else seen

    return read


def tick_from_environment(
    declared: Iterable[JobDeclaration],
    client: Callable[[str], Any],
    emit: MetricsEmitter | None = None,
    environ: Mapping[str, str] | None = None,
    services: Iterable[ServiceDeclaration] = (),
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    room_budget_s: float = ROOM_BUDGET_S,
) -> dict[str, dict[str, Any]]:
    """The deployed function's one call: settings from the environment, clients from `client(name)`."""
    services = list(services)
    jobs = controlled_jobs(declared, services)
    if not jobs:
        return {}  # nothing opted in (the stack deploys no schedule then; a manual invoke is harmless)
    settings = RuntimeSettings.from_env(environ)
    if not settings.forwarder_function_name:
        raise AdaptiveSetupError(
            f"the adaptive concurrency function needs {FORWARDER_FUNCTION_NAME} in its environment; the stack "
            "sets it (infra/adaptive.py): deploy it again"
        )
    scaler = JobScaler(
        lambda_client=client("lambda"),
        sqs=client("sqs"),
        forwarder_function=settings.forwarder_function_name,
        job_queue_urls=settings.job_queue_urls,
    )
    return tick(
        jobs=jobs,
        scaler=scaler,
        signals=CloudWatchSignals(client("cloudwatch"), window_s=INTERVAL_S),
        state=ControllerState(client("dynamodb"), settings.ledger_table),
        emit=emit,
        services=services,
    )
