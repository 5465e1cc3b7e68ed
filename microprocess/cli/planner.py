"""`microprocess plan`: how long a run of N items takes on AWS, and what it costs.

Pure functions over four inputs:

* the job declaration (`microprocess.declarations`): batch size, the event source's
  concurrency cap, the source's scan segments, the ledger shards;
* the list prices (`pricing_table.json`, dated, with their source);
* what `make bench` measured (`measured_costs.json`): AWS requests and DynamoDB units per
  item, forwarder invocations per item and the forwarder's own CPU time per batch, the
  splitter's own CPU time per item, the report's bytes and build time per row, the
  ledger's hottest item;
* stated assumptions (`Assumptions`): what the bench cannot measure on a laptop, such as
  the latency of an AWS call from inside AWS. Every plan prints them.

**Wall time**: `microprocess.cli.timeline` (the split as it runs, the event source, the ledger).

**Cost** is what the run bills on AWS, not the laptop's time: measured usage per item x N;
per run, the report's S3 requests at N rows (multipart parts) and the email; Lambda time:
forwarder batches x (task seconds + the AWS calls' latency + the measured CPU time at the
function's vCPU share), the splitter's segments x their modelled working time, the
reducer's time to build the report at N rows, and the sweeps during the run.

**The split on AWS** is modelled, not the laptop's rate (which waits on a CPU-starved
emulator): per page of `source.page_size` items, the splitter's measured CPU time per item at
its vCPU share, the page's sequential AWS calls (`Assumptions.splitter_aws_s_per_page`) and its
SendMessageBatch calls, `SEND_THREADS` in flight (`Assumptions.sqs_send_batch_s` each).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from microprocess.cli.pricing import (
    PriceTable,
    Usage,
    cost_by_service,
    lambda_gb_seconds,
    lambda_vcpu_share,
    load_price_table,
)
from microprocess.cli.timeline import (
    MAX_EVENT_SOURCE_CONCURRENCY,
    PlanError,
    Processing,
    Split,
    WallTime,
    ceiling_items_per_s,
    wall_time,
)
from microprocess.control.share import job_capacity_batches
from microprocess.declarations import JobDeclaration, JobRegistry, ServiceDeclaration, SourceKind, get_declarations
from microprocess.pipeline.queue import SEND_THREADS, SQS_BATCH

__all__ = [
    "Assumptions",
    "MeasuredCosts",
    "Plan",
    "PlanError",
    "Processing",
    "Split",
    "WallTime",
    "ceiling_items_per_s",
    "load_measured_costs",
    "multipart_requests",
    "plan_job",
    "plan_run",
    "report_s3_usage",
    "splitter_item_seconds",
    "wall_time",
]

MEASURED_COSTS_PATH = Path(__file__).with_name("measured_costs.json")

#: The most scan segments a job may declare (`source.segments`).
MAX_DECLARED_SEGMENTS = 64
#: Files per reduce part besides its CSV (its statistics JSON and its failures CSV), and the
#: finalize's files besides report.csv (failures.csv, summary.json, report.html).
PART_SIDE_FILES = 2
FINALIZE_SIDE_FILES = 3


@dataclass(frozen=True)
class Assumptions:
    """What the plan takes as given because a laptop cannot measure it (printed with every plan).

    Attributes:
        aws_wait_s_per_batch: the forwarder's wait on AWS per batch beyond the service: two
            DynamoDB round trips (the batch's task records in one BatchExecuteStatement, then
            one counter update) at about 10 ms each from inside the region, s.
        continuation_gap_s: from a splitter invocation's asynchronous self-invoke to the new
            invocation's first page (invoke + cold start), s.
        sqs_send_batch_s: one SendMessageBatch call of 10 messages from inside the region, s.
        splitter_aws_s_per_page: the splitter's sequential AWS calls per page besides its sends:
            the queue depth check (SQS), the kept-page check and write (S3), the source page
            (DynamoDB Scan; a source reads up to 4 pages per Scan, so one per page is on the
            safe side) and accounting the page (DynamoDB), about 20 ms each, s.
        sweeper_seconds_per_sweep: one sweep's duration (reads the active runs and their
            counters; the bench's runs are shorter than one sweep interval), s.
        sweep_interval_s: how often the sweeper runs (`infra.sweeper.RATE`), s.
        reducer_memory_mb: the reducer function's memory (`infra.forwarder`), MB.
        sweeper_memory_mb: the sweeper function's memory (`infra.lambda_function`), MB.
    """

    aws_wait_s_per_batch: float = 0.02
    continuation_gap_s: float = 1.0
    sqs_send_batch_s: float = 0.02
    splitter_aws_s_per_page: float = 0.1
    sweeper_seconds_per_sweep: float = 2.0
    sweep_interval_s: float = 300.0
    reducer_memory_mb: int = 256
    sweeper_memory_mb: int = 256

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MeasuredCosts:
    """What `make bench` measured, as the planner uses it.

    Attributes:
        measured_at: when (ISO 8601).
        items: tasks in the measured run.
        cores: CPU cores of the machine it ran on.
        per_item: usage that grows with the items (queue requests, forwarder invocations,
            ledger and source units, log bytes), per item.
        per_run: usage paid once per run (the report's files, the email), per run.
        forwarder_memory_mb: the forwarder's memory.
        batches_per_item: forwarder invocations per item (1 / mean batch size).
        forwarder_cpu_s_per_batch: CPU seconds the forwarder process spent per batch
            (`time.process_time`, all its threads; not the time it waited on the emulator).
        splitter_memory_mb: the splitter's memory.
        splitter_cpu_s_per_item: CPU seconds the splitter process spent per item enqueued (its
            worker processes' CPU time; not the time it waited on the emulator).
        splitter_items_per_s: items the splitter enqueued per second locally, all segments
            together (the bench's P6; the plan models the split on AWS instead).
        splitter_segments: scan segments the measured split ran in parallel.
        splitter_timeout_s: the splitter's Lambda timeout, s.
        splitter_margin_s: remaining time under which it continues itself, s.
        report_bytes_per_row: bytes of report.csv per task.
        report_seconds_per_row: time to build the report (parts + finalize) per task, s.
        report_part_bytes: the multipart part size of the report files, bytes.
        report_rows_measured: the rows of the report that `report_*_per_row` were measured on.
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
    forwarder_cpu_s_per_batch: float
    splitter_memory_mb: int
    splitter_cpu_s_per_item: float
    splitter_items_per_s: float
    splitter_segments: int
    splitter_timeout_s: float
    splitter_margin_s: float
    report_bytes_per_row: float
    report_seconds_per_row: float
    report_part_bytes: int
    report_rows_measured: int
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
            f, s, r, led = data["forwarder"], data["splitter"], data["report"], data["ledger"]
            measured = cls(
                measured_at=str(data["measured_at"]),
                items=int(data["items"]),
                cores=int(data["cores"]),
                per_item=Usage.from_dict(data["per_item"]),
                per_run=Usage.from_dict(data["per_run"]),
                forwarder_memory_mb=int(f["memory_mb"]),
                batches_per_item=float(f["batches_per_item"]),
                forwarder_cpu_s_per_batch=float(f["cpu_s_per_batch"]),
                splitter_memory_mb=int(s["memory_mb"]),
                splitter_cpu_s_per_item=float(s["cpu_s_per_item"]),
                splitter_items_per_s=float(s["items_per_s"]),
                splitter_segments=int(s["segments"]),
                splitter_timeout_s=float(s["timeout_s"]),
                splitter_margin_s=float(s["margin_s"]),
                report_bytes_per_row=float(r["bytes_per_row"]),
                report_seconds_per_row=float(r["seconds_per_row"]),
                report_part_bytes=int(r["part_bytes"]),
                report_rows_measured=int(r["rows"]),
                hottest_item_writes_per_1000=float(led["hottest_item_write_units_per_1000"]),
                hottest_partition_key_writes_per_1000=float(led["hottest_partition_key_write_units_per_1000"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"the measured costs are incomplete ({exc!r}); refresh them with `make bench`") from None
        for name in (
            "batches_per_item",
            "splitter_cpu_s_per_item",
            "splitter_items_per_s",
            "splitter_segments",
            "report_part_bytes",
        ):
            if getattr(measured, name) <= 0:
                raise PlanError(f"the measured {name} must be positive; refresh it with `make bench`")
        return measured


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


# ----------------------------------------------------------------------------- the report


def multipart_requests(size_bytes: float, part_bytes: int) -> int:
    """S3 PUT-class requests to write one object: one PutObject up to one part, else
    CreateMultipartUpload + one UploadPart per part + CompleteMultipartUpload."""
    if size_bytes <= part_bytes:
        return 1
    return math.ceil(size_bytes / part_bytes) + 2


def report_s3_usage(rows: int, shards: int, *, bytes_per_row: float, part_bytes: int) -> Usage:
    """S3 requests of one run's report: per shard a part CSV (multipart when large), its
    statistics and failures; the finalize reads the three files of every part (one streamed
    GET each) and writes report.csv (multipart when large) and three small files."""
    part_size = rows / shards * bytes_per_row
    puts = shards * (multipart_requests(part_size, part_bytes) + PART_SIDE_FILES)
    puts += multipart_requests(rows * bytes_per_row, part_bytes) + FINALIZE_SIDE_FILES
    return Usage(s3_put_requests=puts, s3_get_requests=shards * (1 + PART_SIDE_FILES))


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class LambdaTime:
    """Lambda invocations and GB-seconds by function."""

    invocations: dict[str, float]
    gb_seconds: dict[str, float]

    def usage(self) -> Usage:
        return Usage(lambda_requests=sum(self.invocations.values()), lambda_gb_seconds=sum(self.gb_seconds.values()))


@dataclass(frozen=True)
class Plan:
    """A predicted run on AWS."""

    job: str
    items: int
    concurrency: int
    task_seconds: float
    batch_items: float
    batch_seconds: float
    forwarder_cpu_seconds: float
    page_size: int
    declared_segments: int
    split: Split
    segments_to_keep_up: int
    wall: WallTime
    lambdas: LambdaTime
    usage: Usage
    cost: dict[str, float]
    assumptions: Assumptions
    measured_at: str
    prices_as_of: str
    lambda_architecture: str
    notes: list[str] = field(default_factory=list)

    @property
    def total_usd(self) -> float:
        return sum(self.cost.values())

    @property
    def usd_per_million(self) -> float:
        return self.total_usd * 1e6 / self.items

    @property
    def split_keeps_up(self) -> bool:
        return self.split.segments >= self.segments_to_keep_up

    def as_dict(self) -> dict[str, Any]:
        s, w = self.split, self.wall
        return {
            "job": self.job,
            "items": self.items,
            "concurrency": self.concurrency,
            "task_seconds": self.task_seconds,
            "batch_items": round(self.batch_items, 3),
            "batch_seconds": round(self.batch_seconds, 4),
            "wall_seconds": round(w.seconds, 1),
            "wall_hours": round(w.seconds / 3600, 3),
            "bottleneck": w.bottleneck,
            "ramp_seconds": round(w.ramp_seconds, 1),
            "peak_items_per_s": round(w.peak_items_per_s, 1),
            "split": {
                "segments": s.segments,
                "declared_segments": self.declared_segments,
                "items_per_s_per_segment": round(s.items_per_s_per_segment, 1),
                "page_size": self.page_size,
                "items_per_s": round(s.items_per_s, 1),
                "seconds": round(s.end, 1),
                "invocations": s.invocations,
                "invocations_per_segment": s.invocations_per_segment,
                "self_continuations": s.continuations,
                "keeps_up": self.split_keeps_up,
                "segments_to_keep_up": self.segments_to_keep_up,
            },
            "lambda": {
                "invocations": {k: round(v, 1) for k, v in self.lambdas.invocations.items()},
                "gb_seconds": {k: round(v, 1) for k, v in self.lambdas.gb_seconds.items()},
            },
            "cost_usd": {k: round(v, 4) for k, v in self.cost.items()},
            "total_usd": round(self.total_usd, 4),
            "usd_per_million": round(self.usd_per_million, 4),
            "usage": {k: round(v, 3) for k, v in self.usage.as_dict().items()},
            "assumptions": self.assumptions.as_dict(),
            "notes": self.notes,
            "measured_at": self.measured_at,
            "prices_as_of": self.prices_as_of,
            "lambda_architecture": self.lambda_architecture,
        }


def forwarder_batch_seconds(task_seconds: float, measured: MeasuredCosts, assumptions: Assumptions) -> float:
    """One forwarder batch on AWS: the service's latency (the batch's pushes run concurrently),
    the wait on the ledger, and the measured CPU time at the function's share of a vCPU."""
    cpu = measured.forwarder_cpu_s_per_batch / lambda_vcpu_share(measured.forwarder_memory_mb)
    return task_seconds + assumptions.aws_wait_s_per_batch + cpu


def splitter_item_seconds(page_size: int, measured: MeasuredCosts, assumptions: Assumptions) -> float:
    """One item of the split on AWS, per segment: the splitter's measured CPU time per item at the
    function's share of a vCPU, plus its page's sequential AWS calls and its SendMessageBatch calls
    (`SEND_THREADS` in flight) spread over the page's items."""
    if page_size < 1:
        raise PlanError(f"the page size must be at least 1, got {page_size}")
    cpu = measured.splitter_cpu_s_per_item / lambda_vcpu_share(measured.splitter_memory_mb)
    send_rounds = math.ceil(math.ceil(page_size / SQS_BATCH) / SEND_THREADS)
    waits = assumptions.splitter_aws_s_per_page + send_rounds * assumptions.sqs_send_batch_s
    return cpu + waits / page_size


def plan_run(
    job: JobDeclaration,
    items: int,
    *,
    measured: MeasuredCosts,
    prices: PriceTable,
    concurrency: int | None = None,
    task_seconds: float = 0.5,
    segments: int | None = None,
    assumptions: Assumptions | None = None,
    service: ServiceDeclaration | None = None,
) -> Plan:
    """Predict the wall time and cost of a run of `items` items of `job` on AWS (at most its
    `service`'s declared capacity: `share.job_capacity_batches`)."""
    a = assumptions or Assumptions()
    if items <= 0:
        raise PlanError(f"--items must be at least 1, got {items}")
    if task_seconds < 0:
        raise PlanError(f"--task-seconds must be 0 or more, got {task_seconds}")
    c = job.max_concurrency if concurrency is None else concurrency
    c = min(c, job_capacity_batches(service, job, task_seconds) or c)
    if not 2 <= c <= MAX_EVENT_SOURCE_CONCURRENCY:
        raise PlanError(
            f"--concurrency must be 2..{MAX_EVENT_SOURCE_CONCURRENCY} (an SQS event source's maximum "
            f"concurrency), got {c}"
        )
    segmented = job.source.kind is SourceKind.DYNAMODB
    declared = job.source.segments if segmented else 1
    seg = declared if segments is None else segments
    if not 1 <= seg <= MAX_DECLARED_SEGMENTS:
        raise PlanError(f"--segments must be 1..{MAX_DECLARED_SEGMENTS} (source.segments), got {seg}")
    if seg > 1 and not segmented:
        raise PlanError(f"--segments: job '{job.name}' reads a {job.source.kind} source, which has one segment")

    batch_items = min(measured.batch_items, float(job.batch_size))
    batch_seconds = forwarder_batch_seconds(task_seconds, measured, a)
    processing = Processing(
        items_per_s_per_batch=batch_items / batch_seconds,
        concurrency=c,
        ceiling_items_per_s=measured.ledger_ceiling_items_per_s,
    )
    per_segment = 1.0 / splitter_item_seconds(job.source.page_size, measured, a)
    split = Split(
        items=items,
        segments=seg,
        items_per_s_per_segment=per_segment,
        usable_s=measured.splitter_timeout_s - measured.splitter_margin_s,
        gap_s=a.continuation_gap_s,
    )
    wall = wall_time(split, processing, batch_seconds)
    to_keep_up = math.ceil(processing.peak_items_per_s / per_segment)

    batches = items / batch_items
    sweeps = math.ceil(wall.seconds / a.sweep_interval_s)
    reduce_invocations = job.shard_count + 1  # one per reduce part, one finalize
    # The reducer waits while each part and the finalize are built (the service's time, or its own
    # with the platform's reduce), plus its own calls and CPU per push, as a forwarder batch.
    reduce_seconds = items * measured.report_seconds_per_row + reduce_invocations * (batch_seconds - task_seconds)
    lambdas = LambdaTime(
        invocations={
            "forwarder": batches,
            "splitter": split.invocations,
            "reducer": reduce_invocations,
            "sweeper": sweeps,
        },
        gb_seconds={
            "forwarder": lambda_gb_seconds(batches, batch_seconds, measured.forwarder_memory_mb),
            "splitter": lambda_gb_seconds(seg, split.working_seconds_per_segment, measured.splitter_memory_mb),
            "reducer": lambda_gb_seconds(1, reduce_seconds, a.reducer_memory_mb),
            "sweeper": lambda_gb_seconds(sweeps, a.sweeper_seconds_per_sweep, a.sweeper_memory_mb),
        },
    )
    # per_item.lambda_requests is the measured forwarder (and dead-letter) invocations: replaced
    # by the modelled ones; the report's S3 requests are modelled at N rows.
    per_item = Usage(**{**measured.per_item.as_dict(), "lambda_requests": 0.0})
    per_run = Usage(**{**measured.per_run.as_dict(), "s3_put_requests": 0.0, "s3_get_requests": 0.0})
    report = report_s3_usage(
        items, job.shard_count, bytes_per_row=measured.report_bytes_per_row, part_bytes=measured.report_part_bytes
    )
    usage = per_item.scaled(items) + per_run + report + lambdas.usage()
    return Plan(
        job=job.name,
        items=items,
        concurrency=c,
        task_seconds=task_seconds,
        batch_items=batch_items,
        batch_seconds=batch_seconds,
        forwarder_cpu_seconds=measured.forwarder_cpu_s_per_batch / lambda_vcpu_share(measured.forwarder_memory_mb),
        page_size=job.source.page_size,
        declared_segments=declared,
        split=split,
        segments_to_keep_up=to_keep_up,
        wall=wall,
        lambdas=lambdas,
        usage=usage,
        cost=cost_by_service(usage, prices),
        assumptions=a,
        measured_at=measured.measured_at,
        prices_as_of=prices.as_of,
        lambda_architecture=prices.lambda_architecture,
        notes=_notes(job, split, processing, to_keep_up, segmented, measured),
    )


def _notes(
    job: JobDeclaration, split: Split, processing: Processing, to_keep_up: int, segmented: bool, m: MeasuredCosts
) -> list[str]:
    notes: list[str] = []
    if split.segments < to_keep_up:
        need = f"{split.items_per_s:,.0f} items/s enqueued against {processing.peak_items_per_s:,.0f} processed"
        if not segmented:
            notes.append(f"the split cannot keep up ({need}); a {job.source.kind} source is read in one segment")
        elif to_keep_up > MAX_DECLARED_SEGMENTS:
            notes.append(
                f"the split cannot keep up ({need}); it would need {to_keep_up} segments, above the "
                f"{MAX_DECLARED_SEGMENTS} a declaration allows: lower the concurrency or speed up the splitter"
            )
        else:
            notes.append(
                f"the split cannot keep up ({need}): declare source.segments = {to_keep_up} (or more) for "
                f"'{job.name}' in microprocess.toml"
            )
        notes.append(
            "while the split is the bound the queue stays nearly empty: batches may hold fewer items than the "
            f"{m.batch_items:.1f} measured, so the forwarder's invocations (and their cost) may be higher than shown"
        )
    pk_ceiling = ceiling_items_per_s(m.hottest_partition_key_writes_per_1000)
    if processing.peak_items_per_s > pk_ceiling:
        notes.append(
            f"the hottest ledger partition key takes {m.hottest_partition_key_writes_per_1000:.1f} write units "
            f"per 1,000 completions: above {pk_ceiling:,.0f} items/s it relies on DynamoDB splitting that "
            "key's items across partitions"
        )
    return notes


def plan_job(
    job_name: str,
    items: int,
    *,
    concurrency: int | None = None,
    task_seconds: float = 0.5,
    segments: int | None = None,
    jobs: JobRegistry | None = None,
    measured: MeasuredCosts | None = None,
    prices: PriceTable | None = None,
) -> Plan:
    """`plan_run` for a declared job, with the committed measurements and prices by default.

    Raises `UnknownJobError` for an undeclared job and `PlanError` for bad numbers.
    """
    declared = get_declarations() if jobs is None else None
    job = (jobs or declared.jobs).get(job_name)  # type: ignore[union-attr]
    services = declared.services if declared is not None else None
    return plan_run(
        job,
        items,
        measured=measured or load_measured_costs(),
        prices=prices or load_price_table(),
        concurrency=concurrency,
        task_seconds=task_seconds,
        segments=segments,
        service=services.get(job.service) if services is not None and job.service in services else None,
    )
