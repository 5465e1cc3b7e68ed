"""`microprocess plan`: a run's predicted wall time and cost on AWS, as text or JSON (the model: `planner`)."""

# No `from __future__ import annotations`: Typer reads the command's annotations at run time.
import json
from typing import Annotated

import typer

from microprocess.cli.planner import MeasuredCosts, Plan, PlanError, load_measured_costs, plan_job
from microprocess.cli.pricing import SERVICES
from microprocess.cli.timeline import INITIAL_CONCURRENCY, SCALE_UP_PER_MINUTE
from microprocess.declarations import UnknownJobError
from microprocess.pipeline.queue import SEND_THREADS


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


_BOUND_BY = {
    "split": "the split (the last item is processed one batch after it is enqueued)",
    "ramp": "the event source's ramp (the run ends while it still scales up)",
    "concurrency": "the event source's concurrency",
    "ledger": "the ledger's hottest item",
}


def render(plan: Plan, measured: MeasuredCosts) -> list[str]:
    """The plan as lines of text."""
    w, s, a = plan.wall, plan.split, plan.assumptions
    fanout = "1 fan-out + " if s.segments > 1 else ""
    lines = [
        f"plan for {plan.items:,} items of {plan.job} on AWS "
        f"(concurrency {plan.concurrency}, {plan.task_seconds:g} s per task, {plan.batch_items:.1f} items per batch)",
        f"  wall time          {_duration(w.seconds)}  until the last item is split and processed; "
        f"bound by {_BOUND_BY[w.bottleneck]}",
        f"  split              {_duration(s.end)}: "
        + (f"{s.segments} segments in parallel x " if s.segments > 1 else "1 segment at ")
        + f"{s.items_per_s_per_segment:,.0f} items/s = {s.items_per_s:,.0f} items/s; {s.invocations:,} invocations "
        f"({fanout}{s.segments} x {s.invocations_per_segment}, {s.continuations:,} self-continuations)",
        f"  processing         up to {w.peak_items_per_s:,.0f} items/s after a {_duration(w.ramp_seconds)} ramp "
        f"({INITIAL_CONCURRENCY} -> {plan.concurrency} concurrent batches, +{SCALE_UP_PER_MINUTE}/min); "
        f"a batch takes {plan.batch_seconds:.3f} s",
        f"  ledger ceiling     {measured.ledger_ceiling_items_per_s:,.0f} items/s "
        f"(hottest item {measured.hottest_item_writes_per_1000:.1f} write units per 1,000 completions)",
        f"  keeping up         {plan.segments_to_keep_up} segment{'s' if plan.segments_to_keep_up > 1 else ''} "
        f"would enqueue as fast as processing can go ({'met' if plan.split_keeps_up else 'not met'} "
        f"by {s.segments})",
        "  cost (USD)",
    ]
    for service in SERVICES:
        lines.append(f"    {service:<10} {plan.cost[service]:>12,.2f}")
    lines.append(f"    {'total':<10} {plan.total_usd:>12,.2f}   ({plan.usd_per_million:,.3f} per million items)")
    gbs = plan.lambdas.gb_seconds
    lines.append(
        "  lambda GB-s        "
        + ", ".join(f"{k} {v:,.0f}" for k, v in gbs.items())
        + f"; a forwarder batch = {plan.task_seconds:g} s task + {a.aws_wait_s_per_batch:g} s ledger calls + "
        f"{measured.forwarder_cpu_s_per_batch:g} CPU-s at {measured.forwarder_memory_mb} MB "
        f"({plan.forwarder_cpu_seconds:.3f} s)"
    )
    lines.append(
        f"  a split segment    {1000 / s.items_per_s_per_segment:.3f} ms per item = "
        f"{measured.splitter_cpu_s_per_item * 1000:.3f} CPU-ms at {measured.splitter_memory_mb} MB + a page's "
        f"AWS calls ({a.splitter_aws_s_per_page:g} s) and sends ({SEND_THREADS} in flight, "
        f"{a.sqs_send_batch_s:g} s each) over its {plan.page_size} items"
    )
    lines.append(
        f"  measured {measured.measured_at} on {measured.cores} cores (make bench; locally the split ran "
        f"{measured.splitter_items_per_s:,.0f} items/s over {measured.splitter_segments} segments, on a "
        f"CPU-starved emulator); prices as of {plan.prices_as_of}"
    )
    lines.append(
        f"  assumed: {a.aws_wait_s_per_batch:g} s of AWS calls per batch, {a.continuation_gap_s:g} s per "
        f"splitter continuation, a {a.sweeper_seconds_per_sweep:g} s sweep every {a.sweep_interval_s:g} s; "
        f"the CPU times measured here take as long on a Lambda {plan.lambda_architecture} vCPU (priced as "
        f"{plan.lambda_architecture})"
    )
    lines += [f"  note: {n}" for n in plan.notes]
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
        segments: Annotated[
            int | None,
            typer.Option("--segments", help="Scan segments the split runs in parallel (default: the job's)."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    ) -> None:
        """Predict a run's wall time and cost on AWS from the measured usage, list prices and stated assumptions."""
        try:
            measured = load_measured_costs()
            plan = plan_job(
                job, items, concurrency=concurrency, task_seconds=task_seconds, segments=segments, measured=measured
            )
        except (UnknownJobError, PlanError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            typer.echo(json.dumps(plan.as_dict()))
            return
        for line in render(plan, measured):
            typer.echo(line)
