"""Adaptive concurrency: the AIMD controller's decisions, the forwarder's signals, and the actuator on moto."""

from __future__ import annotations

from typing import Any

import pytest

from microprocess.control.adaptive import (
    METRIC_NAMESPACE,
    SERVICE_DIMENSION,
    AdaptiveConcurrency,
    AimdController,
    AimdSettings,
    Signals,
)
from microprocess.control.scale import EventSourceCap
from tests.functions_harness import JOB, Behaviour, Stack


def controller(ceiling: int = 100, baseline_ms: float | None = None, **kw: Any) -> AimdController:
    return AimdController(AimdSettings(ceiling=ceiling, **kw), baseline_ms=baseline_ms)


def test_throttling_before_any_healthy_minute_halves_then_healthy_intervals_double_back() -> None:
    c = controller(ceiling=100, batch_size=10)
    # No healthy minute yet and 95 % of the pushes answered 429: most batches are all-429 ones, which
    # end at once, so the interval's p90 (10 ms) may be one of them and only bounds the push time from
    # below (50 taken in 60 s x 0.01 s / 10 = 0.0008 batches; the cap's accepted share 100 x 50 / 1000
    # = 5): the cut is the multiplicative one.
    throttled = c.decide(100, Signals(pushes=1000, throttled=950, p90_latency_ms=10))
    assert (throttled.action, throttled.concurrency) == ("decrease", 50)
    assert "950 of 1000 pushes answered 429/503" in throttled.reason and "at least ~5.0 batches" in throttled.reason
    assert c.capacity is None  # a lower bound is not remembered as the capacity
    again = c.decide(50, Signals(pushes=500, throttled=475, p90_latency_ms=10))
    assert again.concurrency == 25
    caps = [25]
    for _ in range(20):
        caps.append(c.decide(caps[-1], Signals(pushes=500, throttled=0, p90_latency_ms=80)).concurrency)
    assert caps[1:4] == [50, 100, 100]  # doubling (slow start): no capacity estimate to slow down near
    assert caps[-1] == 100 and max(caps) == 100  # never above the declared maximum
    assert c.decide(100, Signals(pushes=500, p90_latency_ms=80)).action == "hold"


def test_the_first_throttled_minute_with_most_batches_served_sets_the_cap_to_the_estimate() -> None:
    # GIVEN a job starting at its declared 50 batches of 10 against a service that serves 100 pushes
    # of ~0.5 s at once (bench.adaptive's scenario), no healthy minute seen yet
    c = controller(ceiling=50, batch_size=10)
    # WHEN its first minute has 88 % of the pushes answered 429: under 90 %, so fewer than 90 % of the
    # batches can be all-429 ones and the p90 (620 ms) is the time of a batch with a push served
    d = c.decide(50, Signals(pushes=102_450, throttled=90_550, p90_latency_ms=620))
    # THEN Little's law is trusted as with a healthy baseline: 11,900 taken in 60 s = 198/s x 0.62 s
    # / 10 = 12.3 batches (more than the cap's accepted share, 50 x 11,900 / 102,450 = 5.8); the cap
    # goes straight to the nearest batch (not to the halved 25) and it is remembered
    assert (d.action, d.concurrency) == ("decrease", 12) and c.capacity == 12.0
    assert "the service took ~12.3 batches" in d.reason and "at least" not in d.reason
    assert c.baseline_ms is None  # a throttled interval's p90 is not a healthy baseline
    # AND an estimate that was low (e.g. the run began late in the minute) is climbed back by the
    # healthy intervals: a cap above it taken without a 429 becomes the capacity
    c2 = controller(ceiling=8, batch_size=10)
    low = c2.decide(4, Signals(pushes=95, throttled=60, p90_latency_ms=110, interval_s=3))
    # 35 in 3 s x 0.11 s / 10 = 0.13; 4 x 35 / 95 = 1.5: the floor
    assert (low.action, low.concurrency) == ("decrease", 2)
    healthy = Signals(pushes=600, p90_latency_ms=110, interval_s=3)
    caps = [2]
    for _ in range(4):  # each cap held for 2 healthy intervals (MIN_PROBE_WAIT) before a probe above it
        caps.append(c2.decide(caps[-1], healthy).concurrency)
    assert caps == [2, 2, 3, 3, 4] and c2.capacity == 3.0


def test_with_a_known_push_time_a_throttled_minute_sets_the_cap_to_the_services_capacity() -> None:
    c = controller(ceiling=50, batch_size=10)  # step 2
    healthy = c.decide(10, Signals(pushes=9000, p90_latency_ms=600))
    assert healthy.concurrency == 20 and c.baseline_ms == pytest.approx(600)  # slow start: doubled
    # 50 batches against a service that serves 100 pushes of ~0.5 s at once: most pushes are 429s, and
    # the all-429 batches end at once, so the interval's p90 is 50 ms; the healthy 600 ms is used.
    # Little's law: 12,000 taken in 60 s = 200/s x 0.6 s = 120 pushes in flight = 12 batches of 10
    # (the cap's accepted share is less: 50 x 12,000 / 92,000 = 6.5).
    d = c.decide(50, Signals(pushes=92_000, throttled=80_000, p90_latency_ms=50))
    assert (d.action, d.concurrency, d.capacity) == ("decrease", 12, 12.0)  # not 25: straight to the estimate
    assert "the service took ~12.0 batches" in d.reason and c.capacity == pytest.approx(12.0)
    # the same counts over 30 s: twice the rate, twice the capacity
    assert controller(ceiling=50, batch_size=10, baseline_ms=600).capacity_estimate(
        Signals(pushes=92_000, throttled=80_000, p90_latency_ms=50, interval_s=30), 50
    ) == pytest.approx(24.0)


def test_healthy_minutes_probe_one_batch_above_the_estimated_capacity_and_a_few_429s_hold() -> None:
    c = AimdController(AimdSettings(ceiling=50, batch_size=10), baseline_ms=600, capacity=12.0)
    caps = [6]  # e.g. after a latency back-off: the step (2) back up to the estimate, then 1 at a time,
    for _ in range(7):  # each probe after 2 healthy intervals at the cap below it
        caps.append(c.decide(caps[-1], Signals(pushes=6000, p90_latency_ms=600)).concurrency)
    assert caps == [6, 8, 10, 12, 12, 13, 13, 14]
    near = c.decide(14, Signals(pushes=10_000, throttled=100, p90_latency_ms=600))  # 1 %: under the 2 % threshold
    assert (near.action, near.concurrency) == ("hold", 14) and "at the service's capacity" in near.reason
    # 14 batches proved too many (2 % throttled): back to the 13 taken without a 429
    over = c.decide(14, Signals(pushes=11_300, throttled=300, p90_latency_ms=600))
    assert (over.action, over.concurrency, over.probe_wait) == ("decrease", 13, 4) and c.capacity == 13.0
    # 13 throttled too: 11,000 taken = 183/s x 0.6 s / 10 = 11 batches by Little's law, 13 x 11,000 /
    # 11,300 = 12.7 by the cap's accepted share: the larger, rounded, and at least one below 13
    under = c.decide(13, Signals(pushes=11_300, throttled=300, p90_latency_ms=600))
    assert (under.action, under.concurrency) == ("decrease", 12) and c.capacity == 12.0
    # AND a mild overload is cut to the cap's accepted share: 20 % throttled at 10 -> 8
    mild = AimdController(AimdSettings(ceiling=50, batch_size=10), baseline_ms=100)
    assert mild.decide(10, Signals(pushes=10_000, throttled=2_000, p90_latency_ms=100)).concurrency == 8


def test_throttled_while_the_estimate_shows_room_halves() -> None:
    # 27,000 taken = 450/s x 0.6 s / 10 = 27 batches, yet 10 % throttled at 10: the service is
    # shared or slowing; the estimate says nothing useful, the multiplicative decrease applies.
    c = AimdController(AimdSettings(ceiling=50, batch_size=10), baseline_ms=600)
    d = c.decide(10, Signals(pushes=30_000, throttled=3_000, p90_latency_ms=600))
    assert (d.action, d.concurrency) == ("decrease", 5)


def test_a_latency_climb_against_the_healthy_baseline_decreases() -> None:
    c = controller(ceiling=100)
    for _ in range(3):
        c.decide(40, Signals(pushes=100, p90_latency_ms=100))
    assert c.baseline_ms == pytest.approx(100)
    slow = c.decide(40, Signals(pushes=100, p90_latency_ms=250))
    assert (slow.action, slow.concurrency) == ("decrease", 20)
    assert "above 2 x the healthy 100 ms" in slow.reason
    assert c.baseline_ms == pytest.approx(100)  # an overloaded interval does not move the baseline
    drift = c.decide(20, Signals(pushes=100, p90_latency_ms=150))  # within 2x: healthy, followed
    assert drift.action == "increase" and c.baseline_ms == pytest.approx(110)


def test_push_time_near_the_task_timeout_decreases_without_a_baseline() -> None:
    settings = AimdSettings.for_job(JOB)  # task_timeout_s 10 -> limit 8,000 ms
    c = AimdController(settings)
    d = c.decide(JOB.max_concurrency, Signals(pushes=100, p90_latency_ms=9000))
    assert d.action == "decrease" and "near the task timeout" in d.reason


@pytest.mark.parametrize(
    ("current", "signals", "expected"),
    [
        (2, Signals(pushes=100, throttled=100), (2, "hold")),  # never below the event source's floor
        (3, Signals(pushes=100, throttled=100), (2, "decrease")),
        (60, Signals(pushes=5, throttled=5), (60, "hold")),  # too few pushes to judge
        (60, Signals(pushes=0), (25, "decrease")),  # idle: the next run starts at a quarter (slow start)
        (20, Signals(pushes=0), (20, "hold")),  # idle, already at or below it
        (500, Signals(pushes=100), (100, "hold")),  # a cap above the declared maximum is brought back
        (98, Signals(pushes=100, p90_latency_ms=10), (100, "increase")),
    ],
)
def test_decisions_stay_within_the_floor_and_the_declared_maximum(
    current: int, signals: Signals, expected: tuple[int, str]
) -> None:
    d = controller(ceiling=100).decide(current, signals)
    assert (d.concurrency, d.action) == expected


class FakeScaler:
    def __init__(self, cap: int | None) -> None:
        self.concurrency = cap
        self.sets: list[int] = []

    def cap(self, job: Any) -> EventSourceCap:
        return EventSourceCap(job.name, "u", "arn", "fn", self.concurrency, "Enabled", job.max_concurrency)

    def set(self, job: Any, n: int) -> tuple[EventSourceCap, EventSourceCap]:
        before = self.cap(job)
        self.concurrency = n
        self.sets.append(n)
        return before, self.cap(job)


def test_the_actuator_applies_decisions_to_the_mapping_and_emits_them() -> None:
    scaler = FakeScaler(cap=None)  # unset: AWS's default, taken as the declared maximum
    emitted: list[tuple[str, float, str]] = []
    signals = iter([Signals(pushes=400, throttled=380), Signals(pushes=400, p90_latency_ms=50)])
    adaptive = AdaptiveConcurrency(
        jobs=[JOB],
        scaler=scaler,  # type: ignore[arg-type]
        signals=lambda job: next(signals),
        emit=lambda name, value, job, **_: emitted.append((name, value, job)),
    )
    first = adaptive.tick()[JOB.name]
    assert (first.previous, first.concurrency) == (JOB.max_concurrency, JOB.max_concurrency // 2)
    second = adaptive.tick()[JOB.name]
    assert second.action == "increase" and scaler.sets == [25, 50]  # slow start: doubled
    assert ("ConcurrencyDecreased", 1, JOB.name) in emitted and ("ConcurrencyIncreased", 1, JOB.name) in emitted
    assert ("EffectiveConcurrency", 50, JOB.name) in emitted


def test_the_forwarder_emits_pushes_throttles_and_push_time_per_job(stack: Stack) -> None:
    stack.service.behaviours["C0000001"] = Behaviour(status=429, retry_after="1")
    stack.service.behaviours["C0000002"] = Behaviour(status=503)
    stack.split({"job": JOB.name, "run_id": "r1", "items": [{"company_id": f"C{i:07d}"} for i in range(5)]})
    stack.forwarder().handle({"Records": stack.receive(stack.task_queue)})
    assert stack.metric("ServicePushes") == 5
    assert stack.metric("ServiceThrottled") == 2
    assert stack.metric("PushBatchMilliseconds") > 0


def test_the_metric_names_match_the_stacks_contract() -> None:
    from infra import contract

    assert METRIC_NAMESPACE == contract.METRIC_NAMESPACE
    assert SERVICE_DIMENSION == (contract.SERVICE_DIMENSION, contract.POWERTOOLS_SERVICE)


class FakeCloudWatch:
    """GetMetricData in the shape AWS answers (moto computes no percentiles)."""

    def __init__(self, values: dict[str, list[float]]) -> None:
        self.values = values
        self.requests: list[dict[str, Any]] = []

    def get_metric_data(self, **kw: Any) -> dict[str, Any]:
        self.requests.append(kw)
        return {
            "MetricDataResults": [
                {"Id": q["Id"], "Label": q["Id"], "Values": self.values.get(q["Id"], []), "StatusCode": "Complete"}
                for q in kw["MetricDataQueries"]
            ]
        }


def test_signals_are_read_from_the_jobs_metrics_of_the_last_interval() -> None:
    from microprocess.control.adaptive import CloudWatchSignals

    cw = FakeCloudWatch({"pushes": [1200.0], "throttled": [36.0], "shed": [8.0], "p90": [412.5]})
    signals = CloudWatchSignals(cw, window_s=60)(JOB.name)
    assert signals == Signals(pushes=1200, throttled=36, p90_latency_ms=412.5, interval_s=60, shed=8)
    assert CloudWatchSignals(FakeCloudWatch({}), window_s=120)(JOB.name).interval_s == 120
    (request,) = cw.requests
    stats = {
        q["Id"]: (q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"])
        for q in request["MetricDataQueries"]
    }
    assert stats == {
        "pushes": ("ServicePushes", "Sum"),
        "throttled": ("ServiceThrottled", "Sum"),
        "shed": ("ServiceShed", "Sum"),
        "p90": ("PushBatchMilliseconds", "p90"),
    }
    dims = request["MetricDataQueries"][0]["MetricStat"]["Metric"]["Dimensions"]
    assert {"Name": "job", "Value": JOB.name} in dims
    assert (request["EndTime"] - request["StartTime"]).total_seconds() == 60
    assert CloudWatchSignals(FakeCloudWatch({}))(JOB.name) == Signals(pushes=0, throttled=0, p90_latency_ms=None)


def test_a_throttled_probe_returns_to_the_known_capacity_and_probes_half_as_often() -> None:
    # GIVEN a service that serves 3 batches of 10 (30 pushes of 0.1 s at once) and a controller
    # that knows its push time (100 ms) and has just seen 3 batches go through without a 429
    c = AimdController(AimdSettings(ceiling=8, batch_size=10), baseline_ms=100, capacity=2.0)
    healthy = Signals(pushes=1_000, p90_latency_ms=100, interval_s=3)
    at3 = c.decide(3, healthy)
    assert c.capacity == 3.0  # 3 batches were taken without a 429: the capacity is at least 3
    # the interval right after a change is partly at the old cap: the probe comes after a second one
    assert (at3.action, at3.concurrency, at3.probe_wait, at3.streak) == ("hold", 3, 2, 1)
    assert c.decide(3, healthy).concurrency == 4
    # WHEN the probe at 4 is throttled (Little's law: 600 taken in 3 s x 0.1 s / 10 = 2 batches,
    # within a batch of the known 3)
    over = c.decide(4, Signals(pushes=800, throttled=200, p90_latency_ms=100, interval_s=3))
    # THEN back to the known 3 (not to the noisy 2), and the next probe waits for 4 healthy intervals
    assert (over.action, over.concurrency, over.probe_wait) == ("decrease", 3, 4)
    assert "back to its known capacity of 3" in over.reason and c.capacity == 3.0
    held = [c.decide(3, healthy) for _ in range(3)]
    assert [(d.action, d.concurrency, d.streak) for d in held] == [("hold", 3, 1), ("hold", 3, 2), ("hold", 3, 3)]
    assert "probing above it after 4 healthy intervals (1 so far)" in held[0].reason
    assert c.decide(3, healthy).concurrency == 4
    # AND each throttled probe doubles the wait, up to the cap
    waits = []
    for _ in range(6):
        waits.append(c.decide(4, Signals(pushes=800, throttled=200, p90_latency_ms=100, interval_s=3)).probe_wait)
    assert waits == [8, 16, 16, 16, 16, 16]
    # AND when the service grows, a probe that goes through makes the next one come after the least
    # wait again (2 healthy intervals: a growing service is climbed a batch every 2 intervals)
    for _ in range(16):
        last = c.decide(3, healthy)
    assert (last.action, last.concurrency) == ("increase", 4)
    grown = c.decide(4, healthy)
    assert (grown.action, grown.concurrency, grown.probe_wait, c.capacity) == ("hold", 4, 2, 4.0)
    assert c.decide(4, healthy).concurrency == 5


def test_a_throttled_interval_at_the_known_capacity_trusts_the_estimate_again() -> None:
    # The service got slower or smaller: 12 known, a probe at 13 throttled goes back to 12 first...
    c = AimdController(AimdSettings(ceiling=50, batch_size=10), baseline_ms=500, capacity=12.0, probe_wait=8)
    # 6,000 taken = 100/s x 0.5 s / 10 = 5 batches by Little's law; at 12, 12 x 6,000 / 7,000 = 10.3
    slow = Signals(pushes=7_000, throttled=1_000, p90_latency_ms=500)
    probe = c.decide(13, slow)
    assert (probe.action, probe.concurrency, probe.probe_wait) == ("decrease", 12, 16)
    # ...and when 12 is throttled too, the estimate is taken: 10, probing again after 2 healthy intervals
    d = c.decide(12, slow)
    assert (d.action, d.concurrency, d.capacity, d.probe_wait) == ("decrease", 10, 10.0, 2)


def test_a_run_starts_slow_and_the_next_run_starts_at_the_capacity_learned() -> None:
    c = controller(ceiling=50, batch_size=10)
    # GIVEN the job idle before its first run, at its declared 50: lowered to a quarter, 12
    idle = c.decide(50, Signals(pushes=0))
    assert (idle.action, idle.concurrency) == ("decrease", 12) and "slow start" in idle.reason
    # WHEN the run's intervals are healthy, THEN the cap doubles (capacity not known yet), up to 50
    assert c.decide(12, Signals(pushes=6_000, p90_latency_ms=500)).concurrency == 24
    # AND the first throttled interval sets it to the estimate: 24 x 18,000 / 24,000 = 18 (Little's
    # law: 300/s x 0.5 s / 10 = 15)
    d = c.decide(24, Signals(pushes=24_000, throttled=6_000, p90_latency_ms=500))
    assert (d.concurrency, d.capacity) == (18, 18.0)
    # AND idle again after the run, the next run starts at the capacity learned, not at a quarter
    assert c.decide(18, Signals(pushes=0)).concurrency == 18
    assert c.decide(50, Signals(pushes=0)).concurrency == 18
    assert c.start_cap() == 18


def test_a_shed_window_holds_the_cap_and_the_capacity_and_the_decisions_resume_after() -> None:
    # GIVEN a controller that knows the service takes 40 batches
    c = AimdController(AimdSettings(ceiling=100))
    c.capacity, c.baseline_ms = 40.0, 100.0
    # WHEN the service starts shedding: the batches in flight answered 503 Retry-After: 120 (10 % of
    # the interval's pushes: read as throttling, a cut to the estimate)
    start = c.decide(40, Signals(pushes=480, shed=48, p90_latency_ms=100.0))
    # THEN neither the cap nor the capacity moves
    assert (start.concurrency, start.action, start.capacity) == (40, "hold", 40.0)
    assert "shed" in start.reason
    # WHEN the wait holds (no push at all: not idleness, which lowers a cap to where a run starts)
    fresh = AimdController(AimdSettings(ceiling=100))
    assert fresh.decide(60, Signals(pushes=0)).concurrency == 25  # idle: slow start
    quiet = fresh.decide(60, Signals(pushes=0, waiting=True))
    assert (quiet.concurrency, quiet.action) == (60, "hold") and "wait" in quiet.reason
    # AND after the wait the decisions resume: a healthy interval grows the cap again
    after = fresh.decide(60, Signals(pushes=600, p90_latency_ms=100.0))
    assert after.action == "increase" and after.concurrency > 60
    # AND a plain 429 is still throttling
    assert c.decide(40, Signals(pushes=480, throttled=48, p90_latency_ms=100.0)).concurrency < 40


def test_a_job_s_own_controller_sees_its_service_s_wait_too() -> None:
    from microprocess.control.scheduled import waiting_too
    from microprocess.pipeline.shedding import ServiceWaits

    class Marks:
        until: float | None = None

        def get_item(self, TableName: str, Key: dict[str, Any]) -> dict[str, Any]:
            return {"Item": {"until": {"N": str(self.until)}}} if self.until else {}

    marks = Marks()
    waits = ServiceWaits(marks, "ledger", ttl_s=0, clock=lambda: 1000.0)
    signals = waiting_too(lambda _job: Signals(pushes=0), waits, JOB)
    assert signals(JOB.name).waiting is False
    marks.until = 1100.0  # the service asked every job to wait until then
    assert signals(JOB.name).waiting is True
    c = AimdController(AimdSettings.for_job(JOB))
    assert c.decide(JOB.max_concurrency, signals(JOB.name)).concurrency == JOB.max_concurrency  # held, not idle
