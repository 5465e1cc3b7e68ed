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


def test_the_real_splitter_waits_below_the_depth_and_continues_itself_when_the_queue_stays_full(
    stack: Any,
) -> None:
    # GIVEN a job of pages of 5 and functions capped at a queue depth of 5 (as the local stage caps it)
    from tests.functions_harness import job_with

    job, registry = job_with(source={"kind": "inline", "page_size": 5})
    settings = stack.settings.model_copy(update={"max_queue_depth_cap": 5, "splitter_margin_ms": 1_000})
    event = {"job": job.name, "run_id": "r1", "items": [{"company_id": f"C{i:07d}"} for i in range(12)]}
    # WHEN the splitter runs with 3 s left and nothing drains the queue
    res = stack.splitter(jobs=registry, settings=settings).handle(event, lambda: 3_000)
    # THEN it sent one page, found the queue full, and handed over to a continuation (nothing lost)
    assert res["continued"] is True and res["expected"] == 5 and stack.depth(stack.task_queue) == 5
    [cont] = stack.continuations
    stack.continuations.clear()
    # AND once the queue is drained, the continuation sends one more page and stops again
    stack.sqs.purge_queue(QueueUrl=stack.task_queue)
    res = stack.splitter(jobs=registry, settings=settings).handle(cont, lambda: 3_000)
    assert res["continued"] is True and res["expected"] == 10 and stack.depth(stack.task_queue) == 5
    # AND with room (a deeper limit) it sends the rest
    roomy = settings.model_copy(update={"max_queue_depth_cap": 100})
    res = stack.splitter(jobs=registry, settings=roomy).handle(stack.continuations.pop(), lambda: 900_000)
    assert res["continued"] is False and res["expected"] == 12
