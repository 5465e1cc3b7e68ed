"""The local emulator's receive for SQS *fair queues*, as AWS documents it.

ministack's standard-queue receive hands out visible messages in send order and ignores their
`MessageGroupId`. On AWS a standard queue whose messages carry one is a fair queue ("How Amazon
SQS fair queues work", SQS Developer Guide, sqs-fair-queues-detailed), and our runs rely on it
(`microprocess.pipeline.tenants`): "local green means AWS green" needs the same order here. What
AWS documents, and how this module follows it:

* **Tenants**: messages with the same `MessageGroupId` are one tenant; each message without one
  is a tenant of its own.
* **Noisy neighbour**: a tenant is noisy when its *concurrency share* (its in-flight messages
  over the queue's) is above 10 % AND it has at least 30 in flight (`CONCURRENCY_SHARE`,
  `MIN_IN_FLIGHT`), or when its *processing-time share* (its recent share of the consumers'
  processing time) is above 10 % (`PROCESSING_TIME_SHARE`). The processing time of a message is
  the time it spends in flight (receive to delete, or to the end of its visibility timeout); its
  "recent" share is measured here with an exponential decay of `PROCESSING_WINDOW_S` (AWS does
  not publish its window; the doc says the thresholds are approximate).
* **Order**: quiet tenants' messages first (in send order); then the noisy tenants', the one with
  the fewest messages in flight first (counting those this receive has just taken), each in its
  own send order.
* **Back to quiet**: a tenant with no message waiting is not noisy ("the tenant's backlog has been
  fully drained"), nor one that has sent nothing for 5 minutes (`QUIET_AFTER_S`; its last send is
  the newest `sent_at` among its messages still in the queue: a forwarder's re-send counts). AWS
  does not say whether such a tenant is detected again at once; here it is not, which is the
  less generous reading for the other tenants.

The selection (`choose`) is a pure function of the messages and the measured processing time;
`FairReceive` keeps the processing time per queue and replaces ministack's `_collect_msgs` for
standard queues (`install`). FIFO queues keep ministack's own receive.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: AWS: a tenant holding more than this share of the queue's in-flight messages ...
CONCURRENCY_SHARE = 0.10
#: ... AND at least this many of its own in flight is a noisy neighbour (concurrency share).
MIN_IN_FLIGHT = 30
#: AWS: a tenant with more than this share of the consumers' recent processing time is noisy.
PROCESSING_TIME_SHARE = 0.10
#: AWS: a tenant that has sent no message for this long is no longer a noisy neighbour, s.
QUIET_AFTER_S = 300.0
#: How recent "recent processing time" is here: the time constant of its exponential decay, s.
#: AWS does not publish its window. Long enough that a share does not swing with each batch (the
#: event source takes 10 at a time and a batch takes well under a second locally); short enough
#: that a run starved while others were served stops counting as noisy within seconds (a 20 s
#: window kept a normal run beside a new high one starved for most of a 10 s e2e window: a ratio of
#: 11:1 for an aim of 4:1). A shorter window makes a new run noisy sooner, so it is served first for
#: less time: never more generous to a newcomer than a longer one.
PROCESSING_WINDOW_S = 5.0


def tenant_of(message: dict[str, Any]) -> str:
    """A ministack message's tenant: its `group_id`, or (none) a tenant of its own."""
    group = message.get("group_id")
    return f"g:{group}" if group else f"m:{message.get('id')}"


def in_flight(message: dict[str, Any], now: float) -> bool:
    """Received and not yet visible again (a delayed message, never received, is not in flight)."""
    return bool(message.get("receive_count")) and float(message.get("visible_at", 0)) > now


@dataclass
class ProcessingTime:
    """Each tenant's recent processing time (message-seconds in flight, decayed), for one queue."""

    window_s: float = PROCESSING_WINDOW_S
    seconds: dict[str, float] = field(default_factory=dict)
    at: float | None = None

    def observe(self, counts: dict[str, int], now: float) -> None:
        """Add the time since the last observation at the given in-flight counts, after decaying."""
        if self.at is not None and now > self.at:
            dt = now - self.at
            decay = math.exp(-dt / self.window_s)
            for tenant in list(self.seconds):
                self.seconds[tenant] *= decay
                if self.seconds[tenant] < 1e-6:
                    del self.seconds[tenant]
            for tenant, n in counts.items():
                # the count held for the whole interval, decayed over it: ∫ n e^{-(dt-s)/w} ds
                self.seconds[tenant] = self.seconds.get(tenant, 0.0) + n * self.window_s * (1 - decay)
        self.at = now if self.at is None else max(self.at, now)

    def shares(self) -> dict[str, float]:
        total = sum(self.seconds.values())
        return {t: s / total for t, s in self.seconds.items()} if total > 0 else {}


def noisy_tenants(
    counts: dict[str, int],
    processing_shares: dict[str, float],
    waiting: Iterable[str],
    quiet_since_sent: Iterable[str] = (),
) -> set[str]:
    """The tenants with messages waiting that AWS's documented thresholds call noisy neighbours
    (none of `quiet_since_sent`: the tenants that have sent nothing for `QUIET_AFTER_S`)."""
    total = sum(counts.values())
    noisy = set()
    for tenant in set(waiting) - set(quiet_since_sent):
        n = counts.get(tenant, 0)
        by_concurrency = total > 0 and n / total > CONCURRENCY_SHARE and n >= MIN_IN_FLIGHT
        if by_concurrency or processing_shares.get(tenant, 0.0) > PROCESSING_TIME_SHARE:
            noisy.add(tenant)
    return noisy


def choose(
    visible: Sequence[dict[str, Any]],
    counts: dict[str, int],
    processing_shares: dict[str, float],
    max_n: int,
    quiet_since_sent: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Up to `max_n` of the `visible` messages (in send order) in the order a fair queue delivers
    them: quiet tenants' first, then noisy tenants' by fewest in flight (`counts`, which this
    receive's picks add to)."""
    by_tenant: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for pos, m in enumerate(visible):
        by_tenant.setdefault(tenant_of(m), []).append((pos, m))
    noisy = noisy_tenants(counts, processing_shares, by_tenant, quiet_since_sent)
    picked = [m for m in visible if tenant_of(m) not in noisy][:max_n]
    taken = dict(counts)
    queues = {t: list(reversed(by_tenant[t])) for t in noisy}
    while len(picked) < max_n and queues:
        # fewest in flight first; ties to the tenant whose next message was sent first
        tenant = min(queues, key=lambda t: (taken.get(t, 0), queues[t][-1][0]))
        picked.append(queues[tenant].pop()[1])
        taken[tenant] = taken.get(tenant, 0) + 1
        if not queues[tenant]:
            del queues[tenant]
    return picked


class FairReceive:
    """A replacement for ministack's `_collect_msgs` (queue, max_n, visibility timeout) that
    receives standard queues as fair queues; `original` serves FIFO queues.

    Args:
        original: ministack's `_collect_msgs`.
        ensure_fields: ministack's `_ensure_msg_fields` (fills a message's missing fields).
        new_receipt: a new receipt handle.
        clock: the time, s.
    """

    def __init__(
        self,
        *,
        original: Callable[[dict[str, Any], int, int], list[dict[str, Any]]],
        ensure_fields: Callable[[dict[str, Any]], None],
        new_receipt: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.original, self.ensure_fields, self.new_receipt, self.clock = original, ensure_fields, new_receipt, clock
        self._time: dict[int, ProcessingTime] = {}
        self._held: dict[int, dict[str, int]] = {}  # per queue: the in-flight counts after the last receive
        self._lock = threading.Lock()

    def __call__(self, q: dict[str, Any], max_n: int, vis_timeout: int) -> list[dict[str, Any]]:
        if q.get("is_fifo"):
            return self.original(q, max_n, vis_timeout)
        now = self.clock()
        counts: dict[str, int] = {}
        visible: list[dict[str, Any]] = []
        last_sent: dict[str, float] = {}
        for m in q["messages"]:
            self.ensure_fields(m)
            tenant = tenant_of(m)
            last_sent[tenant] = max(last_sent.get(tenant, 0.0), float(m.get("sent_at") or 0.0))
            if float(m["visible_at"]) <= now:
                visible.append(m)
            elif in_flight(m, now):
                counts[tenant] = counts.get(tenant, 0) + 1
        with self._lock:
            processing = self._time.setdefault(id(q), ProcessingTime())
            # Since the previous receive, the counts it left held (less what was deleted since:
            # an over-estimate for the tenants whose batches ended, for at most one interval).
            processing.observe(self._held.get(id(q), counts), now)
            shares = processing.shares()
            silent = [t for t, sent in last_sent.items() if now - sent >= QUIET_AFTER_S]
            result = choose(visible, counts, shares, max_n, silent)
            held = dict(counts)
            for m in result:
                held[tenant_of(m)] = held.get(tenant_of(m), 0) + 1
            self._held[id(q)] = held
        for m in result:
            m["receipt_handle"] = self.new_receipt()
            m["visible_at"] = now + vis_timeout
            m["receive_count"] += 1
            if m.get("first_receive_at") is None:
                m["first_receive_at"] = now
        return result


def install() -> FairReceive:
    """Replace ministack's standard-queue receive (ReceiveMessage and the Lambda event source's,
    which both call `sqs._collect_msgs`) with `FairReceive`."""
    from ministack.services import sqs

    receive = FairReceive(
        original=sqs._collect_msgs,  # type: ignore[attr-defined]
        ensure_fields=sqs._ensure_msg_fields,  # type: ignore[attr-defined]
        new_receipt=sqs.new_uuid,  # type: ignore[attr-defined]
    )
    sqs._collect_msgs = receive  # type: ignore[attr-defined]
    return receive
