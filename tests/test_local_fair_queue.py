"""The emulator's fair-queue receive follows AWS's documented order (`microprocess.local.fair_queue`)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from microprocess.local.fair_queue import (
    MIN_IN_FLIGHT,
    PROCESSING_WINDOW_S,
    QUIET_AFTER_S,
    FairReceive,
    ProcessingTime,
    choose,
    noisy_tenants,
    tenant_of,
)

_ids = itertools.count()


def msgs(group: str | None, n: int, *, in_flight: bool = False, now: float = 1000.0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"m{next(_ids)}",
            "group_id": group,
            "visible_at": now + 30 if in_flight else now - 1,
            "receive_count": 1 if in_flight else 0,
        }
        for _ in range(n)
    ]


def groups(picked: list[dict[str, Any]]) -> list[str | None]:
    return [m["group_id"] for m in picked]


def test_below_the_thresholds_the_order_is_the_send_order() -> None:
    # GIVEN two tenants, few in flight and no processing history WHEN received THEN in send order
    visible = msgs("big", 6) + msgs("small", 4)
    assert groups(choose(visible, {"g:big": 5}, {}, 10)) == ["big"] * 6 + ["small"] * 4


def test_a_quiet_tenant_goes_before_a_noisy_one() -> None:
    # GIVEN a tenant noisy by concurrency (> 10 % of in flight and >= 30 of its own) and a new one
    visible = msgs("big", 20) + msgs("small", 3)
    counts = {"g:big": MIN_IN_FLIGHT}
    # WHEN ten are received THEN the quiet tenant's three come first
    assert groups(choose(visible, counts, {}, 10)) == ["small"] * 3 + ["big"] * 7
    # and 29 in flight is not noisy by concurrency: the send order holds
    assert groups(choose(visible, {"g:big": MIN_IN_FLIGHT - 1}, {}, 10)) == ["big"] * 10


def test_a_tenant_is_noisy_by_its_processing_time_share_alone() -> None:
    assert noisy_tenants({"g:a": 2, "g:b": 1}, {"g:a": 0.8, "g:b": 0.2}, ["g:a", "g:b"]) == {"g:a", "g:b"}
    assert noisy_tenants({"g:a": 2}, {"g:a": 0.95, "g:b": 0.05}, ["g:a", "g:b"]) == {"g:a"}
    # a tenant with nothing waiting is not noisy (its backlog is empty)
    assert noisy_tenants({"g:a": 40}, {"g:a": 1.0}, []) == set()


def test_among_noisy_tenants_the_one_with_fewest_in_flight_goes_first() -> None:
    # GIVEN three noisy tenants with 12, 4 and 8 in flight
    visible = msgs("a", 20) + msgs("b", 20) + msgs("c", 20)
    counts = {"g:a": 12, "g:b": 4, "g:c": 8}
    shares = {"g:a": 0.5, "g:b": 0.2, "g:c": 0.3}
    # WHEN 10 are received THEN they even out the in-flight counts: b up to c's 8, then b and c in
    # turn (a tie to the tenant whose next message was sent first), a not yet
    picked = groups(choose(visible, counts, shares, 10))
    assert picked == ["b"] * 5 + ["c", "b", "c", "b", "c"]


def test_a_lone_tenant_keeps_its_send_order() -> None:
    visible = msgs("only", 15)
    picked = choose(visible, {"g:only": 40}, {"g:only": 1.0}, 10)
    assert picked == visible[:10]


def test_a_message_without_a_group_is_a_tenant_of_its_own() -> None:
    # GIVEN messages sent without a group (before fair queues) behind a noisy tenant
    old = msgs(None, 3)
    assert len({tenant_of(m) for m in old}) == 3
    visible = msgs("big", 10) + old
    # WHEN received THEN each, a quiet tenant, goes first
    picked = choose(visible, {"g:big": 50}, {"g:big": 1.0}, 5)
    assert picked[:3] == old and groups(picked[3:]) == ["big", "big"]


def test_processing_time_is_the_decayed_time_in_flight() -> None:
    # GIVEN a tenant with 10 in flight for one window and another with 30
    p = ProcessingTime()
    p.observe({}, 0.0)
    p.observe({"g:a": 10, "g:b": 30}, PROCESSING_WINDOW_S)
    # THEN their shares are 1:3, and an idle tenant's decays away
    assert p.shares() == pytest.approx({"g:a": 0.25, "g:b": 0.75})
    p.observe({"g:b": 30}, 20 * PROCESSING_WINDOW_S)
    assert p.shares().get("g:a", 0.0) < 0.01


def test_the_receive_shares_the_queue_between_busy_tenants_by_their_group_count() -> None:
    # GIVEN a queue with a normal run (1 tenant) and a high one (4 tenants) behind it, a consumer
    # taking 10 at a time with 20 at once, each message in flight for 1 s
    now = [0.0]
    q: dict[str, Any] = {"is_fifo": False, "messages": []}
    for _ in range(200):
        q["messages"] += msgs("normal", 1, now=0.0)
    for i in range(800):
        q["messages"] += msgs(f"high#{i % 4}", 1, now=0.0)
    handles = itertools.count()
    receive = FairReceive(
        original=lambda *_: [],
        ensure_fields=lambda m: None,
        new_receipt=lambda: str(next(handles)),
        clock=lambda: now[0],
    )
    done: dict[str, int] = {"normal": 0, "high": 0}
    in_flight: list[tuple[float, dict[str, Any]]] = []
    for step in range(300):  # 30 s in steps of 0.1 s
        now[0] = step * 0.1
        for t, m in [x for x in in_flight if x[0] <= now[0]]:  # processed: deleted
            in_flight.remove((t, m))
            q["messages"].remove(m)
            done[str(m["group_id"]).split("#")[0]] += 1
        while len(in_flight) < 20:
            batch = receive(q, 10, 30)
            if not batch:
                break
            in_flight += [(now[0] + 1.0, m) for m in batch]
    # THEN while both are busy the high run has about 4 times the normal run's throughput
    assert done["normal"] < 200 and done["high"] < 800
    assert 3.0 <= done["high"] / done["normal"] <= 5.0, done


def test_fifo_queues_keep_ministacks_receive() -> None:
    seen = []
    receive = FairReceive(
        original=lambda q, n, v: seen.append(n) or [], ensure_fields=lambda m: None, new_receipt=lambda: "h"
    )
    assert receive({"is_fifo": True, "messages": msgs("a", 3)}, 10, 30) == [] and seen == [10]


def test_a_tenant_that_sent_nothing_for_5_minutes_is_not_noisy() -> None:
    # GIVEN a tenant noisy by both measures whose newest message was sent 5 minutes ago, and a new one
    now = 10_000.0
    old = [
        {**m, "sent_at": now - QUIET_AFTER_S}
        for m in msgs("big", 40, in_flight=True, now=now) + msgs("big", 5, now=now)
    ]
    new = [{**m, "sent_at": now - 1} for m in msgs("small", 3, now=now)]
    q: dict[str, Any] = {"is_fifo": False, "messages": old + new}
    receive = FairReceive(
        original=lambda *_: [], ensure_fields=lambda m: None, new_receipt=lambda: "h", clock=lambda: now
    )
    # WHEN received THEN it is not noisy any more: the send order holds (AWS: no longer a noisy neighbour)
    assert groups(receive(q, 4, 30)) == ["big"] * 4
    # while one that sent a second ago is noisy: the new tenant goes first
    q["messages"] = [{**m, "sent_at": now - 1} for m in old] + new
    assert groups(
        FairReceive(original=lambda *_: [], ensure_fields=lambda m: None, new_receipt=lambda: "h", clock=lambda: now)(
            q, 4, 30
        )
    ) == ["small"] * 3 + ["big"]
