"""`microprocess.ledger.repair`: the counters' repair inside an epoch fence (moto)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from microprocess.declarations import declare
from microprocess.ledger import (
    CRASH_AFTER_TASK_WRITE,
    Ledger,
    TaskOutcome,
    TaskState,
)
from microprocess.pipeline.envelope import shard_of
from tests.ledger_scenarios import JOB, K, counter_markers, outcome, record, split


def test_crash_between_task_write_and_count_is_repaired(ddb: Any, ledger_table: str) -> None:
    # GIVEN a forwarder that dies after writing its task records, before counting them
    def crash(point: str) -> None:
        if point == CRASH_AFTER_TASK_WRITE:
            raise RuntimeError("killed")

    crashing = Ledger(ledger_table, client=ddb, crash_hook=crash)
    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(1))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [20])
    ledger.finish_split("r1")
    record(ledger, "r1", [outcome(i) for i in range(10)])
    with pytest.raises(RuntimeError):
        crashing.record_outcomes("r1", K, [outcome(i) for i in range(10, 20)])
    # THEN the redelivery is a duplicate, so the run is under-counted and not claimed
    assert not ledger.record_outcomes("r1", K, [outcome(i) for i in range(10, 20)]).claimed_reduce
    assert ledger.progress("r1").succeeded == 10
    # WHEN the sweeper repairs THEN the counts are exact and the completion check claims
    assert ledger.repair_counters("r1") == (20, 0)
    assert ledger.progress("r1").succeeded == 20
    assert ledger.check_completion("r1") is True


def test_repair_fences_off_a_stale_counter_update(ddb: Any, ledger_table: str) -> None:
    # GIVEN a forwarder that learned the counters' epoch before a repair
    ledger = Ledger(ledger_table, client=ddb)
    slow = Ledger(ledger_table, client=ddb)
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [20])
    ledger.finish_split("r1")
    slow.record_outcomes("r1", K, [outcome(0)])  # caches epoch 0
    # WHEN a repair runs, then the slow forwarder records a task
    ledger.repair_counters("r1")
    res = slow.record_outcomes("r1", K, [outcome(1)])
    # THEN its counter update is refused (never a double count) and the next repair counts it
    assert res.newly_recorded == ["0-000000001"] and res.counted is False
    assert ledger.progress("r1").succeeded == 1
    assert ledger.repair_counters("r1") == (2, 0)
    assert ledger.progress("r1").succeeded == 2
    # AND the slow forwarder, having re-read the epoch, counts normally again
    assert slow.record_outcomes("r1", K, [outcome(2)]).counted
    assert ledger.progress("r1").succeeded == 3


def test_an_interrupted_repair_is_resumed_not_locked(ddb: Any, ledger_table: str) -> None:
    # GIVEN a run under-counted by a crash, and a repair that dies after fencing the counters
    job = declare(**{**JOB.model_dump(), "shard_count": 4, "counter_count": 4})
    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(1))
    ledger.create_run("r1", job)
    split(ledger, "r1", [12])
    ledger.finish_split("r1")

    def crash(point: str) -> None:
        if point == CRASH_AFTER_TASK_WRITE:
            raise RuntimeError("killed")

    outs = [TaskOutcome(f"0-{i:09d}", shard_of(f"0-{i:09d}", 4), TaskState.SUCCEEDED, 1) for i in range(12)]
    ledger.record_outcomes("r1", 4, outs[:6])
    with pytest.raises(RuntimeError):
        Ledger(ledger_table, client=ddb, crash_hook=crash).record_outcomes("r1", 4, outs[6:])
    dying = Ledger(ledger_table, client=ddb)
    calls = {"n": 0}
    real = dying._recount_shard

    def die_on_second(run_id: str, shard: int) -> tuple[int, int]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("sweeper killed mid-repair")
        return real(run_id, shard)

    dying._recount_shard = die_on_second  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="mid-repair"):
        dying.repair_step("r1")
    fence = ledger.repair_state("r1")
    assert fence is not None and fence.epoch % 2 == 1 and fence.shards_counted == 1
    # WHEN the next repair runs, in steps of one shard (a budget of 0 s: one shard per step)
    steps = 0
    while not (state := ledger.repair_step("r1", budget_s=0)).done:
        steps += 1
    # THEN it took up the fenced repair where it stopped, and the counts are exact
    assert steps == 2 and (state.succeeded, state.failed) == (12, 0)
    assert ledger.repair_state("r1") is None
    assert ledger.check_completion("r1") is True


def test_the_repair_removes_markers_left_by_a_writer_that_died(ddb: Any, ledger_table: str) -> None:
    # GIVEN a writer that counted a batch and died before its next update (its marker stays)
    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(1))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [3])
    Ledger(ledger_table, client=ddb).record_outcomes("r1", K, [outcome(0)])
    assert sum(len(m) for m in counter_markers(ddb, ledger_table).values()) == 1
    ledger.finish_split("r1")
    # WHEN the sweeper repairs THEN the marker is gone and the count is exact
    assert ledger.repair_counters("r1") == (1, 0)
    assert sum(len(m) for m in counter_markers(ddb, ledger_table).values()) == 0
