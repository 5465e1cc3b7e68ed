"""Backpressure for the splitter: keep a job's task queue below a depth before sending more.

A queue that grows without bound costs nothing on AWS but collapses the local emulator
(ministack scans the whole queue per receive: ~10,000 waiting messages slow everything).
The splitter asks `QueueGate.wait_for_room` before each page; the gate reads the queue's
depth (visible + in flight) at most every `poll_s` and waits while it is at or above the
limit, up to the time the splitter has left (then it continues itself later).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The queue attributes that make up the depth the gate limits.
DEPTH_ATTRIBUTES = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")


@dataclass
class GateResult:
    """What one wait did.

    Attributes:
        room: True when the queue is below the limit (send the page); False when the time
            ran out first (continue later).
        waited_s: seconds spent waiting.
        depth: the last depth read.
    """

    room: bool
    waited_s: float
    depth: int


class QueueGate:
    """Waits until a queue holds fewer than `max_depth` messages.

    Args:
        sqs: a boto3 SQS client.
        queue_url: the job's task queue.
        max_depth: the depth at which sending pauses (0: never pause).
        poll_s: seconds between depth reads while waiting.
        sleep, clock: injectable for tests.
    """

    def __init__(
        self,
        *,
        sqs: Any,
        queue_url: str,
        max_depth: int,
        poll_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_depth < 0:
            raise ValueError(f"max_depth must be >= 0 (0 disables the gate), got {max_depth}")
        self.sqs = sqs
        self.queue_url = queue_url
        self.max_depth = max_depth
        self.poll_s = poll_s
        self._sleep = sleep
        self._clock = clock

    def depth(self) -> int:
        """Messages waiting or in flight on the queue (approximate, as SQS reports them)."""
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=list(DEPTH_ATTRIBUTES))
        values = attrs.get("Attributes", {})
        return sum(int(values.get(name, 0)) for name in DEPTH_ATTRIBUTES)

    def wait_for_room(self, page_size: int, *, budget_s: float | Callable[[], float]) -> GateResult:
        """Wait (at most `budget_s`, a number or a function read only if waiting is needed) until
        the queue has room for a page of `page_size` under the limit."""
        if self.max_depth == 0:
            return GateResult(True, 0.0, 0)
        started = self._clock()
        depth = self.depth()
        # A page may overshoot the limit by itself; a limit below one page still lets one page in.
        threshold = max(self.max_depth - page_size, 0)
        budget: float | None = None
        while depth > threshold:
            if budget is None:
                budget = budget_s() if callable(budget_s) else budget_s
            waited = self._clock() - started
            if waited + self.poll_s > budget:
                return GateResult(False, waited, depth)
            self._sleep(self.poll_s)
            depth = self.depth()
        return GateResult(True, self._clock() - started, depth)
