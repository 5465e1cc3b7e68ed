"""The chaos suite: its fired-fault checks (unit), and the small matrix on the real local
stack (e2e; the full one is `make chaos`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from microprocess.chaos.scenarios import EVIDENCE, Row, Scenario, evidence_problems, fired_faults, scenarios
from microprocess.chaos.suite import ChaosSuite, markdown_table
from microprocess.ledger import RunStatus


@pytest.mark.parametrize("size", ["small", "full"])
def test_every_scenario_with_a_fault_names_the_evidence_that_it_fired(size: str) -> None:
    for sc in scenarios(size):
        faulty = sc.function_faults or sc.service_faults or sc.restart_service_at or sc.malformed or sc.kill_splitter
        assert bool(sc.evidence) == bool(faulty) or sc.extra_items, sc.name
        assert set(sc.evidence) <= EVIDENCE


def test_a_scenario_whose_fault_did_not_fire_fails() -> None:
    # GIVEN the splitter-killed scenario and a run that reported 0 kills (the review's case)
    [sc] = [s for s in scenarios("full") if s.name == "splitter-killed"]
    quiet = Row(sc.name, 400, status="SUCCEEDED", succeeded=400, splitter_kills=0)
    # THEN it is a problem, and the row does not pass
    quiet.problems.extend(evidence_problems(sc, quiet))
    assert not quiet.ok and "splitter_kills is 0" in quiet.problems[0]
    assert "FAIL: the fault did not fire" in markdown_table([quiet])
    # AND with a kill it passes
    killed = Row(sc.name, 400, splitter_kills=1)
    assert evidence_problems(sc, killed) == []


def test_the_splitter_is_killed_deterministically_not_by_a_rate() -> None:
    [sc] = [s for s in scenarios("full") if s.name == "splitter-killed"]
    assert sc.kill_splitter >= 1 and "splitter_after_send" not in sc.function_faults.get("crash_rates", {})


def test_the_ambiguous_write_scenario_uses_the_applied_then_error_fault() -> None:
    [sc] = [s for s in scenarios("full") if s.name == "ambiguous-writes"]
    assert sc.function_faults["applied_then_error"] > 0 and sc.evidence == ("ambiguous_writes",)
    row = Row(sc.name, 400, ambiguous_writes=0)
    assert evidence_problems(sc, row) == ["the fault did not fire: ambiguous_writes is 0 (expected at least 1)"]


def test_a_scenario_with_a_fault_and_no_evidence_is_refused() -> None:
    with pytest.raises(ValueError, match="names no evidence"):
        Scenario("silent", 10, function_faults={"duplicate_rate": 0.5})
    with pytest.raises(ValueError, match="unknown evidence"):
        Scenario("typo", 10, function_faults={"duplicate_rate": 0.5}, evidence=("dupes",))


def test_fired_faults_are_counted_from_the_log_lines() -> None:
    lines = [
        '{"level":"WARNING","message":"chaos: injected crash at after_push"}',
        "[WARNING] chaos: injected applied_then_error at UpdateItem",
        "chaos: injected applied_then_error at PutItem",
        "chaos: injected duplicate at delivery",
        "an unrelated line",
    ]
    assert fired_faults(lines) == {"crash": 1, "applied_then_error": 2, "duplicate": 1}


def test_the_injector_logs_what_the_suite_counts(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from microprocess.chaos.faults import FaultConfig, FaultInjector, InjectedCrash

    injector = FaultInjector(FaultConfig(duplicate_rate=1.0, crash_rates={"after_push": 1.0}))
    with caplog.at_level(logging.WARNING, logger="microprocess.chaos.faults"):
        assert injector.duplicate()
        with pytest.raises(InjectedCrash):
            injector.maybe_crash("after_push")
    assert fired_faults([r.getMessage() for r in caplog.records]) == {"duplicate": 1, "crash": 1}
    assert injector.fired == {"duplicate at delivery": 1, "crash at after_push": 1}


@pytest.mark.e2e
def test_small_chaos_matrix_keeps_every_invariant(tmp_path: Path) -> None:
    # GIVEN crashes at every forwarder crash point, duplicate deliveries, poison items over
    # the tolerance, and malformed messages on the queue
    matrix = scenarios("small")
    assert {s.name for s in matrix} == {"forwarder-crashes", "duplicates", "poison-over-tolerance", "bad-input"}
    # WHEN each runs on the real local stack
    rows = ChaosSuite(workdir=tmp_path, echo=print).run(matrix)
    print(markdown_table(rows))
    # THEN every run finished as expected: counted once, reduced once, mailed once, nothing lost,
    # and every scenario's fault fired (checked by the suite itself)
    assert [r.problems for r in rows] == [[] for _ in rows]
    by_name = {r.scenario: r for r in rows}
    assert by_name["duplicates"].duplicates_absorbed > 0
    assert by_name["forwarder-crashes"].crashes > 0
    assert by_name["poison-over-tolerance"].status == RunStatus.FAILED
    assert by_name["poison-over-tolerance"].retries > 0
    assert by_name["bad-input"].quarantined == 6
    # (a claimer killed before its metrics flush claims without a metric: at most one, never two)
    assert all(r.reduce_claims <= 1 and r.emails == 1 for r in rows)
