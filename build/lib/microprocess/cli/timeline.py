"""The wall time of a run on AWS: when its last item is both split and processed.

* *The split* runs as the splitter does: one invocation fans out one invocation per scan
  segment (after one asynchronous invoke, `continuation_gap_s`); each segment enqueues
  at the measured per-segment rate for `timeout - margin` seconds, then continues itself
  (another gap). `A(t)` is the number of items enqueued by `t`; it ends at `split_end`.
* *Processing* is bounded by the SQS event source, which starts with `INITIAL_CONCURRENCY`
  concurrent batches and adds `SCALE_UP_PER_MINUTE` per minute up to min(concurrency, 1,000),
  each batch moving `batch_items / batch_seconds` items per second, and by the ledger's
  hottest item (1,000 write units/s): `cap(t)`, with integral `Cap(t)`. The ramp is taken
  to run from the start (AWS scales while messages wait; where the split is slower, the
  capacity is not what bounds the run).
* As a fluid queue, the items processed by `t` are min over `s <= t` of
  `A(s) + Cap(t) - Cap(s)`; they reach N when `Cap(t) = N + max_s (Cap(s) - A(s))`. The
  maximum lies at a breakpoint of `A` (within a phase `cap - rate` only grows). The last
  item also needs one batch after it is enqueued: wall = max(that time, split_end + batch).
* The bottleneck is `split` when the last item is processed as soon as it is split, else
  `ramp` (the event source was still scaling up), `concurrency` or `ledger`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Concurrent batches an SQS event source starts with.
INITIAL_CONCURRENCY = 5
#: Concurrent batches an SQS event source adds per minute while messages wait.
SCALE_UP_PER_MINUTE = 300
#: The most concurrent batches one SQS event source runs.
MAX_EVENT_SOURCE_CONCURRENCY = 1000
#: Write units one DynamoDB item (partition) takes per second.
PARTITION_WRITE_UNITS_PER_S = 1000.0


class PlanError(ValueError):
    """A plan that cannot be made; the message names the input and the fix."""


# ----------------------------------------------------------------------------- processing


def ceiling_items_per_s(
    hottest_writes_per_1000: float, per_item_write_units_per_s: float = PARTITION_WRITE_UNITS_PER_S
) -> float:
    """Completions per second at which the hottest ledger item reaches its write limit."""
    if hottest_writes_per_1000 <= 0:
        return math.inf
    return per_item_write_units_per_s * 1000.0 / hottest_writes_per_1000


@dataclass(frozen=True)
class Processing:
    """How fast the event source can process, over time since the run started.

    `cap(t) = min(k x min(c0 + a t, concurrency), ceiling)` items/s, with `k` the items one
    concurrent batch moves per second and `a` the scale-up per second.
    """

    items_per_s_per_batch: float
    concurrency: int
    ceiling_items_per_s: float = math.inf
    initial: int = INITIAL_CONCURRENCY
    per_minute: int = SCALE_UP_PER_MINUTE

    def __post_init__(self) -> None:
        if self.items_per_s_per_batch <= 0:
            raise PlanError("the per-batch rate must be positive")
        if self.concurrency < 1 or self.initial < 1 or self.per_minute <= 0:
            raise PlanError("the event source needs a concurrency, a start and a scale-up of at least 1")

    @property
    def _c0(self) -> float:
        return float(min(self.initial, self.concurrency))

    @property
    def _a(self) -> float:
        return self.per_minute / 60.0

    @property
    def peak_items_per_s(self) -> float:
        return min(self.items_per_s_per_batch * self.concurrency, self.ceiling_items_per_s)

    @property
    def bound(self) -> str:
        """What caps the peak: `ledger` or `concurrency`."""
        return "ledger" if self.ceiling_items_per_s < self.items_per_s_per_batch * self.concurrency else "concurrency"

    @property
    def ramp_seconds(self) -> float:
        """Until the capacity stops growing."""
        return max(0.0, (self.peak_items_per_s / self.items_per_s_per_batch - self._c0) / self._a)

    def done_by(self, t: float) -> float:
        """`Cap(t)`: items the capacity allows by `t` (the integral of `cap`)."""
        k, c0, a, t1 = self.items_per_s_per_batch, self._c0, self._a, self.ramp_seconds
        if t <= t1:
            return k * (c0 * t + a * t * t / 2)
        return k * (c0 * t1 + a * t1 * t1 / 2) + self.peak_items_per_s * (t - t1)

    def time_to(self, items: float) -> float:
        """The inverse of `done_by`."""
        k, c0, a, t1 = self.items_per_s_per_batch, self._c0, self._a, self.ramp_seconds
        ramp_items = self.done_by(t1)
        if items <= ramp_items and t1 > 0:
            return (-c0 + math.sqrt(c0 * c0 + 2 * a * items / k)) / a
        return t1 + (items - ramp_items) / self.peak_items_per_s


# ----------------------------------------------------------------------------- the split


@dataclass(frozen=True)
class Split:
    """The split as the splitter runs it: `segments` in parallel (after a fan-out invoke when
    there are several), each enqueuing `items_per_s_per_segment` for `usable_s` seconds per
    invocation, then continuing itself after `gap_s`. Segments are taken as equal."""

    items: int
    segments: int
    items_per_s_per_segment: float
    usable_s: float
    gap_s: float

    def __post_init__(self) -> None:
        if self.usable_s <= 0 or self.items_per_s_per_segment <= 0:
            raise PlanError("the splitter needs a timeout above its margin and a positive rate")
        if self.segments < 1 or self.gap_s < 0:
            raise PlanError("the split needs at least one segment and a gap of 0 s or more")

    @property
    def invocations_per_segment(self) -> int:
        return max(1, math.ceil(self.items / self.segments / (self.items_per_s_per_segment * self.usable_s)))

    @property
    def invocations(self) -> int:
        """All splitter invocations: the fan-out (if any) and every segment's chain."""
        return self.segments * self.invocations_per_segment + (1 if self.segments > 1 else 0)

    @property
    def continuations(self) -> int:
        return self.segments * (self.invocations_per_segment - 1)

    @property
    def start(self) -> float:
        return self.gap_s if self.segments > 1 else 0.0

    @property
    def working_seconds_per_segment(self) -> float:
        return self.items / self.segments / self.items_per_s_per_segment

    @property
    def end(self) -> float:
        return self.start + self.working_seconds_per_segment + (self.invocations_per_segment - 1) * self.gap_s

    @property
    def items_per_s(self) -> float:
        return self.segments * self.items_per_s_per_segment

    def phases(self) -> list[tuple[float, float]]:
        """(start, end) of each working phase (all segments work at once)."""
        out, t, left = [], self.start, self.working_seconds_per_segment
        for _ in range(self.invocations_per_segment):
            work = min(self.usable_s, left)
            out.append((t, t + work))
            t, left = t + work + self.gap_s, left - work
        return out

    def enqueued_by(self, t: float) -> float:
        """`A(t)`: items enqueued by `t`."""
        since = t - self.start
        if since <= 0:
            return 0.0
        cycles, within = divmod(since, self.usable_s + self.gap_s)
        worked = min(cycles * self.usable_s + min(within, self.usable_s), self.working_seconds_per_segment)
        return min(float(self.items), worked * self.items_per_s)


# ----------------------------------------------------------------------------- the wall time


@dataclass(frozen=True)
class WallTime:
    """When the last item of a run is split and processed.

    Attributes:
        seconds: from the start to the last completion.
        split_seconds: from the start to the last item enqueued.
        ramp_seconds: until the event source's capacity stops growing.
        peak_items_per_s: the processing capacity after the ramp.
        bottleneck: `split`, `ramp`, `concurrency` or `ledger`.
    """

    seconds: float
    split_seconds: float
    ramp_seconds: float
    peak_items_per_s: float
    bottleneck: str


def wall_time(split: Split, processing: Processing, batch_seconds: float) -> WallTime:
    """The wall time of a run (see the module docstring for the model)."""
    if split.items <= 0:
        raise PlanError(f"items must be at least 1, got {split.items}")
    breakpoints = [0.0, *(t for phase in split.phases() for t in phase), split.end]
    backlog = max(processing.done_by(s) - split.enqueued_by(s) for s in breakpoints)
    processed_at = processing.time_to(split.items + backlog)
    last_enqueued_done = split.end + batch_seconds
    seconds = max(processed_at, last_enqueued_done)
    if last_enqueued_done >= processed_at:
        bottleneck = "split"
    elif processed_at <= processing.ramp_seconds:
        bottleneck = "ramp"
    else:
        bottleneck = processing.bound
    return WallTime(seconds, split.end, processing.ramp_seconds, processing.peak_items_per_s, bottleneck)
