"""`microprocess services [SERVICE] [--json]`: each declared service's load, for people and scripts.

For every declared service (or the one named): its declared capacity, the jobs that push to it
with their weights, what its controller last decided and saw (the pushes its jobs' caps allow
against the capacity, each job's share, batches and messages in flight, the capacity it learned,
and how old that reading is: the controller ticks once a minute on AWS), and "asked to wait until
T" while it sheds load. `status` and `runs` print the same load as lines; `--json` here is the
form for scripts (`status --json` keeps its documented keys).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from microprocess.cli import deployment
from microprocess.cli.options import EXIT_USAGE, JsonOption, Target, TargetOption, emit_json, fail, out
from microprocess.cli.service_load import service_view
from microprocess.control.share import shared_services
from microprocess.declarations import Declarations, UnknownServiceError, get_declarations


def register(app: typer.Typer) -> None:
    """Add `services` to the `microprocess` app."""
    app.command("services")(services)


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def service_entry(view: dict[str, Any], declared: Declarations, *, now: float) -> dict[str, Any]:
    """One service's JSON object: its declaration's capacity and jobs, then `service_view`'s load."""
    name = view["service"]
    decl = declared.services.get(name)
    jobs = [j for j in declared.jobs if j.service == name]
    load = view["load"]
    capacity = decl.capacity
    return {
        "service": name,
        "capacity": (
            None
            if capacity is None
            else {"concurrent_pushes": capacity.concurrent_pushes, "pushes_per_second": capacity.pushes_per_second}
        ),
        "shared": name in shared_services(list(declared.jobs), list(declared.services)),
        "jobs": [{"job": j.name, "weight": j.weight, "priority_weight": j.priority_weight} for j in jobs],
        "load": load,
        "in_flight": sum(job["in_flight"] for job in load["jobs"].values()) if load else None,
        "as_of": _iso(load["at"]) if load else None,
        "age_s": round(max(now - load["at"], 0.0), 1) if load else None,
        "wait_until": _iso(view["wait_until"]),
        "why": view["why"],
    }


def _print(entry: dict[str, Any]) -> None:
    capacity = entry["capacity"]
    declared = (
        "no capacity declared"
        if capacity is None
        else ", ".join(
            f"{value} {unit}"
            for value, unit in (
                (capacity["concurrent_pushes"], "pushes at once"),
                (capacity["pushes_per_second"], "pushes/s"),
            )
            if value is not None
        )
    )
    jobs = ", ".join(f"{j['job']} (weight {j['weight']:g})" for j in entry["jobs"]) or "no job"
    out.print(f"[bold]{escape(entry['service'])}[/]  {escape(declared)}; jobs: {escape(jobs)}")
    load = entry["load"]
    if not entry["shared"]:
        out.print("  not shared: each job keeps its own cap (declare a capacity to share it, docs/capacity.md)")
    elif load is None:
        out.print("  its controller has not run yet (it ticks once a minute on AWS)")
    else:
        of = f" of capacity {load['capacity']}" if load["capacity"] is not None else ""
        learned = f", learned {load['learned_capacity']:g}" if load["learned_capacity"] is not None else ""
        out.print(
            f"  caps allow {load['allowed_pushes']} pushes at once{of}{learned}; {entry['in_flight']} messages in "
            f"flight; as of {entry['age_s']:g} s ago"
        )
        for job, share in sorted(load["jobs"].items()):
            shown = (
                f"{share['cap_batches']} batch(es), share {share['share']:.0%}, {share['in_flight']} in flight"
                if share["cap_batches"]
                else f"idle, {share['in_flight']} in flight"
            )
            out.print(f"  {escape(job):<24} {shown}")
        if load["reason"]:
            out.print(f"  why: {escape(load['reason'])}")
    if entry["wait_until"] is not None:
        out.print(f"  asked to wait until {entry['wait_until']} ({escape(entry['why'] or '')})")


def services(
    service: Annotated[
        str | None, typer.Argument(metavar="SERVICE", help="One declared service (default: every one).")
    ] = None,
    as_json: JsonOption = False,
    target: TargetOption = Target.local,
) -> None:
    """Show each service's load: its capacity, the pushes its jobs' caps allow, each job's share and
    messages in flight, and "asked to wait until T" while it sheds load."""
    declared = get_declarations()
    try:
        names = [declared.services.get(service).name] if service else declared.services.names()
    except UnknownServiceError as exc:
        fail(str(exc), EXIT_USAGE)
    dep = deployment.connect(target)
    now = time.time()
    with deployment.ledger_errors(dep):
        entries = [service_entry(service_view(dep, declared, name, now=now), declared, now=now) for name in names]
    if as_json:
        emit_json({"services": entries})
        return
    for entry in entries:
        _print(entry)
