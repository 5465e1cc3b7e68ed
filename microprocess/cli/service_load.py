"""The CLI's view of a shared service: its load (pushes allowed against its capacity, each job's
share and its messages in flight), a shedding service's "asked to wait until T", and
`run --priority high` (`microprocess.control.service_controller`)."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from microprocess.control.service_controller import ServiceState
from microprocess.control.share import shared_services
from microprocess.declarations import Declarations
from microprocess.pipeline.shedding import ServiceWaits, describe_wait
from microprocess.pipeline.tenants import tenant_count

if TYPE_CHECKING:
    from microprocess.cli.commands import Deployment


class Priority(StrEnum):
    """`run --priority`: `high` takes `priority_weight` shares of its job's queue beside the job's
    other runs (`pipeline.tenants`), and the job's weight x `priority_weight` on a shared service
    while it has work. The values are the start event's `PRIORITIES`."""

    normal = "normal"
    high = "high"


def _table(dep: Deployment) -> tuple[Any, str]:
    return dep.client("dynamodb"), dep.ledger().table_name


def service_view(dep: Deployment, declared: Declarations, service: str, *, now: float | None = None) -> dict[str, Any]:
    """A service's load and shedding: `{"service", "load" (or None), "wait_until" (or None), "why"}`."""
    client, table = _table(dep)
    shared = service in shared_services(list(declared.jobs), list(declared.services))
    load = ServiceState(client, table).service_load(service) if shared else None
    waits = ServiceWaits(client, table, clock=(lambda: now) if now is not None else time.time)
    until = waits.until(service)
    return {
        "service": service,
        "load": load.as_dict() if load is not None else None,
        "load_line": load.describe() if load is not None else None,
        "wait_until": until,
        "why": waits.why(service) if until is not None else None,
    }


def service_lines(dep: Deployment, declared: Declarations, service: str) -> list[str]:
    """The `status` / `runs` lines of a service: its load, and "asked to wait until T" while it sheds."""
    view = service_view(dep, declared, service)
    lines = []
    if view["load_line"]:
        lines.append(view["load_line"])
    if view["wait_until"] is not None:
        lines.append(f"service {service}: {describe_wait(view['wait_until'])} ({view['why']})")
    return lines


def mark_priority(dep: Deployment, declared: Declarations, job: str, run_id: str, priority: Priority) -> str | None:
    """`run --priority high`: leave the mark the service's controller reads (a shared service); a
    note saying what it does when the service is not shared (the run's share within its job only)."""
    if priority is Priority.normal:
        return None
    decl = declared.jobs.get(job)
    if decl.service not in shared_services(list(declared.jobs), list(declared.services)):
        return (
            f"--priority high: about {tenant_count(str(priority), decl.priority_weight)} shares of job "
            f"'{job}' beside its other runs (priority_weight); service '{decl.service}' is not shared, so "
            f"nothing more (declare capacity = {{ concurrent_pushes = N }} in [services.{decl.service}] to "
            "weight it there too)"
        )
    client, table = _table(dep)
    ServiceState(client, table).mark_high(decl.service, job, run_id)
    return None
