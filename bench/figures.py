"""From what one bench run observed to the figures: pure functions, unit-tested.

`Observed` is everything the bench collected during the pipeline run (P1 a): the
counting proxy's tally, the event source's batches (from the emulator's log), the
functions' invocations and durations (their REPORT lines), the run's timestamps.
The functions here turn it into usage per item and per run (P2), the hot-key figures
(P3), the reduce latencies (P4), the splitter model (P6) and the measured-costs file
the planner reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from bench.counting import s3_price_class
from microprocess.cli.pricing import Usage
from microprocess.cli.timeline import Split

#: Callers whose S3 and SES requests are paid once per run (the reduce and the finalize).
PER_RUN_CALLERS = frozenset({"service"})
#: Callers paid per unit of time rather than per item (the scheduled sweeper).
PERIODIC_CALLERS = frozenset({"sweeper"})
#: The function roles whose invocations are counted per item.
PER_ITEM_FUNCTIONS = ("forwarder", "dead_letter")


@dataclass
class FunctionUse:
    """Invocations of one function during the run, from its REPORT lines.

    `cpu_s` is the CPU time the function's own worker processes spent during the run (utime +
    stime from /proc of each emulator worker whose AWS_LAMBDA_FUNCTION_NAME is the function,
    after minus before), as opposed to `duration_s`, which includes every wait on the
    emulator. 0.0: not recorded.
    """

    memory_mb: int
    invocations: int = 0
    duration_s: float = 0.0
    log_bytes: int = 0
    cpu_s: float = 0.0
    #: Seconds of `duration_s` spent waiting for the job's queue to drain (the splitter's
    #: backpressure gate, from its "waited ... s for its queue to drain" lines). Locally the
    #: depth limit is sized for the emulator, so the split waits on the processing; on AWS the
    #: limit is far higher, so this time is neither the splitter's speed nor billed there.
    waited_s: float = 0.0

    @property
    def working_s(self) -> float:
        """Duration without the backpressure waits."""
        return max(self.duration_s - self.waited_s, 0.0)

    @property
    def mean_s(self) -> float:
        return self.duration_s / self.invocations if self.invocations else 0.0


@dataclass
class EventSourceUse:
    """Batches the event source delivered to one function (from the emulator's log)."""

    batches: int = 0
    messages: int = 0
    failed_batches: int = 0  # the handler raised: the whole batch came back
    partial_failures: int = 0  # records the handler listed in batchItemFailures


@dataclass
class Observed:
    """What the bench saw during the pipeline run."""

    items: int
    proxy: dict[str, Any]
    functions: dict[str, FunctionUse]  # role -> use (forwarder, splitter, dead_letter, sweeper)
    event_sources: dict[str, EventSourceUse]  # role -> batches
    ledger_table: str
    batch_size: int
    max_concurrency: int
    splitter_timeout_s: float
    splitter_margin_s: float
    run: dict[str, Any] = field(default_factory=dict)  # created_at, split_finished_at, reduce_claimed_at, ...
    started_at: float = 0.0  # epoch seconds of the start request
    last_completion_at: float = 0.0  # epoch seconds of the last task record's finished_at
    email_at: float | None = None


def parse_time(value: str | None) -> float | None:
    """Epoch seconds of a ledger timestamp (`2026-11-01T02:00:00.000000Z`)."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def observed_to_dict(obs: Observed) -> dict[str, Any]:
    return asdict(obs)


def observed_from_dict(data: dict[str, Any]) -> Observed:
    """The inverse of `observed_to_dict` (the bench keeps its raw observations to recompute figures)."""
    fields_ = dict(data)
    fields_["functions"] = {k: FunctionUse(**v) for k, v in data["functions"].items()}
    fields_["event_sources"] = {k: EventSourceUse(**v) for k, v in data["event_sources"].items()}
    return Observed(**fields_)


# ----------------------------------------------------------------------------- P2


def _rows(proxy: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return list(proxy.get(key, []))


def usage_split(obs: Observed) -> tuple[Usage, Usage]:
    """(usage per item, usage per run) of the pattern, from the observed run.

    Per item: every queue request, the forwarder's and dead-letter handler's invocations
    and log bytes, the splitter's log bytes, the ledger's and the source's DynamoDB units.
    Per run: the reduce's and finalize's S3 requests, the email, and everything the
    scheduled sweeper did. The Lambda GB-seconds are left to the planner (they depend on
    the service's latency), as are the splitter's invocations (they depend on N).
    """
    n = obs.items
    item: dict[str, float] = {k: 0.0 for k in Usage().as_dict()}
    run: dict[str, float] = {k: 0.0 for k in Usage().as_dict()}

    def bucket(caller: str) -> dict[str, float]:
        return run if caller in PERIODIC_CALLERS else item

    for row in _rows(obs.proxy, "billed"):
        caller, service, op, value = row["caller"], row["service"], row["operation"], float(row["value"])
        if service == "sqs":
            bucket(caller)["sqs_requests"] += value
        elif service == "s3":
            cls = s3_price_class(op)
            if cls == "free":
                continue
            target = run if caller in PER_RUN_CALLERS | PERIODIC_CALLERS else item
            target["s3_put_requests" if cls == "put" else "s3_get_requests"] += value
        elif service == "lambda" and op == "Invoke":
            pass  # the splitter's self-continuations: modelled per N by the planner
    for row in _rows(obs.proxy, "write_units"):
        bucket(row["caller"])["dynamodb_write_units"] += float(row["value"])
    for row in _rows(obs.proxy, "read_units"):
        bucket(row["caller"])["dynamodb_read_units"] += float(row["value"])
    for row in _rows(obs.proxy, "emails"):
        run["ses_emails"] += float(row["value"])
    # The event source's own SQS calls (inside the emulator, not proxied): one ReceiveMessage per
    # batch (10 small messages are one 64 KB chunk) and one DeleteMessageBatch per batch with a success.
    for es in obs.event_sources.values():
        item["sqs_requests"] += es.batches + max(es.batches - es.failed_batches, 0)
    for role, use in obs.functions.items():
        target = run if role in PERIODIC_CALLERS else item
        if role in PER_ITEM_FUNCTIONS:
            target["lambda_requests"] += use.invocations
        target["logs_gb"] += use.log_bytes / 1e9
    per_item = Usage(**{k: v / n for k, v in item.items()})
    return per_item, Usage(**run)


def batches_per_item(obs: Observed) -> float:
    es = obs.event_sources.get("forwarder")
    if es and es.batches:
        return es.batches / obs.items
    return 1.0 / obs.batch_size


# ----------------------------------------------------------------------------- P3


def hot_key(obs: Observed) -> dict[str, Any]:
    """The ledger's hottest item and partition key during the run, per 1,000 completions."""
    n = obs.items

    def hottest(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ledger = [r for r in rows if r["table"] == obs.ledger_table]
        if not ledger:
            return {"key": None, "writes": 0, "write_units": 0.0}
        top = max(ledger, key=lambda r: (r["write_units"], r["writes"]))
        return {"key": top["key"], "writes": top["writes"], "write_units": top["write_units"]}

    item = hottest(_rows(obs.proxy, "hottest_items"))
    pk = hottest(_rows(obs.proxy, "hottest_partition_keys"))
    per_1000 = 1000.0 / n
    item_units = item["write_units"] * per_1000
    pk_units = pk["write_units"] * per_1000
    return {
        "hottest_item": item["key"],
        "hottest_item_writes_per_1000": round(item["writes"] * per_1000, 3),
        "hottest_item_write_units_per_1000": round(item_units, 3),
        "ceiling_items_per_s": round(1e6 / item_units) if item_units else None,
        "hottest_partition_key": pk["key"],
        "hottest_partition_key_writes_per_1000": round(pk["writes"] * per_1000, 3),
        "hottest_partition_key_write_units_per_1000": round(pk_units, 3),
        "partition_key_ceiling_items_per_s": round(1e6 / pk_units) if pk_units else None,
        "distinct_items_written": obs.proxy.get("distinct_items_written"),
        "top_items": [
            {
                "key": r["key"],
                "writes_per_1000": round(r["writes"] * per_1000, 3),
                "write_units_per_1000": round(r["write_units"] * per_1000, 3),
            }
            for r in sorted(
                (r for r in _rows(obs.proxy, "hottest_items") if r["table"] == obs.ledger_table),
                key=lambda r: (-r["write_units"], -r["writes"]),
            )[:5]
        ],
    }


# ----------------------------------------------------------------------------- P4, P6


def reduce_latency(obs: Observed) -> dict[str, float | None]:
    """Seconds from the last task's completion to the reduce claim and to the email."""
    claimed = parse_time(obs.run.get("reduce_claimed_at"))
    last = obs.last_completion_at
    return {
        "claim_latency_s": round(claimed - last, 3) if claimed is not None else None,
        "email_latency_s": round(obs.email_at - last, 3) if obs.email_at is not None else None,
        "finished_latency_s": round(parse_time(obs.run.get("finished_at")) - last, 3)  # type: ignore[operator]
        if obs.run.get("finished_at")
        else None,
    }


def split_rate(obs: Observed) -> float:
    """Items the splitter enqueued per second (the run's expected count over its split time)."""
    created = parse_time(obs.run.get("created_at"))
    done = parse_time(obs.run.get("split_finished_at"))
    if created is None or done is None or done <= created:
        raise ValueError("the run has no split time (created_at, split_finished_at)")
    return float(obs.run["expected"]) / (done - created)


def split_working_rate(obs: Observed, segments: int) -> float:
    """Items per second the split enqueues when it does not wait for room, all segments together:
    `segments` x items / the splitter's working seconds (its invocations' duration less the
    backpressure waits). The split's wall-clock rate (`split_rate`) is bound locally by the
    processing (the emulator-sized depth limit); this is the splitter's own speed."""
    spl = obs.functions["splitter"]
    if spl.working_s <= 0:
        return split_rate(obs)
    return segments * float(obs.run["expected"]) / spl.working_s


def splitter_model(split: Split) -> dict[str, Any]:
    """A split as the planner models it on AWS (`microprocess.cli.planner.Split`): its segments
    in parallel at the modelled rate each, every invocation working its usable seconds, then
    continuing itself after the gap."""
    return {
        "items": split.items,
        "segments": split.segments,
        "items_per_s_per_segment": round(split.items_per_s_per_segment, 1),
        "items_per_invocation": round(split.items_per_s_per_segment * split.usable_s),
        "invocations": split.invocations,
        "invocations_per_segment": split.invocations_per_segment,
        "self_continuations": split.continuations,
        "split_hours": round(split.end / 3600, 2),
        "usable_seconds_per_invocation": split.usable_s,
    }


# ----------------------------------------------------------------------------- the planner's file


def forwarder_cpu(obs: Observed, lambda_workers_cpu_s: float | None = None) -> tuple[float, str]:
    """(CPU seconds per forwarder batch, where it comes from).

    The forwarder's own CPU time (`FunctionUse.cpu_s`) when the bench recorded it; otherwise
    the CPU time of all the emulator's Lambda worker processes during the run divided by the
    forwarder's invocations: an upper bound (it includes the splitter's and the other
    functions' CPU and the workers' own runtime loop). Never the wall time: a batch's wall
    time on a CPU-starved laptop is mostly waiting on the emulator.
    """
    fwd = obs.functions["forwarder"]
    if not fwd.invocations:
        raise ValueError("the forwarder ran no invocation: no CPU time per batch to measure")
    if fwd.cpu_s > 0:
        return fwd.cpu_s / fwd.invocations, "forwarder worker processes' CPU time (/proc, by AWS_LAMBDA_FUNCTION_NAME)"
    if lambda_workers_cpu_s:
        return lambda_workers_cpu_s / fwd.invocations, (
            "upper bound: CPU time of all the emulator's Lambda workers during the run / forwarder invocations"
        )
    raise ValueError(
        "the forwarder's CPU time was not recorded: fill FunctionUse.cpu_s (the forwarder workers' CPU time) "
        "or pass the Lambda workers' CPU seconds during the run"
    )


def report_figures(p5: dict[str, Any], *, part_bytes: int) -> dict[str, Any]:
    """The report section of the measured costs, from one P5 build (`bench.report_memory`):
    bytes of report.csv and build time per row, the multipart part size."""
    rows = int(p5["report_rows"])
    if rows <= 0:
        raise ValueError("the P5 report has no rows")
    return {
        "rows": rows,
        "bytes_per_row": round(p5["report_bytes"] / rows, 4),
        "seconds_per_row": round(p5["seconds"] / rows, 9),
        "part_bytes": part_bytes,
    }


def splitter_cpu(obs: Observed, larger: tuple[int, float] | None = None) -> tuple[float, str]:
    """CPU seconds of the splitter's own worker processes per item enqueued (what it does on
    AWS besides waiting on calls; its polls of the queue depth while it waits for room locally
    are included, a slight overestimate), and where the figure comes from.

    `larger` is (items, splitter CPU seconds) of a larger run (P8), taken when given: each
    invocation's start-up (imports, clients) is spread over more items, as it is at N."""
    if larger is not None and larger[0] > obs.items and larger[1] > 0:
        items, cpu_s = larger
        return cpu_s / items, f"splitter worker processes' CPU time (/proc) / items, in the {items:,}-item P8 run"
    spl = obs.functions["splitter"]
    if spl.cpu_s <= 0:
        raise ValueError(
            "the splitter's CPU time was not recorded: fill FunctionUse.cpu_s (its workers' CPU time); "
            "the wall time on the local stack is not what it takes on AWS"
        )
    return spl.cpu_s / obs.items, f"splitter worker processes' CPU time (/proc) / items, in the {obs.items:,}-item run"


def measured_costs(
    obs: Observed,
    *,
    measured_at: str,
    cores: int,
    split_segments: int,
    report: dict[str, Any],
    lambda_workers_cpu_s: float | None = None,
    larger_split: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """The contents of `microprocess/measured_costs.json`.

    Args:
        split_segments: scan segments the measured run's split read in parallel (the job's
            `source.segments`): the planner divides the split rate by it.
        report: `report_figures` of the largest P5 build.
        lambda_workers_cpu_s: CPU seconds of the emulator's Lambda workers during the run (the
            fallback of `forwarder_cpu`).
        larger_split: (items, splitter CPU seconds) of a larger run, for `splitter_cpu`.
    """
    per_item, per_run = usage_split(obs)
    forwarder = obs.functions["forwarder"]
    splitter = obs.functions["splitter"]
    hk = hot_key(obs)
    cpu_per_batch, cpu_source = forwarder_cpu(obs, lambda_workers_cpu_s)
    spl_cpu, spl_cpu_source = splitter_cpu(obs, larger_split)
    if split_segments < 1:
        raise ValueError(f"split_segments must be at least 1, got {split_segments}")
    return {
        "measured_at": measured_at,
        "source": "make bench: the full pipeline on the local stack against a no-op task endpoint "
        "(bench/results/latest.json)",
        "items": obs.items,
        "cores": cores,
        "per_item": {k: round(v, 9) for k, v in per_item.as_dict().items()},
        "per_run": {k: round(v, 9) for k, v in per_run.as_dict().items()},
        "forwarder": {
            "memory_mb": forwarder.memory_mb,
            "batch_size": obs.batch_size,
            "batches_per_item": round(batches_per_item(obs), 6),
            "overhead_s_per_batch": round(forwarder.mean_s, 4),
            "cpu_s_per_batch": round(cpu_per_batch, 5),
            "cpu_source": cpu_source,
        },
        "splitter": {
            "memory_mb": splitter.memory_mb,
            "items_per_s": round(split_working_rate(obs, split_segments), 1),
            "items_per_s_note": "segments x items / the splitter's working seconds (its duration less "
            f"{splitter.waited_s:.1f} s of waiting for the queue to drain below the local depth limit); "
            f"the split's wall-clock rate here was {split_rate(obs):.1f} items/s, bound by the processing",
            "segments": split_segments,
            "seconds_per_item": round(splitter.working_s / obs.items, 7),
            "cpu_s_per_item": round(spl_cpu, 8),
            "cpu_source": spl_cpu_source,
            "timeout_s": obs.splitter_timeout_s,
            "margin_s": obs.splitter_margin_s,
        },
        "ledger": {
            "hottest_item_write_units_per_1000": hk["hottest_item_write_units_per_1000"],
            "hottest_partition_key_write_units_per_1000": hk["hottest_partition_key_write_units_per_1000"],
        },
        "report": report,
    }
