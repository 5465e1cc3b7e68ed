"""P7's simulation (bench/adaptive.py): conservation, the static cap, the controller's back-off,
the same-work timing, and what the bench prints. Small runs: a few hundred milliseconds each."""

from __future__ import annotations

from bench.adaptive import LABEL, Scenario, compare, lines, simulate
from tests.declared import CREDIT_SCORES

JOB = CREDIT_SCORES  # max_concurrency 50, batch 10, 5 attempts
#: 100 slots against the 500 pushes the declared maximum sends at once: overloaded (5 s intervals: short runs).
OVERLOADED = Scenario(items=20_000, slots=100, service_s=0.2, interval_s=5.0, seed=3)


def test_every_task_ends_once_and_every_push_is_admitted_or_rejected() -> None:
    for adaptive in (False, True):
        out = simulate(JOB, OVERLOADED, adaptive=adaptive)
        assert out.succeeded + out.failed == OVERLOADED.items
        # an admitted push always succeeds here; a rejected one is retried until max attempts
        assert out.pushes == out.succeeded + out.rejected
        assert out.rejected >= out.failed * JOB.max_attempts


def test_static_keeps_the_declared_maximum_and_burns_attempts_on_429s() -> None:
    out = simulate(JOB, OVERLOADED, adaptive=False)
    assert set(out.caps) == {JOB.max_concurrency}
    assert out.rejected > out.succeeded and out.failed > 0  # 5 rejections in a row fail a task


def test_adaptive_backs_off_within_its_bounds_and_rejects_far_less() -> None:
    static = simulate(JOB, OVERLOADED, adaptive=False)
    adaptive = simulate(JOB, OVERLOADED, adaptive=True)
    # the controller ticked while the job was idle before the run: it starts at a quarter (slow start)
    assert adaptive.caps[0] == JOB.max_concurrency // 4 and adaptive.caps[1] <= JOB.max_concurrency // 2
    assert all(2 <= cap <= JOB.max_concurrency for cap in adaptive.caps)
    assert min(adaptive.caps) <= OVERLOADED.slots // JOB.batch_size  # it reached what the service admits
    assert adaptive.rejected * 2 < static.rejected and adaptive.failed < static.failed


def test_a_service_with_room_for_everything_rejects_nothing_and_the_cap_holds() -> None:
    roomy = Scenario(items=3_000, slots=JOB.max_concurrency * JOB.batch_size, service_s=0.2, seed=5)
    for adaptive in (False, True):
        out = simulate(JOB, roomy, adaptive=adaptive)
        assert (out.rejected, out.failed, out.succeeded) == (0, 0, roomy.items)
        assert set(out.caps) <= {JOB.max_concurrency}


def test_the_same_seed_gives_the_same_run() -> None:
    assert simulate(JOB, OVERLOADED, adaptive=True) == simulate(JOB, OVERLOADED, adaptive=True)


def test_the_figures_say_they_are_simulated() -> None:
    p7 = compare(JOB, OVERLOADED)
    assert "SIMULATED" in LABEL and p7["label"] == LABEL and "simulation" in p7["method"]
    assert p7["rejected_ratio"] == round(p7["static"]["rejected"] / p7["adaptive"]["rejected"], 1)
    assert p7["service_bound_s"] == OVERLOADED.items * OVERLOADED.service_s / OVERLOADED.slots
    rows = dict(lines(p7))
    assert "SIMULATED" in " ".join(rows) and "rejected pushes / 1,000 items" in rows["P7 static"]


def test_the_same_work_is_timed_where_each_run_had_statics_successes() -> None:
    static = simulate(JOB, OVERLOADED, adaptive=False)
    adaptive = simulate(JOB, OVERLOADED, adaptive=True)
    assert adaptive.succeeded_at == sorted(adaptive.succeeded_at) and len(adaptive.succeeded_at) == adaptive.succeeded
    assert static.time_to_succeed(static.succeeded) == static.succeeded_at[-1] <= static.wall_s
    assert adaptive.time_to_succeed(0) is None and adaptive.time_to_succeed(OVERLOADED.items + 1) is None
    p7 = compare(JOB, OVERLOADED)
    same = p7["same_work"]
    assert same["succeeded"] == static.succeeded
    assert same["adaptive_s"] == round(adaptive.succeeded_at[static.succeeded - 1], 1)
    assert same["adaptive_s"] < adaptive.wall_s  # the adaptive run's extra time is the tasks static FAILED
    # the service's busy share: served push-seconds over slots x wall time, at most 1
    for mode in ("static", "adaptive"):
        assert 0 < p7["service_busy"][mode] <= 1
    fewer = adaptive.rejected * 5 <= static.rejected
    same_ratio = adaptive.succeeded_at[static.succeeded - 1] / static.succeeded_at[-1]
    assert p7["aim_met"] == {
        "wall_time": fewer and adaptive.wall_s <= 1.1 * static.wall_s,
        "same_work": fewer and same_ratio <= 1.1,
    }
    assert "P7 same work" in dict(lines(p7))
