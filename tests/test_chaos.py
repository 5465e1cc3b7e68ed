"""The small chaos matrix on the real local stack (the full one is `make chaos`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from microprocess.chaos.suite import ChaosSuite, markdown_table, scenarios
from microprocess.ledger import RunStatus

pytestmark = pytest.mark.e2e


def test_small_chaos_matrix_keeps_every_invariant(tmp_path: Path) -> None:
    # GIVEN crashes at every forwarder crash point, duplicate deliveries, poison items over
    # the tolerance, and malformed messages on the queue
    matrix = scenarios("small")
    assert {s.name for s in matrix} == {"forwarder-crashes", "duplicates", "poison-over-tolerance", "bad-input"}
    # WHEN each runs on the real local stack
    rows = ChaosSuite(workdir=tmp_path, echo=print).run(matrix)
    print(markdown_table(rows))
    # THEN every run finished as expected: counted once, reduced once, mailed once, nothing lost
    assert [r.problems for r in rows] == [[] for _ in rows]
    by_name = {r.scenario: r for r in rows}
    assert by_name["duplicates"].duplicates_absorbed > 0
    assert by_name["poison-over-tolerance"].status == RunStatus.FAILED
    assert by_name["poison-over-tolerance"].retries > 0
    assert by_name["bad-input"].quarantined == 6
    assert all(r.reduce_claims == 1 and r.emails == 1 for r in rows)
