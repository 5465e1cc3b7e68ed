"""`microprocess plan`: the split and processing model on cases worked by hand, the 19 M seed by
hand, the 19 M plan at concurrency 50 and 1,000 line by line, the cost model, and bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from microprocess.cli import plan as plan_command
from microprocess.cli import planner
from microprocess.cli.planner import (
    Assumptions,
    MeasuredCosts,
    PlanError,
    Processing,
    Split,
    ceiling_items_per_s,
    multipart_requests,
    plan_job,
    plan_run,
    report_s3_usage,
    wall_time,
)
from microprocess.cli.pricing import PriceTable, Usage, lambda_vcpu_share, load_price_table
from microprocess.declarations import ItemSource, JobDeclaration, SourceKind, UnknownJobError
from tests.declared import CREDIT_SCORES, INVOICE_REMINDERS

#: Hand-written measurements, so that the expected numbers below can be checked by hand.
#: The forwarder has 2,048 MB (a full vCPU): its 0.08 CPU-s per batch take 0.08 s on AWS. So has
#: the splitter: its 1.52 CPU-ms per item take 1.52 ms; with a page of 500 items (SEED_JOB) its
#: waits are 0.1 s of AWS calls + 7 rounds of 8 sends (50 calls) x 0.02 s = 0.24 s = 0.48 ms per
#: item: 2 ms per item, 500 items/s per segment.
MEASURED: dict[str, Any] = {
    "measured_at": "2026-11-01T00:00:00Z",
    "source": "test",
    "items": 10000,
    "cores": 2,
    "per_item": {
        "sqs_requests": 0.3,
        "lambda_requests": 0.1,
        "dynamodb_write_units": 1.2,
        "dynamodb_read_units": 0.02,
        "logs_gb": 1e-7,
    },
    "per_run": {"s3_put_requests": 52, "s3_get_requests": 48, "ses_emails": 1},
    "forwarder": {"memory_mb": 2048, "batch_size": 10, "batches_per_item": 0.1, "cpu_s_per_batch": 0.08},
    "splitter": {
        "memory_mb": 2048,
        "cpu_s_per_item": 0.00152,
        "items_per_s": 2000,
        "segments": 4,
        "timeout_s": 900,
        "margin_s": 60,
    },
    "report": {"rows": 100000, "bytes_per_row": 50, "seconds_per_row": 1e-5, "part_bytes": 5 * 1024 * 1024},
    "ledger": {"hottest_item_write_units_per_1000": 10.0, "hottest_partition_key_write_units_per_1000": 62.5},
}
#: The defaults, spelled out: the hand computations below use these numbers.
ASSUMED = Assumptions(
    aws_wait_s_per_batch=0.02,
    continuation_gap_s=1.0,
    sqs_send_batch_s=0.02,
    splitter_aws_s_per_page=0.1,
    sweeper_seconds_per_sweep=2.0,
    sweep_interval_s=300.0,
    reducer_memory_mb=256,
    sweeper_memory_mb=256,
)
#: The seed's job with the settings the hand computations use (the repository's file may change).
SEED_JOB = CREDIT_SCORES.model_copy(
    update={
        "max_concurrency": 50,
        "batch_size": 10,
        "shard_count": 64,
        "source": ItemSource(kind=SourceKind.DYNAMODB, table="companies", segments=4, page_size=500),
    }
)


@pytest.fixture
def measured() -> MeasuredCosts:
    return MeasuredCosts.from_dict(MEASURED)


@pytest.fixture
def prices() -> PriceTable:
    return load_price_table()


def _plan(measured: MeasuredCosts, prices: PriceTable, items: int = 19_000_000, **kw: Any) -> planner.Plan:
    return plan_run(SEED_JOB, items, measured=measured, prices=prices, assumptions=ASSUMED, **kw)


# ----------------------------------------------------------------------------- the pieces, by hand


def test_processing_ramps_then_holds_its_peak() -> None:
    # GIVEN 10 items/s per concurrent batch, a cap of 20 batches, 5 to start, +5 per second
    p = Processing(items_per_s_per_batch=10, concurrency=20)
    # THEN the ramp 5 -> 20 takes 3 s and allows 10 * (5*3 + 5*9/2) = 375 items; then 200 items/s
    assert p.ramp_seconds == pytest.approx(3.0)
    assert p.peak_items_per_s == pytest.approx(200.0)
    assert p.done_by(1) == pytest.approx(75.0)  # 10 * (5 + 2.5)
    assert p.done_by(3) == pytest.approx(375.0)
    assert p.done_by(5) == pytest.approx(775.0)
    assert p.time_to(75) == pytest.approx(1.0)
    assert p.time_to(775) == pytest.approx(5.0)


def test_a_split_of_one_segment_continues_itself_near_the_limit() -> None:
    # GIVEN 250 items, one segment at 10 items/s, 10 s per invocation, 2 s per continuation
    s = Split(items=250, segments=1, items_per_s_per_segment=10, usable_s=10, gap_s=2)
    # THEN three invocations: 100 items in [0, 10], 100 in [12, 22], 50 in [24, 29]
    assert s.phases() == [(0, 10), (12, 22), (24, 29)]
    assert (s.invocations, s.continuations, s.end) == (3, 2, 29)
    assert s.enqueued_by(11) == 100
    assert s.enqueued_by(25) == 210


def test_a_segmented_split_fans_out_first() -> None:
    # GIVEN 4,000 items over 2 segments at 1,000 items/s each, a 1 s invoke gap
    s = Split(items=4000, segments=2, items_per_s_per_segment=1000, usable_s=840, gap_s=1)
    # THEN the fan-out invokes both segments (1 s), which enqueue 2,000 items/s for 2 s
    assert (s.invocations, s.continuations) == (3, 0)  # 1 fan-out + 2 segments
    assert (s.start, s.end, s.items_per_s) == (1, 3, 2000)
    assert s.enqueued_by(2) == 2000


def test_a_slow_split_bounds_the_run() -> None:
    # GIVEN a split of 1,000 items at 100 items/s and a processing that ramps from 50 items/s
    split = Split(items=1000, segments=1, items_per_s_per_segment=100, usable_s=840, gap_s=1)
    proc = Processing(items_per_s_per_batch=10, concurrency=1000)
    w = wall_time(split, proc, batch_seconds=1.0)
    # THEN (by hand) the split ends at 10 s; Cap(10) = 10 * (50 + 250) = 3,000 >= 1,000, and the
    # backlog built while the ramp was below 100 items/s is gone: the last item is done one batch later.
    assert w.split_seconds == pytest.approx(10.0)
    assert w.seconds == pytest.approx(11.0)
    assert w.bottleneck == "split"


def test_a_fast_split_leaves_the_event_source_as_the_bound() -> None:
    # GIVEN 4,000 items split by 2 segments in [1 s, 3 s], processing 5 -> 20 batches of 10 items/s
    split = Split(items=4000, segments=2, items_per_s_per_segment=1000, usable_s=840, gap_s=1)
    proc = Processing(items_per_s_per_batch=10, concurrency=20)
    w = wall_time(split, proc, batch_seconds=1.0)
    # THEN (by hand) max(Cap(s) - A(s)) is at s = 1 (nothing enqueued yet): Cap(1) = 75 items the
    # ramp could have done but had nothing to do; so Cap(t) = 4,075: t = 3 + (4,075 - 375) / 200 = 21.5 s.
    assert w.seconds == pytest.approx(21.5)
    assert w.bottleneck == "concurrency"


def test_the_backlog_drains_during_a_continuation_gap() -> None:
    # GIVEN 150 items at 10 items/s per invocation of 10 s and 10 s gaps, processed at 5 items/s flat
    split = Split(items=150, segments=1, items_per_s_per_segment=10, usable_s=10, gap_s=10)
    proc = Processing(items_per_s_per_batch=5, concurrency=1)
    w = wall_time(split, proc, batch_seconds=1.0)
    # THEN (by hand) 50 items wait at 10 s and are done at 20 s; the last 50 come in [20, 25] and
    # 25 wait at 25 s: done at 30 s (Cap(t) = 5 t = 150), later than 25 + 1.
    assert split.end == 25
    assert w.seconds == pytest.approx(30.0)
    assert w.bottleneck == "concurrency"


def test_the_ledger_caps_throughput_when_its_hottest_item_is_hot() -> None:
    # GIVEN a ceiling of 100 items/s (10 write units per item per 1,000... at 1,000 WCU/s: 100,000 / 1,000)
    assert ceiling_items_per_s(10_000) == pytest.approx(100.0)
    split = Split(items=1075, segments=1, items_per_s_per_segment=1e6, usable_s=840, gap_s=1)
    proc = Processing(items_per_s_per_batch=10, concurrency=1000, ceiling_items_per_s=100)
    w = wall_time(split, proc, batch_seconds=1.0)
    # THEN the ramp stops at 10 batches (1 s, 75 items), then 100 items/s: 1 + 1,000 / 100 = 11 s
    assert w.ramp_seconds == pytest.approx(1.0)
    assert w.seconds == pytest.approx(11.0, abs=1e-3)
    assert w.bottleneck == "ledger"


def test_a_small_run_ends_during_the_ramp() -> None:
    split = Split(items=100, segments=1, items_per_s_per_segment=1e6, usable_s=840, gap_s=1)
    w = wall_time(split, Processing(items_per_s_per_batch=10, concurrency=1000), batch_seconds=0.01)
    # 10 * (5 t + 2.5 t^2) = 100  ->  t^2 + 2 t - 4 = 0  ->  t = sqrt(5) - 1
    assert w.seconds == pytest.approx(math.sqrt(5) - 1, abs=1e-3)
    assert w.bottleneck == "ramp"


def test_the_fluid_formula_matches_a_step_by_step_queue() -> None:
    # GIVEN a split with continuations that outruns a ramping processing at first, then falls behind
    split = Split(items=60_000, segments=3, items_per_s_per_segment=400, usable_s=20, gap_s=3)
    proc = Processing(items_per_s_per_batch=8, concurrency=200, ceiling_items_per_s=1500)
    model = wall_time(split, proc, batch_seconds=0.5)
    # WHEN a queue is stepped by hand: arrivals at the split's rate in its working phases, service at cap(t)
    queued = done = t = 0.0
    dt = 0.001
    phases = split.phases()
    while done < split.items - 1e-6:
        arriving = split.items_per_s if any(a <= t < b for a, b in phases) else 0.0
        queued += arriving * dt
        served = min(queued, min(8 * min(5 + 5 * t, 200), 1500) * dt)
        queued -= served
        done += served
        t += dt
    # THEN the closed form agrees (within the step), and with the last item's batch
    assert model.seconds == pytest.approx(max(t, split.end + 0.5), abs=0.02)


def test_multipart_requests_and_the_report_at_19m_rows() -> None:
    assert multipart_requests(5 * 1024 * 1024, 5 * 1024 * 1024) == 1
    assert multipart_requests(5 * 1024 * 1024 + 1, 5 * 1024 * 1024) == 4  # create + 2 parts + complete
    # 19 M rows of 50 bytes over 64 shards: parts of 14,843,750 bytes = 3 parts + 2 each, plus the part's
    # statistics and failures; report.csv of 950,000,000 bytes = 182 parts + 2; and three small files.
    usage = report_s3_usage(19_000_000, 64, bytes_per_row=50, part_bytes=5 * 1024 * 1024)
    assert usage.s3_put_requests == 64 * (5 + 2) + 184 + 3
    assert usage.s3_get_requests == 64 * 3


def test_a_split_segment_is_its_cpu_time_at_its_share_plus_its_pages_calls_and_sends(
    measured: MeasuredCosts,
) -> None:
    # (by hand) the MEASURED splitter: 1.52 CPU-ms per item at 2,048 MB (a full vCPU)
    assert planner.splitter_item_seconds(500, measured, ASSUMED) == pytest.approx(0.00152 + (0.1 + 7 * 0.02) / 500)
    # a page of 80 items: 8 sends, one round in flight together -> (0.1 + 0.02) / 80 per item
    assert planner.splitter_item_seconds(80, measured, ASSUMED) == pytest.approx(0.00152 + 0.12 / 80)
    # a page of 81: 9 sends, two rounds
    assert planner.splitter_item_seconds(81, measured, ASSUMED) == pytest.approx(0.00152 + 0.14 / 81)
    # at 1,024 MB the CPU time stretches by 1769 / 1024; the waits do not
    at_1gb = MeasuredCosts.from_dict({**MEASURED, "splitter": {**MEASURED["splitter"], "memory_mb": 1024}})
    assert planner.splitter_item_seconds(500, at_1gb, ASSUMED) == pytest.approx(0.00152 * 1769 / 1024 + 0.24 / 500)
    # no CPU time measured: the bench must be re-run
    broken = {**MEASURED, "splitter": {k: v for k, v in MEASURED["splitter"].items() if k != "cpu_s_per_item"}}
    with pytest.raises(PlanError, match=r"cpu_s_per_item.*make bench"):
        MeasuredCosts.from_dict(broken)
    zero = {**MEASURED, "splitter": {**MEASURED["splitter"], "cpu_s_per_item": 0}}
    with pytest.raises(PlanError, match="splitter_cpu_s_per_item must be positive"):
        MeasuredCosts.from_dict(zero)


def test_lambda_cpu_share_follows_memory() -> None:
    assert lambda_vcpu_share(1769) == 1.0
    assert lambda_vcpu_share(4096) == 1.0  # one Python thread uses one core at most
    assert lambda_vcpu_share(256) == pytest.approx(256 / 1769)


# ----------------------------------------------------------------------------- the seed, by hand


def test_the_seed_at_the_jobs_concurrency_is_bound_by_the_event_source(
    measured: MeasuredCosts, prices: PriceTable
) -> None:
    # GIVEN the seed: 19 M companies, 0.5 s per task, concurrency 50
    plan = _plan(measured, prices, task_seconds=0.5)

    # THEN (by hand) a batch of 10 lasts 0.5 + 0.02 + 0.08 = 0.6 s: 16.667 items/s per concurrent batch.
    assert plan.batch_seconds == pytest.approx(0.6)
    # The split: 4 segments of 4,750,000 items at 500 items/s (2 ms per item, MEASURED) take 9,500 s each; an invocation
    # moves 840 s * 500 = 420,000 items -> 12 per segment, 11 gaps, after the 1 s fan-out: ends at 9,512 s.
    s = plan.split
    assert (s.invocations_per_segment, s.invocations, s.continuations) == (12, 49, 44)
    assert s.end == pytest.approx(9512.0)
    # Processing: ramp 5 -> 50 in 9 s (4,125 items), then 833.33 items/s. Nothing is enqueued in the first
    # second, when the ramp could have done 16.667 * 7.5 = 125 items: 9 + (19e6 + 125 - 4,125) / 833.33.
    assert plan.wall.ramp_seconds == pytest.approx(9.0)
    assert plan.wall.peak_items_per_s == pytest.approx(833.333, rel=1e-6)
    assert plan.wall.seconds == pytest.approx(9 + 18_996_000 * 0.6 / 500, abs=0.01)  # 22,804.2 s
    assert plan.wall.bottleneck == "concurrency"
    assert plan.split_keeps_up and plan.segments_to_keep_up == 2  # 833.33 / 500
    assert plan.notes == []

    # Cost: SQS 5.7 M requests; Lambda: 1.9 M forwarder + 49 splitter + 65 reducer (64 parts + finalize)
    # + 77 sweeps (ceil(22,804.2 / 300)) requests; GB-s: forwarder 1.9 M * 0.6 s * 2 GB = 2,280,000,
    # splitter 4 * 9,500 s * 2 GB = 76,000, reducer (19e6 * 1e-5 + 65 * 0.1) s * 0.25 GB = 49.125,
    # sweeper 77 * 2 s * 0.25 GB = 38.5.
    assert plan.lambdas.invocations == {"forwarder": 1_900_000, "splitter": 49, "reducer": 65, "sweeper": 77}
    assert plan.lambdas.gb_seconds["forwarder"] == pytest.approx(2_280_000)
    assert plan.lambdas.gb_seconds["splitter"] == pytest.approx(76_000)
    assert plan.lambdas.gb_seconds["reducer"] == pytest.approx(49.125)
    assert plan.lambdas.gb_seconds["sweeper"] == pytest.approx(38.5)
    gbs = 2_280_000 + 76_000 + 49.125 + 38.5
    assert plan.cost["sqs"] == pytest.approx(2.28)
    assert plan.cost["lambda"] == pytest.approx(1_900_191 * 0.2e-6 + gbs * 0.0000133334)  # arm64 GB-s
    # DynamoDB 22.8 M write units and 380,000 read units; S3 635 PUT + 192 GET at 19 M rows; 1 email; 1.9 GB logs.
    assert plan.cost["dynamodb"] == pytest.approx(14.25 + 0.0475)
    assert plan.usage.s3_put_requests == 635 and plan.usage.s3_get_requests == 192
    assert plan.cost["s3"] == pytest.approx(635 * 0.005e-3 + 192 * 0.0004e-3)
    assert plan.cost["ses"] == pytest.approx(0.0001)
    assert plan.cost["logs"] == pytest.approx(0.95)


def test_the_seed_at_full_concurrency_is_bound_by_the_split(measured: MeasuredCosts, prices: PriceTable) -> None:
    plan = _plan(measured, prices, task_seconds=0.5, concurrency=1000)
    # (by hand) processing could take 1,000 * 16.667 = 16,667 items/s after a 199 s ramp, but the split
    # enqueues 2,000 items/s until 9,512 s: the last item is done one batch (0.6 s) after that.
    assert plan.wall.ramp_seconds == pytest.approx(199.0)
    assert plan.wall.seconds == pytest.approx(9512.6)
    assert plan.wall.bottleneck == "split"
    # 16,667 / 500 per segment -> 34 segments would keep up; the plan says so.
    assert plan.segments_to_keep_up == 34 and not plan.split_keeps_up
    assert any("declare source.segments = 34" in n for n in plan.notes)
    # The same bill as at concurrency 50 but for the sweeps: ceil(9,512.6 / 300) = 32 instead of 77.
    assert plan.lambdas.invocations["sweeper"] == 32


def test_with_the_segments_it_asks_for_the_split_keeps_up(measured: MeasuredCosts, prices: PriceTable) -> None:
    plan = _plan(measured, prices, task_seconds=0.5, concurrency=1000, segments=34)
    # 34 segments * 500 = 17,000 items/s >= 16,667: the event source is the bound again, and the split
    # (19e6 / 34 = 558,824 items per segment: 2 invocations each) ends well before the processing.
    assert plan.split_keeps_up
    assert not any("source.segments" in n for n in plan.notes)
    assert plan.split.invocations == 1 + 34 * 2
    assert plan.wall.bottleneck == "concurrency"
    assert plan.wall.seconds > plan.split.end


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("items", [1, 10, 1_000, 100_000, 1_000_000, 19_000_000])
def test_more_items_never_take_less_time_nor_cost_less(measured: MeasuredCosts, prices: PriceTable, items: int) -> None:
    a = _plan(measured, prices, items)
    b = _plan(measured, prices, items * 2)
    assert b.wall.seconds > a.wall.seconds
    assert b.total_usd > a.total_usd


def test_more_concurrency_or_segments_is_never_slower_and_slower_tasks_never_faster(
    measured: MeasuredCosts, prices: PriceTable
) -> None:
    times = [_plan(measured, prices, 5_000_000, concurrency=c).wall.seconds for c in (2, 5, 50, 300, 1000)]
    assert times == sorted(times, reverse=True)
    by_segments = [
        _plan(measured, prices, 5_000_000, concurrency=1000, segments=s).wall.seconds for s in (1, 4, 16, 64)
    ]
    assert by_segments == sorted(by_segments, reverse=True)
    slow = [_plan(measured, prices, 5_000_000, task_seconds=s) for s in (0.0, 0.1, 0.5, 2.0)]
    assert [p.wall.seconds for p in slow] == sorted(p.wall.seconds for p in slow)
    assert [p.cost["lambda"] for p in slow] == sorted(p.cost["lambda"] for p in slow)


def test_the_wall_time_is_never_before_the_split_ends(measured: MeasuredCosts, prices: PriceTable) -> None:
    for c in (2, 50, 1000):
        for seg in (1, 4, 64):
            plan = _plan(measured, prices, 2_000_000, concurrency=c, segments=seg)
            assert plan.wall.seconds >= plan.split.end + plan.batch_seconds - 1e-9
            assert (plan.wall.bottleneck == "split") == (
                plan.wall.seconds == pytest.approx(plan.split.end + plan.batch_seconds)
            )


# ----------------------------------------------------------------------------- the committed figures


def test_the_planners_cost_per_million_is_the_benchs_p2() -> None:
    # GIVEN the committed measurements (written by the same `make bench` as latest.json)
    latest = json.loads((Path(__file__).parents[1] / "bench" / "results" / "latest.json").read_text())
    measured = planner.load_measured_costs()
    assert measured.measured_at == latest["measured_costs"]["measured_at"]
    # WHEN a million items of credit-scores are planned with a service that answers at once
    plan = plan_job("credit-scores", 1_000_000, task_seconds=0.0, measured=measured)
    # THEN the planner's cost is the bench's P2, service by service (one model, not two); the
    # $1.00 target is a figure to meet in `make bench`, not asserted here
    assert plan.usd_per_million == pytest.approx(latest["p2_usd_per_million"], abs=1e-3)
    for service, usd in latest["p2_by_service"].items():
        assert plan.cost[service] == pytest.approx(usd, abs=1e-3), service


def test_the_report_model_reproduces_the_measured_report_requests() -> None:
    # The bench measured 196 PUT and 192 GET for a run of credit-scores (its 64 shards) of 10,000 rows.
    measured = planner.load_measured_costs()
    usage = report_s3_usage(
        measured.items,
        CREDIT_SCORES.shard_count,
        bytes_per_row=measured.report_bytes_per_row,
        part_bytes=measured.report_part_bytes,
    )
    assert (usage.s3_put_requests, usage.s3_get_requests) == (
        measured.per_run.s3_put_requests,
        measured.per_run.s3_get_requests,
    )


def test_the_sweep_interval_and_memories_match_the_stack() -> None:
    from infra import forwarder as forwarder_construct
    from infra import sweeper

    assert Assumptions().sweep_interval_s == sweeper.RATE.to_seconds()
    source = Path(forwarder_construct.__file__).read_text()
    assert f"memory_size={Assumptions().reducer_memory_mb}" in source


def _lines(args: list[str]) -> list[str]:
    result = CliRunner().invoke(_real_cli(), args)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def _real_cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """A group, as the real CLI is."""

    plan_command.register(app)
    return app


def _hours(text: str) -> float:
    m = re.search(r"([\d.,]+) (h|min|s)\b", text)
    assert m, text
    value = float(m.group(1).replace(",", ""))
    return value * {"h": 1.0, "min": 1 / 60, "s": 1 / 3600}[m.group(2)]


def test_the_19m_plan_at_50_and_1000_agrees_line_by_line() -> None:
    # GIVEN the committed measurements, the seed at the job's concurrency (50) and at 1,000
    base = ["plan", "credit-scores", "--items", "19000000", "--task-seconds", "0.5"]
    at50, at1000 = _lines([*base, "--concurrency", "50"]), _lines([*base, "--concurrency", "1000"])

    def line(lines: list[str], label: str) -> str:
        return next(x for x in lines if x.strip().startswith(label))

    # THEN the split is the same run in both, and neither plan finishes before its split
    assert line(at50, "split") == line(at1000, "split")
    split_h = _hours(line(at50, "split"))
    for lines in (at50, at1000):
        assert _hours(line(lines, "wall time")) >= split_h
        bound_by_split = "bound by the split" in line(lines, "wall time")
        keeps_up = "(met by" in line(lines, "keeping up")
        # The split bounds the run exactly when it cannot keep up, and only then is a fix proposed:
        # more segments, or (above what a declaration allows) less concurrency or a faster splitter.
        assert bound_by_split == (not keeps_up)
        fixes = ("declare source.segments", "lower the concurrency or speed up the splitter")
        assert any(f in x for x in lines for f in fixes) == (not keeps_up)
        if bound_by_split:
            assert _hours(line(lines, "wall time")) == pytest.approx(split_h, abs=0.01)
    # More concurrency is never slower; the bill is the same but for the sweeps of a shorter run.
    assert _hours(line(at1000, "wall time")) <= _hours(line(at50, "wall time"))

    def total(lines: list[str]) -> float:
        return float(line(lines, "total").split()[1].replace(",", ""))

    assert total(at1000) == pytest.approx(total(at50), abs=0.011)
    # The batch and the ledger are the same; only the processing's peak differs (20 x the concurrency).
    assert line(at50, "ledger ceiling") == line(at1000, "ledger ceiling")
    assert "a batch takes" in line(at50, "processing")
    assert line(at50, "processing").split("a batch takes")[1] == line(at1000, "processing").split("a batch takes")[1]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"items": 0}, "--items must be at least 1"),
        ({"items": -5}, "--items must be at least 1"),
        ({"items": 10, "concurrency": 1}, "--concurrency must be 2..1000"),
        ({"items": 10, "concurrency": 1001}, "--concurrency must be 2..1000"),
        ({"items": 10, "task_seconds": -1}, "--task-seconds must be 0 or more"),
        ({"items": 10, "segments": 0}, "--segments must be 1..64"),
        ({"items": 10, "segments": 65}, "--segments must be 1..64"),
    ],
)
def test_bad_numbers_are_refused_with_the_option_named(
    measured: MeasuredCosts, prices: PriceTable, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        plan_job("credit-scores", measured=measured, prices=prices, **kwargs)


def test_a_source_of_one_segment_refuses_more_and_says_it_cannot_keep_up(
    measured: MeasuredCosts, prices: PriceTable
) -> None:
    job: JobDeclaration = INVOICE_REMINDERS
    with pytest.raises(PlanError, match="has one segment"):
        plan_run(job, 10, measured=measured, prices=prices, segments=2)
    plan = plan_run(job, 19_000_000, measured=measured, prices=prices, concurrency=1000, task_seconds=0.0)
    assert plan.split.segments == 1 and plan.split.invocations == plan.split.invocations_per_segment
    assert any("read in one segment" in n for n in plan.notes)


def test_an_unknown_job_is_refused_with_the_declared_ones(measured: MeasuredCosts) -> None:
    with pytest.raises(UnknownJobError, match="credit-scores"):
        plan_job("no-such-job", 10, measured=measured)


def test_incomplete_measurements_say_to_run_the_bench(tmp_path: Path) -> None:
    broken = tmp_path / "m.json"
    broken.write_text(json.dumps({k: v for k, v in MEASURED.items() if k != "report"}))
    with pytest.raises(PlanError, match="make bench"):
        planner.load_measured_costs(broken)
    no_cpu = {**MEASURED, "forwarder": {k: v for k, v in MEASURED["forwarder"].items() if k != "cpu_s_per_batch"}}
    broken.write_text(json.dumps(no_cpu))
    with pytest.raises(PlanError, match="cpu_s_per_batch"):
        planner.load_measured_costs(broken)
    with pytest.raises(PlanError, match="missing"):
        planner.load_measured_costs(tmp_path / "absent.json")


# ----------------------------------------------------------------------------- the command


def _cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> typer.Typer:
    path = tmp_path / "measured_costs.json"
    path.write_text(json.dumps(MEASURED))
    monkeypatch.setattr(planner, "MEASURED_COSTS_PATH", path)
    return _real_cli()


def test_plan_command_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = _cli(monkeypatch, tmp_path)
    result = CliRunner().invoke(
        app, ["plan", "credit-scores", "--items", "19000000", "--concurrency", "1000", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["concurrency"] == 1000 and data["items"] == 19_000_000
    assert data["bottleneck"] == "split"
    assert data["split"]["keeps_up"] is False
    assert data["wall_seconds"] >= data["split"]["seconds"]
    assert set(data["lambda"]["gb_seconds"]) == {"forwarder", "splitter", "reducer", "sweeper"}
    assert data["assumptions"]["aws_wait_s_per_batch"] == pytest.approx(0.02)


def test_plan_command_warns_when_a_partition_key_would_be_hot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = _cli(monkeypatch, tmp_path)
    # 1,000 concurrent batches of 10 items at 0.6 s: 16,667 items/s, above the 16,000 a key at 62.5 per 1,000 takes.
    args = ["plan", "credit-scores", "--items", "19000000", "--task-seconds", "0.5"]
    hot = CliRunner().invoke(app, [*args, "--concurrency", "1000"])
    assert hot.exit_code == 0, hot.output
    assert "the hottest ledger partition key" in hot.output
    calm = CliRunner().invoke(app, [*args, "--concurrency", "50"])
    assert "partition key" not in calm.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "nope", "--items", "10"], "unknown job 'nope'"),
        (["plan", "credit-scores", "--items", "0"], "--items must be at least 1"),
        (["plan", "credit-scores", "--items", "10", "--concurrency", "5000"], "--concurrency must be 2..1000"),
        (["plan", "credit-scores", "--items", "10", "--segments", "100"], "--segments must be 1..64"),
    ],
)
def test_plan_command_bad_input_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], message: str
) -> None:
    app = _cli(monkeypatch, tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_usage_adds_and_scales() -> None:
    u = Usage(sqs_requests=1, lambda_gb_seconds=2) + Usage(sqs_requests=3)
    assert u.scaled(2) == Usage(sqs_requests=8, lambda_gb_seconds=4)
    with pytest.raises(ValueError, match="unknown usage fields"):
        Usage.from_dict({"sqs": 1})


def test_a_services_declared_capacity_bounds_the_wall_time(measured: MeasuredCosts, prices: PriceTable) -> None:
    from microprocess.declarations import ServiceDeclaration

    alone = _plan(measured, prices, items=1_000_000)
    service = ServiceDeclaration(name=SEED_JOB.service, local_app="m:app", capacity={"concurrent_pushes": 40})
    shared = _plan(measured, prices, items=1_000_000, service=service)
    # 40 pushes at once = 4 batches of 10, instead of the declared 50
    assert shared.concurrency == 40 // SEED_JOB.batch_size < alone.concurrency
    assert shared.wall.seconds > 5 * alone.wall.seconds
    rate = ServiceDeclaration(name=SEED_JOB.service, local_app="m:app", capacity={"pushes_per_second": 100})
    # 100 pushes/s x 0.5 s per task = 50 pushes at once = 5 batches
    assert _plan(measured, prices, items=1_000_000, service=rate).concurrency == 5
