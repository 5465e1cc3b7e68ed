"""The splitter's queue gate: pages wait while the job's queue is at its declared depth."""

from __future__ import annotations

from typing import Any

import pytest

from microprocess.pipeline.backpressure import QueueGate


class FakeQueue:
    """A queue whose depth drains by `drain` messages per read (a forwarder consuming it)."""

    def __init__(self, depths: list[tuple[int, int]]) -> None:
        self.depths = depths
        self.reads = 0

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        visible, in_flight = self.depths[min(self.reads, len(self.depths) - 1)]
        self.reads += 1
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(in_flight),
            }
        }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, s: float) -> None:
        self.now += s

    def __call__(self) -> float:
        return self.now


def gate(queue: FakeQueue, clock: Clock, max_depth: int) -> QueueGate:
    return QueueGate(sqs=queue, queue_url="q", max_depth=max_depth, poll_s=2.0, sleep=clock.sleep, clock=clock)


def test_a_queue_with_room_sends_at_once() -> None:
    clock = Clock()
    result = gate(FakeQueue([(100, 50)]), clock, 1000).wait_for_room(500, budget_s=60)
    # 150 waiting + a page of 500 fits under 1000: no wait
    assert result.room and result.waited_s == 0 and result.depth == 150


def test_a_full_queue_waits_until_it_drains_below_the_limit_minus_a_page() -> None:
    # GIVEN a queue at 9,800 (visible + in flight) draining to 9,000, then 8,400, under a 9,000 limit
    queue = FakeQueue([(9000, 800), (8500, 500), (8000, 400)])
    clock = Clock()
    # WHEN the splitter asks for room for a page of 500
    result = gate(queue, clock, 9000).wait_for_room(500, budget_s=60)
    # THEN it waited two polls (4 s) until 8,400 <= 9,000 - 500
    assert result.room and result.waited_s == 4.0 and result.depth == 8400 and queue.reads == 3


def test_the_wait_stops_at_the_budget_so_the_splitter_can_continue_itself() -> None:
    clock = Clock()
    result = gate(FakeQueue([(20_000, 0)]), clock, 5000).wait_for_room(500, budget_s=5)
    assert not result.room and result.waited_s == 4.0 and result.depth == 20_000


def test_zero_disables_the_gate_and_negative_is_refused() -> None:
    queue = FakeQueue([(10**6, 0)])
    assert gate(queue, Clock(), 0).wait_for_room(500, budget_s=1).room and queue.reads == 0
    with pytest.raises(ValueError, match="max_depth must be >= 0"):
        gate(queue, Clock(), -1)
