"""The local stack's adaptive-concurrency signals, read from canned EMF log lines."""

from __future__ import annotations

import json
from typing import Any

from microprocess.local.emulator import log_messages
from microprocess.local.signals import LogSignals, emf_metrics, percentile, signals_from_messages

JOB = "credit-scores"


def emf(name: str, value: float, *, job: str = JOB, ts: int = 1_000_000, namespace: str = "Microprocess") -> str:
    """A line as the forwarder's Powertools `single_metric` writes it."""
    doc = {
        "_aws": {
            "Timestamp": ts,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [["job", "service"]],
                    "Metrics": [{"Name": name, "Unit": "Count"}],
                }
            ],
        },
        "job": job,
        "service": "microprocess",
        name: [value],
    }
    return json.dumps(doc, separators=(",", ":"))


def batch(pushes: int, throttled: int, ms: float, **kw: Any) -> list[str]:
    lines = [emf("ServicePushes", pushes, **kw), emf("PushBatchMilliseconds", ms, **kw)]
    if throttled:  # the emitter skips zeros
        lines.append(emf("ServiceThrottled", throttled, **kw))
    return lines


def test_sums_the_counts_and_takes_the_p90_of_the_batch_times() -> None:
    lines = ["START RequestId: x", "REPORT RequestId: x Duration: 12.0 ms"]
    for i in range(10):
        lines += batch(10, 3 if i < 4 else 0, 100.0 + 10 * i)
    s = signals_from_messages(lines, JOB, interval_s=5.0)
    assert (s.pushes, s.throttled, s.interval_s) == (100, 12, 5.0)
    assert s.p90_latency_ms == 180.0  # nearest rank: the 9th of 10
    assert s.throttled_ratio == 0.12


def test_shed_answers_are_their_own_signal_not_throttling() -> None:
    lines = [*batch(10, 0, 90.0), emf("ServiceShed", 4.0), *batch(10, 2, 80.0)]
    s = signals_from_messages(lines, JOB, interval_s=5.0)
    assert (s.pushes, s.throttled, s.shed, s.accepted) == (20, 2, 4, 14)


def test_keeps_only_the_job_the_namespace_and_the_window() -> None:
    lines = [
        *batch(10, 10, 50.0, job="other"),
        *batch(10, 10, 50.0, namespace="Else"),
        *batch(10, 0, 70.0, ts=999),  # before the window
        *batch(10, 0, 70.0, ts=2000),  # at its end (excluded)
        *batch(10, 2, 30.0, ts=1000),
        "not json {",
        '{"_aws": "broken"}',
    ]
    s = signals_from_messages(lines, JOB, interval_s=1.0, start_ms=1000, end_ms=2000)
    assert (s.pushes, s.throttled, s.p90_latency_ms) == (10, 2, 30.0)


def test_no_lines_no_pushes() -> None:
    s = signals_from_messages([], JOB, interval_s=5.0)
    assert (s.pushes, s.throttled, s.p90_latency_ms) == (0, 0, None)
    assert percentile([], 90) is None and percentile([5.0], 90) == 5.0
    assert emf_metrics("REPORT RequestId: x") is None


def test_a_prefixed_line_is_read() -> None:
    found = emf_metrics("2026-01-01T00:00:00Z\t" + emf("ServicePushes", 3))
    assert found is not None and found[1] == {"ServicePushes": [3.0]}


class FakeLogs:
    """filter_log_events over canned events, answering at most `limit` and no continuation (as the emulator)."""

    class exceptions:
        class ResourceNotFoundException(Exception):
            pass

    def __init__(self, events: list[tuple[int, str]]) -> None:
        self.events = events
        self.calls: list[tuple[int, int]] = []

    def filter_log_events(self, *, logGroupName: str, startTime: int, endTime: int, limit: int) -> dict[str, Any]:
        if logGroupName != "/aws/lambda/fwd":
            raise self.exceptions.ResourceNotFoundException()
        self.calls.append((startTime, endTime))
        found = [{"timestamp": t, "message": m} for t, m in self.events if startTime <= t <= endTime]
        return {"events": found[:limit]}


def test_log_signals_read_the_last_window_and_split_a_full_answer() -> None:
    now_s = 100.0
    events = []
    for i in range(30):  # one batch line set every 200 ms over the last 6 s
        ts = int(now_s * 1000) - 6000 + 200 * i
        events += [(ts, line) for line in batch(10, 1, 40.0, ts=ts)]
    logs = FakeLogs(events)
    signals = LogSignals(logs=logs, log_group="/aws/lambda/fwd", window_s=5.0, now=lambda: now_s)
    s = signals(JOB)
    assert s.pushes == 250 and s.throttled == 25 and s.p90_latency_ms == 40.0 and s.interval_s == 5.0  # 25 batches
    # the emulator's limit: a full answer is halved until it fits, and nothing is lost
    assert log_messages(logs, "/aws/lambda/fwd", 0, 200_000, limit=7) == [m for _, m in events]
    assert LogSignals(logs=logs, log_group="/none")(JOB).pushes == 0
