"""The forwarder's promises in the README, each pinned with known inputs and known outputs:

* cancel is prompt: a warm forwarder re-reads run status at least every 2 s, as deployed
  (the defaults `runtime.forwarder()` builds it with, no test-only lifetime);
* `Retry-After` is honoured in both forms RFC 9110 allows (delta-seconds and an HTTP date);
* retries back off exponentially *with jitter* on the message's visibility.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from microprocess.pipeline import admission as admission_module
from microprocess.pipeline.admission import RunCache
from microprocess.pipeline.envelope import TaskEnvelope
from microprocess.pipeline.forwarder import Forwarder
from microprocess.pipeline.push import HttpPusher, parse_retry_after
from microprocess.pipeline.resend import MAX_VISIBILITY_S, backoff_seconds
from tests.functions_harness import JOB, REGISTRY, SECRET, Behaviour, Stack

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms
#: The README: "The forwarder re-reads run status at least every 2 s".
STATUS_REREAD_S = 2.0


class FakeClock:
    """Stands in for the `time` module of the run cache: `monotonic()` moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(admission_module, "time", fake)  # the run cache's clock
    return fake


def default_forwarder(st: Stack) -> Forwarder:
    """A forwarder built the way `runtime.forwarder()` builds it: every tuning at its default."""
    return Forwarder(
        jobs=REGISTRY,
        ledger=st.ledger,
        pusher=HttpPusher(st.service.url, lambda: SECRET),
        sqs=st.sqs,
        s3=st.s3,
        task_queue_url=st.task_queue,
        dead_letter_queue_url=st.dlq,
        sender=st.sender,
    )


def enqueued(st: Stack, n: int, run_id: str = "r1") -> list[dict[str, Any]]:
    """Start a run of n companies with the real splitter; its n task records as the event source delivers them."""
    items = [{"company_id": f"C{i:07d}"} for i in range(n)]
    st.splitter().handle({"job": JOB.name, "run_id": run_id, "items": items}, ENOUGH_TIME)
    records: list[dict[str, Any]] = []
    while len(records) < n:
        records += st.receive(st.task_queue)
    return sorted(records, key=lambda r: TaskEnvelope.parse(r["body"]).task_id)


# ------------------------------------------------------------------ cancel is prompt


def test_a_cancel_reaches_a_warm_forwarder_within_2_s(stack: Stack, clock: FakeClock) -> None:
    # GIVEN a warm forwarder, built as deployed, that has just pushed two tasks of a RUNNING run
    records = enqueued(stack, 6)
    forwarder = default_forwarder(stack)
    assert forwarder.handle({"Records": records[:2]}) == {"batchItemFailures": []}
    assert len(stack.service.task_calls()) == 2
    # WHEN the run is cancelled and 2 s pass
    assert stack.ledger.cancel("r1")
    clock.now += STATUS_REREAD_S
    # THEN the next batch of the run is acknowledged without a single call
    assert forwarder.handle({"Records": records[2:]}) == {"batchItemFailures": []}
    assert len(stack.service.task_calls()) == 2


def test_the_run_cache_rereads_a_run_at_least_every_2_s(stack: Stack, clock: FakeClock) -> None:
    # GIVEN a run cache with its default lifetime that has read a RUNNING run
    stack.splitter().handle({"job": JOB.name, "run_id": "r1", "items": [{"company_id": "C1"}]}, ENOUGH_TIME)
    cache = RunCache(stack.ledger)
    assert str(cache.get("r1").status) == "RUNNING"  # type: ignore[union-attr]
    # WHEN the run is cancelled and 2 s pass
    stack.ledger.cancel("r1")
    clock.now += STATUS_REREAD_S
    # THEN the cache gives the cancelled run
    assert str(cache.get("r1").status) == "CANCELLED"  # type: ignore[union-attr]


# ------------------------------------------------------------------ the push request


def test_the_push_is_a_signed_post_of_run_task_attempt_and_item(stack: Stack) -> None:
    # GIVEN the second delivery of the first task of run r1
    [record] = enqueued(stack, 1)
    record["attributes"]["ApproximateReceiveCount"] = "2"
    # WHEN the forwarder pushes it
    assert stack.forwarder().handle({"Records": [record]}) == {"batchItemFailures": []}
    # THEN the service got one POST (signed: the stand-in answers 401 otherwise) on the job's task path,
    # keyed <run>:<task>, whose body carries the run, the task, the attempt and the item
    [call] = stack.service.calls
    assert stack.service.bad_signatures == 0
    assert (call["path"], call["key"]) == (JOB.task_path, "r1:0-000000000")
    assert call["payload"] == {
        "run_id": "r1",
        "task_id": "0-000000000",
        "attempt": 2,
        "item": {"company_id": "C0000000"},
        "job": JOB.name,
        "shard": 0,  # BLAKE2b of "0-000000000" is f125...f228; 0x28 = 40, and 40 mod 4 shards = 0
        "kind": "task",
        "params": {},  # the run was started without --param
    }


# ------------------------------------------------------------------ Retry-After


def http_date_in(seconds: float) -> str:
    """An IMF-fixdate `seconds` from now, as a server writes `Retry-After`."""
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("-5", None),  # not delay-seconds (RFC 9110: 1*DIGIT): ignored, never a negative wait
        ("Fri, 31 Dec 1999 23:59:59 GMT", 0.0),  # RFC 9110's own example: a date in the past is "now"
        ("", None),
        (None, None),
        ("soon", None),
    ],
)
def test_retry_after_worked_examples(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date_is_the_seconds_until_that_date() -> None:
    # GIVEN a date one hour ahead, to the second (an HTTP date has no fractions)
    waited = parse_retry_after(http_date_in(3600))
    # THEN the wait is that hour, less the fraction of a second the date dropped (and this test's own time)
    assert waited is not None and 3590 <= waited <= 3600


def test_the_forwarder_honours_an_http_date_retry_after(stack: Stack) -> None:
    # GIVEN a service that answers 503 with `Retry-After: <a date 90 s ahead>`
    stack.service.behaviours["C0000000"] = Behaviour(status=503, retry_after=http_date_in(90))
    [record] = enqueued(stack, 1)
    # WHEN the forwarder pushes the task
    result = stack.forwarder().handle({"Records": [record]})
    # THEN the task comes back in about those 90 s (not the 1-2 s of a first backoff): re-sent
    # with that delay, not counted (the job's throttle budget)
    assert result == {"batchItemFailures": []}
    [copy] = stack.sqs.sent
    assert 80 <= copy["DelaySeconds"] <= 91


# ------------------------------------------------------------------ backoff with jitter


class PinnedRandom(random.Random):
    """`uniform(a, b)` returns the point `share` of the way from a to b (0: a, 1: b)."""

    def __init__(self, share: float) -> None:
        super().__init__(0)
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + self.share * (b - a)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "share", "delay"),
    [
        # no Retry-After: base 2 s x 2^(attempt-1), capped at 900 s, times a jitter factor in [0.5, 1]
        (1, None, 0.0, 1),  # 2 x 0.5
        (1, None, 1.0, 2),  # 2 x 1
        (3, None, 0.0, 4),  # 8 x 0.5
        (3, None, 0.5, 6),  # 8 x 0.75
        (3, None, 1.0, 8),  # 8 x 1
        (5, None, 0.0, 16),  # 32 x 0.5
        (20, None, 0.0, 450),  # capped: 900 x 0.5
        (20, None, 1.0, 900),  # capped: 900 x 1
        # Retry-After: the service's wait plus up to 1 s, at least 1 s, at most SQS's 12 h
        (1, 37.0, 0.0, 37),
        (1, 37.0, 1.0, 38),
        (4, 0.0, 0.0, 1),
        (1, 100_000.0, 0.0, MAX_VISIBILITY_S),
    ],
)
def test_backoff_worked_examples(attempt: int, retry_after: float | None, share: float, delay: int) -> None:
    assert backoff_seconds(attempt, retry_after, base=2, cap=900, rng=PinnedRandom(share)) == delay


def test_backoff_jitter_spreads_the_retries_of_one_attempt() -> None:
    # GIVEN 200 tasks failing their 4th attempt at once (16 s before jitter)
    rng = random.Random(11)
    delays = [backoff_seconds(4, None, base=2, cap=900, rng=rng) for _ in range(200)]
    # THEN their retries are spread over [8, 16] s instead of all coming back together
    assert min(delays) >= 8 and max(delays) <= 16
    assert min(delays) <= 9 and max(delays) >= 15
    assert len(set(delays)) >= 7


@pytest.mark.parametrize("depth", [40, 100_000])
def test_a_deeply_nested_answer_fails_only_its_own_task_with_a_clear_error(stack: Stack, depth: int) -> None:
    from microprocess.ledger import TaskState
    from tests.functions_harness import Behaviour

    # GIVEN a batch of 3 tasks; the service answers one of them 200 with arrays nested `depth` deep
    stack.service.behaviours["C0000001"] = Behaviour(body=b'{"score": ' + b"[" * depth + b"]" * depth + b"}")
    stack.split({"job": JOB.name, "run_id": "r1", "items": [{"company_id": f"C{i:07d}"} for i in range(3)]})
    records = stack.receive(stack.task_queue)
    assert len(records) == 3
    # WHEN the forwarder takes the batch
    result = stack.forwarder().handle({"Records": records})
    # THEN the batch is settled: the two others SUCCEEDED, the bad answer FAILED (no retry: the
    # service answered), saying why and what to do
    assert result == {"batchItemFailures": []}
    records_of = {t.item_id: t for k in range(JOB.shard_count) for t in stack.ledger.iter_results("r1", k)}
    assert {i: t.state for i, t in records_of.items()} == {
        "C0000000": TaskState.SUCCEEDED,
        "C0000001": TaskState.FAILED,
        "C0000002": TaskState.SUCCEEDED,
    }
    error = records_of["C0000001"].error or ""
    assert "nested deeper than" in error and "flatter" in error, error
