"""`microprocess plan`: how long a run of N items takes on AWS, and what it costs.

Pure functions over three inputs kept in the repository:

* the job declaration (`microprocess.declarations`): batch size and the event source's concurrency cap;
* the list prices (`microprocess/pricing_table.json`, dated, with their source);
* what `make bench` measured (`microprocess/measured_costs.json`): AWS requests and
  DynamoDB units per item, forwarder invocations per item and their duration beyond
  the service's latency, the splitter's rate, and the ledger's hottest item.

**Wall time.** The SQS event source starts with `INITIAL_CONCURRENCY` concurrent batches
and adds `SCALE_UP_PER_MINUTE` per minute up to min(concurrency, 1,000). One concurrent
batch moves `batch_items / (task_seconds + overhead_s)` items per second (the pushes of a
batch run concurrently, so a batch lasts about one task plus the forwarder's own time).
Throughput is also capped by the ledger: its hottest item takes `w` writes per 1,000
completions, and one item takes at most 1,000 write units per second, so the ceiling is
1,000 x 1,000 / w items/s. The wall time is when the integral of
min(ramp(t) x per-batch rate, ceiling) reaches N.

**Cost.** Measured usage per item x N, plus the per-run usage (report files, the email),
plus Lambda GB-seconds: forwarder batches x (task_seconds + overhead_s) x memory, and the
splitter's measured seconds per item x memory. The splitter's self-continuations follow
from its measured rate and the 15-minute limit minus its margin.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from microprocess.cli.pricing import (
    SERVICES,
    PriceTable,
    Usage,
    cost_by_service,
    lambda_gb_seconds,
    load_price_table,
)
from microprocess.declarations import JobDeclaration, JobRegistry, UnknownJobError, get_declarations

MEASURED_COSTS_PATH = Path(__file__).with_name("measured_costs.json")

#: Concurrent batches an SQS event source starts with.
INITIAL_CONCURRENCY = 5
#: Concurrent batches an SQS event source adds per minute while messages wait.
SCALE_UP_PER_MINUTE = 300
#: The most concurrent batches one SQS event source runs.
MAX_EVENT_SOURCE_CONCURRENCY = 1000
#: Write units one DynamoDB item (partition) takes per second.
PARTITION_WRITE_UNITS_PER_S = 1000.0


class PlanError(ValueError):
    """A plan that cannot be made; the message names the input and the fix."""


@dataclass(frozen=True)
class MeasuredCosts:
    """What `make bench` measured, as the planner uses it.

    Attributes:
        measured_at: when (ISO 8601).
        items: tasks in the measured run.
        cores: CPU cores of the machine it ran on.
        per_item: usage that grows with the items (queue requests, forwarder invocations,
            ledger and source units), per item.
        per_run: usage paid once per run (report files, the email), per run.
        forwarder_memory_mb: the forwarder's memory.
        batches_per_item: forwarder invocations per item (1 / mean batch size).
        forwarder_overhead_s: mean forwarder invocation time beyond the service's latency, s.
        splitter_memory_mb: the splitter's memory.
        splitter_items_per_s: items the splitter enqueued per second.
        splitter_seconds_per_item: splitter invocation time per item, s.
        splitter_timeout_s: the splitter's Lambda timeout, s.
        splitter_margin_s: remaining time under which it continues itself, s.
        hottest_item_writes_per_1000: write units on the ledger's hottest item per 1,000 completions.
        hottest_partition_key_writes_per_1000: the same for the hottest partition key value.
    """

    measured_at: str
    items: int
    cores: int
    per_item: Usage
    per_run: Usage
    forwarder_memory_mb: int
    batches_per_item: float
    forwarder_overhead_s: float
    splitter_memory_mb: int
    splitter_items_per_s: float
    splitter_seconds_per_item: float
    splitter_timeout_s: float
    splitter_margin_s: float
    hottest_item_writes_per_1000: float
    hottest_partition_key_writes_per_1000: float

    @property
    def ledger_ceiling_items_per_s(self) -> float:
        return ceiling_items_per_s(self.hottest_item_writes_per_1000)

    @property
    def batch_items(self) -> float:
        return 1.0 / self.batches_per_item

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasuredCosts:
        try:
            f, s, led = data["forwarder"], data["splitter"], data["ledger"]
            return cls(
                measured_at=str(data["measured_at"]),
                items=int(data["items"]),
                cores=int(data["cores"]),
                per_item=Usage.from_dict(data["per_item"]),
                per_run=Usage.from_dict(data["per_run"]),
                forwarder_memory_mb=int(f["memory_mb"]),
                batches_per_item=float(f["batches_per_item"]),
                forwarder_overhead_s=float(f["overhead_s_per_batch"]),
                splitter_memory_mb=int(s["memory_mb"]),
                splitter_items_per_s=float(s["items_per_s"]),
                splitter_seconds_per_item=float(s["seconds_per_item"]),
                splitter_timeout_s=float(s["timeout_s"]),
                splitter_margin_s=float(s["margin_s"]),
                hottest_item_writes_per_1000=float(led["hottest_item_write_units_per_1000"]),
                hottest_partition_key_writes_per_1000=float(led["hottest_partition_key_write_units_per_1000"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"the measured costs are incomplete ({exc}); refresh them with `make bench`") from None


def load_measured_costs(path: Path | None = None) -> MeasuredCosts:
    """The committed measurements (`MEASURED_COSTS_PATH` unless told otherwise)."""
    path = path or MEASURED_COSTS_PATH
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path} is missing; `make bench` measures it") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path} is not JSON ({exc}); refresh it with `make bench`") from None
    return MeasuredCosts.from_dict(data)


# ----------------------------------------------------------------------------- the model


def ceiling_items_per_s(
    hottest_writes_per_1000: float, per_item_write_units_per_s: float = PARTITION_WRITE_UNITS_PER_S
) -> float:
    """Completions per second at which the hottest ledger item reaches its write limit."""
    if hottest_writes_per_1000 <= 0:
        return math.inf
    return per_item_write_units_per_s * 1000.0 / hottest_writes_per_1000


@dataclass(frozen=True)
class WallTime:
    """The processing time of a run.

    Attributes:
        seconds: from the first batch to the last completion.
        ramp_seconds: until the throughput stops growing.
        peak_items_per_s: the throughput after the ramp.
        bottleneck: `concurrency` (the event source's cap) or `ledger` (the hottest item).
    """

    seconds: float
    ramp_seconds: float
    peak_items_per_s: float
    bottleneck: str


def wall_time(
    items: int,
    *,
    concurrency: int,
    items_per_s_per_batch: float,
    ceiling_items_per_s: float,
    initial: int = INITIAL_CONCURRENCY,
    per_minute: int = SCALE_UP_PER_MINUTE,
) -> WallTime:
    """Time to complete `items` when concurrency ramps linearly from `initial` by `per_minute`
    up to `concurrency`, each concurrent batch moving `items_per_s_per_batch`, all capped
    at `ceiling_items_per_s`."""
    if items <= 0:
        raise PlanError(f"items must be at least 1, got {items}")
    if items_per_s_per_batch <= 0:
        raise PlanError("the per-batch rate must be positive")
    k = items_per_s_per_batch
    a = per_minute / 60.0
    c0 = min(initial, concurrency)
    peak = min(k * concurrency, ceiling_items_per_s)
    bottleneck = "ledger" if ceiling_items_per_s < k * concurrency else "concurrency"
    # The ramp ends when k * c(t) reaches the peak.
    t1 = max(0.0, (peak / k - c0) / a)
    ramp_items = k * (c0 * t1 + a * t1 * t1 / 2)
    if peak <= k * c0:  # capped from the first second
        return WallTime(items / peak, 0.0, peak, bottleneck)
    if items <= ramp_items:
        t = (-c0 + math.sqrt(c0 * c0 + 2 * a * items / k)) / a
        return WallTime(t, t, k * (c0 + a * t), bottleneck)
    return WallTime(t1 + (items - ramp_items) / peak, t1, peak, bottleneck)


def splitter_invocations(items: int, *, items_per_s: float, timeout_s: float, margin_s: float) -> tuple[int, int]:
    """(invocations, self-continuations) of the splitter for `items` at `items_per_s`: each
    invocation works `timeout_s - margin_s` seconds, then continues itself."""
    usable = timeout_s - margin_s
    if usable <= 0 or items_per_s <= 0:
        raise PlanError("the splitter needs a timeout above its margin and a positive rate")
    invocations = max(1, math.ceil(items / (usable * items_per_s)))
    return invocations, invocations - 1


@dataclass(frozen=True)
class Plan:
    """A predicted run on AWS."""

    job: str
    items: int
    concurrency: int
    task_seconds: float
    batch_items: float
    wall: WallTime
    split_seconds: float
    splitter_invocations: int
    splitter_continuations: int
    usage: Usage
    cost: dict[str, float]
    measured_at: str
    prices_as_of: str

    @property
    def total_usd(self) -> float:
        return sum(self.cost.values())

    @property
    def usd_per_million(self) -> float:
        return self.total_usd * 1e6 / self.items

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "items": self.items,
            "concurrency": self.concurrency,
            "task_seconds": self.task_seconds,
            "batch_items": round(self.batch_items, 3),
            "wall_seconds": round(self.wall.seconds, 1),
            "wall_hours": round(self.wall.seconds / 3600, 3),
            "ramp_seconds": round(self.wall.ramp_seconds, 1),
            "peak_items_per_s": round(self.wall.peak_items_per_s, 1),
            "bottleneck": self.wall.bottleneck,
            "split_seconds_at_measured_rate": round(self.split_seconds, 1),
            "splitter_invocations": self.splitter_invocations,
            "splitter_continuations": self.splitter_continuations,
            "cost_usd": {k: round(v, 4) for k, v in self.cost.items()},
            "total_usd": round(self.total_usd, 4),
            "usd_per_million": round(self.usd_per_million, 4),
            "usage": {k: round(v, 3) for k, v in self.usage.as_dict().items()},
            "measured_at": self.measured_at,
            "prices_as_of": self.prices_as_of,
        }


def plan_run(
    job: JobDeclaration,
    items: int,
    *,
    measured: MeasuredCosts,
    prices: PriceTable,
    concurrency: int | None = None,
    task_seconds: float = 0.5,
) -> Plan:
    """Predict the wall time and cost of a run of `items` items of `job` on AWS."""
    if items <= 0:
        raise PlanError(f"--items must be at least 1, got {items}")
    if task_seconds < 0:
        raise PlanError(f"--task-seconds must be 0 or more, got {task_seconds}")
    c = job.max_concurrency if concurrency is None else concurrency
    if not 2 <= c <= MAX_EVENT_SOURCE_CONCURRENCY:
        raise PlanError(
            f"--concurrency must be 2..{MAX_EVENT_SOURCE_CONCURRENCY} (an SQS event source's maximum "
            f"concurrency), got {c}"
        )
    batch_items = min(measured.batch_items, float(job.batch_size))
    batch_seconds = task_seconds + measured.forwarder_overhead_s
    if batch_seconds <= 0:
        raise PlanError("a forwarder batch must take some time: give --task-seconds above 0 or refresh `make bench`")
    wall = wall_time(
        items,
        concurrency=c,
        items_per_s_per_batch=batch_items / batch_seconds,
        ceiling_items_per_s=measured.ledger_ceiling_items_per_s,
    )
    invocations, continuations = splitter_invocations(
        items,
        items_per_s=measured.splitter_items_per_s,
        timeout_s=measured.splitter_timeout_s,
        margin_s=measured.splitter_margin_s,
    )
    batches = items / batch_items
    lambdas = Usage(
        lambda_requests=invocations,
        lambda_gb_seconds=lambda_gb_seconds(batches, batch_seconds, measured.forwarder_memory_mb)
        + lambda_gb_seconds(1, items * measured.splitter_seconds_per_item, measured.splitter_memory_mb),
    )
    # per_item.lambda_requests holds the forwarder's invocations per item at the measured batch size.
    per_item = Usage(**{**measured.per_item.as_dict(), "lambda_requests": 1.0 / batch_items})
    usage = per_item.scaled(items) + measured.per_run + lambdas
    return Plan(
        job=job.name,
        items=items,
        concurrency=c,
        task_seconds=task_seconds,
        batch_items=batch_items,
        wall=wall,
        split_seconds=items / measured.splitter_items_per_s,
        splitter_invocations=invocations,
        splitter_continuations=continuations,
        usage=usage,
        cost=cost_by_service(usage, prices),
        measured_at=measured.measured_at,
        prices_as_of=prices.as_of,
    )


def plan_job(
    job_name: str,
    items: int,
    *,
    concurrency: int | None = None,
    task_seconds: float = 0.5,
    jobs: JobRegistry | None = None,
    measured: MeasuredCosts | None = None,
    prices: PriceTable | None = None,
) -> Plan:
    """`plan_run` for a declared job, with the committed measurements and prices by default.

    Raises `UnknownJobError` for an undeclared job and `PlanError` for bad numbers.
    """
    job = (jobs or get_declarations().jobs).get(job_name)
    return plan_run(
        job,
        items,
        measured=measured or load_measured_costs(),
        prices=prices or load_price_table(),
        concurrency=concurrency,
        task_seconds=task_seconds,
    )


# ----------------------------------------------------------------------------- the command


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def render(plan: Plan, measured: MeasuredCosts) -> list[str]:
    """The plan as lines of text."""
    w = plan.wall
    lines = [
        f"plan for {plan.items:,} items of {plan.job} on AWS "
        f"(concurrency {plan.concurrency}, {plan.task_seconds:g} s per task, {plan.batch_items:.1f} items per batch)",
        f"  wall time          {_duration(w.seconds)}  (ramp {_duration(w.ramp_seconds)}, then "
        f"{w.peak_items_per_s:,.0f} items/s, bound by {w.bottleneck})",
        f"  ledger ceiling     {measured.ledger_ceiling_items_per_s:,.0f} items/s "
        f"(hottest item {measured.hottest_item_writes_per_1000:.1f} write units per 1,000 completions)",
        f"  splitter           {plan.splitter_invocations:,} invocations ({plan.splitter_continuations:,} "
        f"self-continuations) at the measured {measured.splitter_items_per_s:,.0f} items/s "
        f"({_duration(plan.split_seconds)} of splitting)",
        "  cost (USD)",
    ]
    for service in SERVICES:
        lines.append(f"    {service:<10} {plan.cost[service]:>12,.2f}")
    lines.append(f"    {'total':<10} {plan.total_usd:>12,.2f}   ({plan.usd_per_million:,.3f} per million items)")
    lines.append(
        f"  measured {measured.measured_at} on {measured.cores} cores (make bench); prices as of {plan.prices_as_of}"
    )
    pk_ceiling = ceiling_items_per_s(measured.hottest_partition_key_writes_per_1000)
    if w.peak_items_per_s > pk_ceiling:
        lines.append(
            f"  warning: the hottest ledger partition key takes {measured.hottest_partition_key_writes_per_1000:.1f} "
            f"write units per 1,000 completions: above {pk_ceiling:,.0f} items/s it relies on DynamoDB "
            "splitting that key's items across partitions"
        )
    if plan.split_seconds > w.seconds:
        lines.append(
            "  note: at the rate measured on the local emulator the split would take longer than the processing; "
            "on AWS it is not measured"
        )
    return lines


def register(app: typer.Typer) -> None:
    """Add the `plan` command to a Typer app (the CLI wires it with one line)."""

    @app.command("plan")
    def plan_command(
        job: Annotated[str, typer.Argument(help="A declared job (see microprocess.toml).")],
        items: Annotated[int, typer.Option("--items", help="Items in the run.")],
        concurrency: Annotated[
            int | None,
            typer.Option("--concurrency", help="The event source's maximum concurrency (default: the job's)."),
        ] = None,
        task_seconds: Annotated[
            float, typer.Option("--task-seconds", help="The service's time per task, seconds.")
        ] = 0.5,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    ) -> None:
        """Predict a run's wall time and cost on AWS from the measured request counts and list prices."""
        try:
            measured = load_measured_costs()
            plan = plan_job(job, items, concurrency=concurrency, task_seconds=task_seconds, measured=measured)
        except (UnknownJobError, PlanError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            typer.echo(json.dumps(plan.as_dict()))
            return
        for line in render(plan, measured):
            typer.echo(line)
