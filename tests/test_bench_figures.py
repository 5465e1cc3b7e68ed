"""From a bench run's observations to its figures (bench.figures), and the P5 and P1 helpers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench.figures import (
    EventSourceUse,
    FunctionUse,
    Observed,
    forwarder_cpu,
    hot_key,
    measured_costs,
    observed_from_dict,
    observed_to_dict,
    reduce_latency,
    report_figures,
    split_rate,
    split_working_rate,
    splitter_cpu,
    splitter_model,
    usage_split,
)
from bench.noop_service import noop_result, wrap
from bench.report_memory import build_report
from microprocess.cli.planner import MeasuredCosts, Split

LEDGER = "ledger-table"


def _row(caller: str, service: str, op: str, value: float) -> dict[str, Any]:
    return {"caller": caller, "service": service, "operation": op, "value": value}


@pytest.fixture
def observed() -> Observed:
    """A run of 1,000 items: 100 forwarder batches, 100 splitter sends, 1,000 task puts."""
    proxy = {
        "billed": [
            _row("splitter", "sqs", "SendMessageBatch", 100),
            _row("forwarder", "sqs", "SendMessageBatch", 2),
            _row("service", "s3", "PutObject", 50),
            _row("service", "s3", "GetObject", 40),
            _row("service", "s3", "AbortMultipartUpload", 1),
            _row("sweeper", "sqs", "SendMessageBatch", 3),
            _row("forwarder", "lambda", "Invoke", 1),
        ],
        "write_units": [
            {"caller": "forwarder", "operation": "PutItem", "value": 1000.0},
            {"caller": "forwarder", "operation": "UpdateItem", "value": 110.0},
            {"caller": "splitter", "operation": "UpdateItem", "value": 10.0},
            {"caller": "sweeper", "operation": "UpdateItem", "value": 5.0},
        ],
        "read_units": [
            {"caller": "forwarder", "operation": "GetItem", "value": 20.0},
            {"caller": "service", "operation": "Query", "value": 30.0},
        ],
        "emails": [{"caller": "service", "value": 1}],
        "hottest_items": [
            {"table": LEDGER, "key": "RUN#r|RUN", "writes": 8, "write_units": 16.0},
            {"table": LEDGER, "key": "RUN#r#C3|COUNT", "writes": 9, "write_units": 9.0},
            {"table": "companies", "key": "C1", "writes": 50, "write_units": 50.0},
        ],
        "hottest_partition_keys": [{"table": LEDGER, "key": "RUN#r#S4", "writes": 70, "write_units": 70.0}],
        "distinct_items_written": 1020,
    }
    return Observed(
        items=1000,
        proxy=proxy,
        functions={
            "forwarder": FunctionUse(memory_mb=512, invocations=100, duration_s=12.0, log_bytes=200_000),
            # 4 segments in parallel for the 4 s of the split: 16 s of splitter time, 0.5 s of its CPU
            "splitter": FunctionUse(memory_mb=1024, invocations=4, duration_s=16.0, log_bytes=5_000, cpu_s=0.5),
            "sweeper": FunctionUse(memory_mb=256, invocations=2, duration_s=1.0, log_bytes=1_000),
        },
        event_sources={"forwarder": EventSourceUse(batches=100, messages=1017, failed_batches=1)},
        ledger_table=LEDGER,
        batch_size=10,
        max_concurrency=50,
        splitter_timeout_s=900,
        splitter_margin_s=60,
        run={
            "expected": 1000,
            "created_at": "2026-11-01T00:00:00.000000Z",
            "split_finished_at": "2026-11-01T00:00:04.000000Z",
            "reduce_claimed_at": "2026-11-01T00:00:10.250000Z",
            "finished_at": "2026-11-01T00:00:12.000000Z",
        },
        started_at=1_793_491_199.0,
        last_completion_at=1_793_491_210.0,  # 2026-11-01T00:00:10Z
        email_at=1_793_491_211.5,
    )


def test_usage_is_split_into_per_item_and_per_run(observed: Observed) -> None:
    per_item, per_run = usage_split(observed)
    # SQS per item: 100 splitter sends + 2 forwarder sends + 100 event-source receives + 99 deletes.
    assert per_item.sqs_requests == pytest.approx((100 + 2 + 100 + 99) / 1000)
    assert per_item.lambda_requests == pytest.approx(0.1)
    assert per_item.dynamodb_write_units == pytest.approx(1.12)
    assert per_item.dynamodb_read_units == pytest.approx(0.05)  # the reduce's Query grows with the items
    assert per_item.logs_gb == pytest.approx(205_000 / 1e9 / 1000)
    assert per_item.s3_put_requests == 0 and per_item.ses_emails == 0
    # Per run: the report files and the email, and the scheduled sweeper's work.
    assert (per_run.s3_put_requests, per_run.s3_get_requests, per_run.ses_emails) == (50, 40, 1)
    assert per_run.sqs_requests == 3 and per_run.dynamodb_write_units == 5
    assert per_run.logs_gb == pytest.approx(1_000 / 1e9)


def test_hot_key_takes_the_ledgers_hottest_item_by_write_units(observed: Observed) -> None:
    hk = hot_key(observed)
    assert hk["hottest_item"] == "RUN#r|RUN"  # not the companies table
    assert hk["hottest_item_writes_per_1000"] == 8
    assert hk["hottest_item_write_units_per_1000"] == 16
    assert hk["ceiling_items_per_s"] == 62_500
    assert hk["hottest_partition_key_write_units_per_1000"] == 70
    assert hk["partition_key_ceiling_items_per_s"] == round(1e6 / 70)


def test_reduce_latency_and_split_rate(observed: Observed) -> None:
    lat = reduce_latency(observed)
    assert lat["claim_latency_s"] == pytest.approx(0.25)
    assert lat["email_latency_s"] == pytest.approx(1.5)
    assert lat["finished_latency_s"] == pytest.approx(2.0)
    assert split_rate(observed) == pytest.approx(250.0)


def test_splitter_model_for_the_seed_runs_its_segments_in_parallel() -> None:
    # 62.5 items/s in each of 4 segments, 840 s per invocation -> 52,500 items per invocation;
    # 4,750,000 items per segment -> 91 invocations per segment (90 continuations), plus the fan-out.
    m = splitter_model(Split(items=19_000_000, segments=4, items_per_s_per_segment=62.5, usable_s=840, gap_s=1.0))
    assert m["items_per_invocation"] == 52_500
    assert (m["invocations_per_segment"], m["invocations"], m["self_continuations"]) == (91, 1 + 4 * 91, 4 * 90)
    # 1 s fan-out + 76,000 s of work + 90 gaps of 1 s
    assert m["split_hours"] == round((1 + 76_000 + 90) / 3600, 2)


P5_100K = {"report_rows": 100_000, "report_bytes": 4_070_051, "seconds": 3.13}


def measured_doc(observed: Observed, larger_split: tuple[int, float] | None = None) -> dict[str, Any]:
    """measured_costs.json of the observed run (4 scan segments, the 100k report, 3 CPU-s of workers)."""
    return measured_costs(
        observed,
        measured_at="2026-11-01T00:00:00Z",
        cores=2,
        split_segments=4,
        report=report_figures(P5_100K, part_bytes=5 * 1024 * 1024),
        lambda_workers_cpu_s=3.0,
        larger_split=larger_split,
    )


def test_measured_costs_feed_the_planner(observed: Observed) -> None:
    doc = measured_doc(observed)
    mc = MeasuredCosts.from_dict(json.loads(json.dumps(doc)))
    assert mc.batches_per_item == pytest.approx(0.1)
    assert mc.forwarder_cpu_s_per_batch == pytest.approx(0.03)  # 3.0 CPU-s of the workers / 100 invocations
    assert "upper bound" in doc["forwarder"]["cpu_source"]
    assert mc.splitter_items_per_s == pytest.approx(250.0)
    assert mc.splitter_cpu_s_per_item == pytest.approx(0.5 / 1000)  # the splitter's own CPU time, not its wall time
    assert mc.report_bytes_per_row == pytest.approx(40.70051)
    assert mc.report_seconds_per_row == pytest.approx(3.13e-5)
    assert mc.ledger_ceiling_items_per_s == pytest.approx(62_500)


def test_the_splitters_waits_for_room_are_not_its_speed(observed: Observed) -> None:
    # GIVEN a split whose 16 s of splitter time include 8 s of waiting for the queue to drain
    observed.functions["splitter"].waited_s = 8.0
    doc = measured_doc(observed)
    # THEN the splitter's rate is over its 8 working seconds: 4 segments x 1,000 items / 8 s,
    # twice the wall-clock rate, and only the working time per item is priced
    mc = MeasuredCosts.from_dict(json.loads(json.dumps(doc)))
    assert split_rate(observed) == pytest.approx(250.0)
    assert split_working_rate(observed, 4) == pytest.approx(500.0)
    assert mc.splitter_items_per_s == pytest.approx(500.0)
    assert doc["splitter"]["seconds_per_item"] == pytest.approx(8.0 / 1000)
    assert "8.0 s of waiting" in doc["splitter"]["items_per_s_note"]


def test_the_forwarders_own_cpu_time_wins_over_the_workers_and_is_required(observed: Observed) -> None:
    # GIVEN the forwarder workers' CPU time recorded: 2.5 CPU-s over 100 invocations
    observed.functions["forwarder"].cpu_s = 2.5
    per_batch, source = forwarder_cpu(observed, lambda_workers_cpu_s=9.0)
    assert per_batch == pytest.approx(0.025)
    assert "forwarder worker processes' CPU time" in source
    # GIVEN neither: the bench must not fall back on the wall time
    observed.functions["forwarder"].cpu_s = 0.0
    with pytest.raises(ValueError, match="CPU time was not recorded"):
        forwarder_cpu(observed)


def test_the_splitters_cpu_time_is_required(observed: Observed) -> None:
    # GIVEN a run whose splitter CPU time was not recorded: its wall time on the local stack is
    # not what it takes on AWS, so the bench refuses to write measured costs without it
    observed.functions["splitter"].cpu_s = 0.0
    with pytest.raises(ValueError, match="splitter's CPU time was not recorded"):
        measured_doc(observed)


def test_the_splitters_cpu_time_comes_from_the_larger_run_when_there_is_one(observed: Observed) -> None:
    # GIVEN the 1,000-item run (0.5 CPU-s: 0.5 ms per item, start-up included) and a 50,000-item
    # run whose splitter used 15 CPU-s (0.3 ms per item: its start-up spread over more items)
    doc = measured_doc(observed, larger_split=(50_000, 15.0))
    assert doc["splitter"]["cpu_s_per_item"] == pytest.approx(15.0 / 50_000)
    assert "50,000-item P8 run" in doc["splitter"]["cpu_source"]
    # a "larger" run that is not larger, or recorded no CPU time, is not used
    assert splitter_cpu(observed, (500, 15.0))[0] == pytest.approx(0.5 / 1000)
    assert splitter_cpu(observed, (50_000, 0.0))[0] == pytest.approx(0.5 / 1000)


def test_observations_round_trip(observed: Observed) -> None:
    assert observed_from_dict(json.loads(json.dumps(observed_to_dict(observed)))) == observed


# ----------------------------------------------------------------------------- P5 and the no-op endpoint


def test_report_memory_builds_one_row_per_result_with_the_real_reduce(tmp_path: Path) -> None:
    out = build_report(1_000, tmp_path)
    assert out["report_rows"] == 1_000 and out["summary_rows"] == 1_000
    assert out["emails"] == 1


def test_report_memory_grows_only_by_the_part_being_uploaded(tmp_path: Path) -> None:
    """P5 "bounded": the reduce streams. Until the report reaches S3's 5 MiB minimum part, the
    part being uploaded is the report itself, so 20x the results may cost the report's own bytes
    and little else per result: measured 8-9 bytes per result beyond the report here, 16-17 when
    each shard's task records are held in a list instead of streamed."""
    import gc
    import tracemalloc

    build_report(50, tmp_path / "warm-up")  # imports and first-use caches, outside the measurement
    peaks, report_bytes = {}, {}
    for results in (400, 8_000):
        gc.collect()
        tracemalloc.start()
        try:
            out = build_report(results, tmp_path / str(results))
            peaks[results] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert out["report_rows"] == results
        report_bytes[results] = out["report_bytes"]
    beyond_the_report = (peaks[8_000] - peaks[400]) - (report_bytes[8_000] - report_bytes[400])
    assert beyond_the_report < 7_600 * 12, f"{beyond_the_report / 7_600:.1f} bytes per result beyond the report"


def test_noop_result_has_the_real_result_shape() -> None:
    from microservice.domain import credit_score, make_company

    company = make_company(7)
    result = json.loads(noop_result(json.dumps({"item": company}).encode()))
    assert result == {
        "company_id": company["company_id"],
        "score": credit_score(company)[0],
        "band": credit_score(company)[1],
    }
    assert json.loads(noop_result(b'{"item": {"company_id": "C1"}}')) == {"company_id": "C1", "score": 500, "band": "C"}


def test_noop_wrapper_answers_the_task_path_and_passes_the_rest() -> None:
    seen: list[str] = []

    async def real(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = wrap(real, "/tasks/x")
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b'{"item": {"company_id": "C9"}}', "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": "/tasks/x"}, receive, send))
    asyncio.run(app({"type": "http", "method": "POST", "path": "/tasks/x/reduce-part"}, receive, send))
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["company_id"] == "C9"
    assert seen == ["/tasks/x/reduce-part"]
