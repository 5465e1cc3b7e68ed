"""`microprocess plan`: the wall-time and cost model, the 19 M example by hand, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from microprocess.cli import planner
from microprocess.cli.planner import (
    MeasuredCosts,
    PlanError,
    ceiling_items_per_s,
    plan_job,
    plan_run,
    splitter_invocations,
    wall_time,
)
from microprocess.cli.pricing import PriceTable, Usage, load_price_table
from microprocess.declarations import UnknownJobError
from tests.declared import CREDIT_SCORES

#: Hand-written measurements, so that the expected numbers below can be checked by hand.
MEASURED = {
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
    "forwarder": {"memory_mb": 512, "batch_size": 10, "batches_per_item": 0.1, "overhead_s_per_batch": 0.1},
    "splitter": {"memory_mb": 1024, "items_per_s": 500, "seconds_per_item": 0.002, "timeout_s": 900, "margin_s": 60},
    "ledger": {"hottest_item_write_units_per_1000": 10.0, "hottest_partition_key_write_units_per_1000": 62.5},
}


@pytest.fixture
def measured() -> MeasuredCosts:
    return MeasuredCosts.from_dict(MEASURED)


@pytest.fixture
def prices() -> PriceTable:
    return load_price_table()


def test_the_seed_example_19m_companies_at_half_a_second(measured: MeasuredCosts, prices: PriceTable) -> None:
    # GIVEN the seed: 19 M companies, 0.5 s per task, the job's concurrency (50)
    plan = plan_run(CREDIT_SCORES, 19_000_000, measured=measured, prices=prices, task_seconds=0.5)

    # THEN (by hand) a batch of 10 lasts 0.5 + 0.1 s, so one concurrent batch moves 16.667 items/s;
    # the ramp 5 -> 50 at 5 per second takes 9 s and moves 16.667 * (5*9 + 5*81/2) = 4,125 items;
    # the rest goes at 50 * 16.667 = 833.33 items/s: 9 + (19e6 - 4125) / 833.33 = 22,804.05 s.
    assert plan.concurrency == 50
    assert plan.wall.ramp_seconds == pytest.approx(9.0)
    assert plan.wall.peak_items_per_s == pytest.approx(833.333, rel=1e-6)
    assert plan.wall.bottleneck == "concurrency"
    assert plan.wall.seconds == pytest.approx(22_804.05, abs=0.01)
    # The splitter: (900 - 60) s * 500 items/s = 420,000 items per invocation -> 46 invocations.
    assert (plan.splitter_invocations, plan.splitter_continuations) == (46, 45)
    assert plan.split_seconds == pytest.approx(38_000.0)
    # Cost: SQS 5.7 M requests; Lambda 1.9 M + 46 requests and 570,000 + 38,000 GB-s;
    # DynamoDB 22.8 M write units and 380,000 read units; S3 52 PUT + 48 GET; 1 email; 1.9 GB of logs.
    assert plan.cost["sqs"] == pytest.approx(2.28)
    assert plan.cost["lambda"] == pytest.approx(1_900_046 * 0.2e-6 + 608_000 * 0.0000166667)
    assert plan.cost["dynamodb"] == pytest.approx(14.25 + 0.0475)
    assert plan.cost["s3"] == pytest.approx(0.00026 + 0.0000192)
    assert plan.cost["ses"] == pytest.approx(0.0001)
    assert plan.cost["logs"] == pytest.approx(0.95)
    assert plan.total_usd == pytest.approx(28.041242, abs=1e-5)
    assert plan.usd_per_million == pytest.approx(1.475855, abs=1e-5)


def test_at_full_concurrency_the_ramp_takes_three_minutes(measured: MeasuredCosts, prices: PriceTable) -> None:
    plan = plan_run(CREDIT_SCORES, 19_000_000, measured=measured, prices=prices, concurrency=1000, task_seconds=0.5)
    # (1000 - 5) / 5 = 199 s of ramp; then 1000 * 16.667 = 16,667 items/s, under the ledger's 100,000.
    assert plan.wall.ramp_seconds == pytest.approx(199.0)
    ramp_items = (10 / 0.6) * (5 * 199 + 5 * 199**2 / 2)
    assert plan.wall.seconds == pytest.approx(199 + (19e6 - ramp_items) / (1000 * 10 / 0.6))
    assert plan.wall.bottleneck == "concurrency"


def test_the_ledger_caps_throughput_when_its_hottest_item_is_hot(measured: MeasuredCosts, prices: PriceTable) -> None:
    hot = MeasuredCosts.from_dict(
        {**MEASURED, "ledger": {**MEASURED["ledger"], "hottest_item_write_units_per_1000": 100}}
    )
    plan = plan_run(CREDIT_SCORES, 19_000_000, measured=hot, prices=prices, concurrency=1000, task_seconds=0.1)
    assert ceiling_items_per_s(100) == 10_000
    assert plan.wall.bottleneck == "ledger"
    assert plan.wall.peak_items_per_s == pytest.approx(10_000)


def test_the_closed_form_matches_a_numeric_integration() -> None:
    k, c_max, ceiling, n = 8.0, 400, 2500.0, 300_000
    model = wall_time(n, concurrency=c_max, items_per_s_per_batch=k, ceiling_items_per_s=ceiling)
    done, t, dt = 0.0, 0.0, 0.01
    while done < n:
        done += min(k * min(5 + 5 * t, c_max), ceiling) * dt
        t += dt
    assert model.seconds == pytest.approx(t, abs=0.05)


def test_a_small_run_ends_during_the_ramp() -> None:
    w = wall_time(100, concurrency=1000, items_per_s_per_batch=10.0, ceiling_items_per_s=math.inf)
    # 10 * (5 t + 2.5 t^2) = 100  ->  t^2 + 2 t - 4 = 0  ->  t = sqrt(5) - 1
    assert w.seconds == pytest.approx(math.sqrt(5) - 1)
    assert w.seconds == w.ramp_seconds


@pytest.mark.parametrize("items", [1, 10, 1_000, 100_000, 1_000_000, 19_000_000])
def test_more_items_never_take_less_time_nor_cost_less(measured: MeasuredCosts, prices: PriceTable, items: int) -> None:
    a = plan_run(CREDIT_SCORES, items, measured=measured, prices=prices)
    b = plan_run(CREDIT_SCORES, items * 2, measured=measured, prices=prices)
    assert b.wall.seconds > a.wall.seconds
    assert b.total_usd > a.total_usd


def test_more_concurrency_is_never_slower_and_slower_tasks_never_faster(
    measured: MeasuredCosts, prices: PriceTable
) -> None:
    times = [
        plan_run(CREDIT_SCORES, 5_000_000, measured=measured, prices=prices, concurrency=c).wall.seconds
        for c in (2, 5, 50, 300, 1000)
    ]
    assert times == sorted(times, reverse=True)
    slow = [
        plan_run(CREDIT_SCORES, 5_000_000, measured=measured, prices=prices, task_seconds=s)
        for s in (0.0, 0.1, 0.5, 2.0)
    ]
    assert [p.wall.seconds for p in slow] == sorted(p.wall.seconds for p in slow)
    assert [p.cost["lambda"] for p in slow] == sorted(p.cost["lambda"] for p in slow)
    # Concurrency changes the time, not the bill.
    costs = {
        round(plan_run(CREDIT_SCORES, 10**6, measured=measured, prices=prices, concurrency=c).total_usd, 9)
        for c in (2, 1000)
    }
    assert len(costs) == 1


def test_splitter_invocations_follow_the_time_limit() -> None:
    assert splitter_invocations(1, items_per_s=500, timeout_s=900, margin_s=60) == (1, 0)
    assert splitter_invocations(420_000, items_per_s=500, timeout_s=900, margin_s=60) == (1, 0)
    assert splitter_invocations(420_001, items_per_s=500, timeout_s=900, margin_s=60) == (2, 1)
    with pytest.raises(PlanError):
        splitter_invocations(10, items_per_s=500, timeout_s=60, margin_s=60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"items": 0}, "--items must be at least 1"),
        ({"items": -5}, "--items must be at least 1"),
        ({"items": 10, "concurrency": 1}, "--concurrency must be 2..1000"),
        ({"items": 10, "concurrency": 1001}, "--concurrency must be 2..1000"),
        ({"items": 10, "task_seconds": -1}, "--task-seconds must be 0 or more"),
    ],
)
def test_bad_numbers_are_refused_with_the_option_named(
    measured: MeasuredCosts, prices: PriceTable, kwargs: dict, message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        plan_job("credit-scores", measured=measured, prices=prices, **kwargs)


def test_an_unknown_job_is_refused_with_the_declared_ones(measured: MeasuredCosts) -> None:
    with pytest.raises(UnknownJobError, match="credit-scores"):
        plan_job("no-such-job", 10, measured=measured)


def test_incomplete_measurements_say_to_run_the_bench(tmp_path: Path) -> None:
    broken = tmp_path / "m.json"
    broken.write_text(json.dumps({k: v for k, v in MEASURED.items() if k != "ledger"}))
    with pytest.raises(PlanError, match="make bench"):
        planner.load_measured_costs(broken)
    with pytest.raises(PlanError, match="missing"):
        planner.load_measured_costs(tmp_path / "absent.json")


def test_the_committed_measurements_load_and_plan() -> None:
    measured = planner.load_measured_costs()
    plan = plan_job("credit-scores", 19_000_000, task_seconds=0.5, measured=measured)
    assert measured.items > 0 and measured.cores > 0
    assert plan.wall.seconds > 19_000_000 / (1000 * 10 / 0.5)  # never faster than 1,000 batches of 10 at 0.5 s
    assert 0 < plan.usd_per_million < 100
    assert set(plan.cost) == {"sqs", "lambda", "dynamodb", "s3", "ses", "logs"}


# ----------------------------------------------------------------------------- the command


def _cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> typer.Typer:
    path = tmp_path / "measured_costs.json"
    path.write_text(json.dumps(MEASURED))
    monkeypatch.setattr(planner, "MEASURED_COSTS_PATH", path)
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """A group, as the real CLI is."""

    planner.register(app)
    return app


def test_plan_command_prints_the_wall_time_and_the_cost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = _cli(monkeypatch, tmp_path)
    result = CliRunner().invoke(app, ["plan", "credit-scores", "--items", "19000000", "--task-seconds", "0.5"])
    assert result.exit_code == 0, result.output
    assert "6.33 h" in result.output
    assert "28.04" in result.output
    assert "bound by concurrency" in result.output


def test_plan_command_warns_when_a_partition_key_would_be_hot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = _cli(monkeypatch, tmp_path)
    # 1,000 concurrent batches of 10 at 0.6 s: 16,667 items/s, above the 16,000 a key at 62.5 per 1,000 takes.
    result = CliRunner().invoke(app, ["plan", "credit-scores", "--items", "19000000", "--concurrency", "1000"])
    assert result.exit_code == 0, result.output
    assert "warning: the hottest ledger partition key" in result.output
    calm = CliRunner().invoke(app, ["plan", "credit-scores", "--items", "19000000"])
    assert "warning" not in calm.output


def test_plan_command_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = _cli(monkeypatch, tmp_path)
    result = CliRunner().invoke(
        app, ["plan", "credit-scores", "--items", "19000000", "--concurrency", "1000", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["concurrency"] == 1000 and data["items"] == 19_000_000
    assert data["splitter_continuations"] == 45
    assert data["total_usd"] == pytest.approx(28.0412, abs=1e-3)  # concurrency changes the time, not the bill


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "nope", "--items", "10"], "unknown job 'nope'"),
        (["plan", "credit-scores", "--items", "0"], "--items must be at least 1"),
        (["plan", "credit-scores", "--items", "10", "--concurrency", "5000"], "--concurrency must be 2..1000"),
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
